"""One CNN for every label-smoothing amount: train a hypernetized CNN once on the embedded MNIST with the
amount drawn per step, then sweep it at test time, and compare with CNNs trained separately at 5 amounts,
each with the same step budget as the single conditioned run.

    python recipes/hyperparameter_conditioned.py
    python recipes/hyperparameter_conditioned.py --steps 300 --out runs/smoke

The condition c in [0, 1] sets label smoothing 0.5 * c. Prints a markdown table of accuracy and
expected calibration error (ECE) per value; writes ``metrics.jsonl`` (training losses every 50 steps and
the table's rows) and ``calibration.png`` (both curves against c) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from hypernets.conditional import hypernetize
from hypernets.conditional.label_smoothing import MAX_SMOOTHING, TrainSettings, evaluate, small_cnn, train
from hypernets.data import LabeledTensorDataset, load_mnist

LOG_EVERY = 50


def trained(
    model: torch.nn.Module,
    name: str,
    data: LabeledTensorDataset,
    settings: TrainSettings,
    condition: float | None,
    log: Callable[[dict], None],
) -> torch.nn.Module:
    """``model`` after training, with a progress bar and its loss logged every ``LOG_EVERY`` steps."""
    with tqdm(total=settings.steps, desc=name, file=sys.stderr, leave=False) as bar:

        def progress(step: int, loss: float) -> None:
            bar.update()
            if step % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
                log({"model": name, "step": step, "loss": round(loss, 5)})

        train(model, data, settings, condition, progress)
    return model


def plot(sweep: list[dict], separate: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, label in ((axes[0], "accuracy", "accuracy (%)"), (axes[1], "ece", "ECE (%)")):
        ax.plot([r["c"] for r in sweep], [r[metric] for r in sweep], marker=".", label="hypernetized, trained once")
        ax.plot([r["c"] for r in separate], [r[metric] for r in separate], "s", label="trained separately")
        ax.set_xlabel(f"condition c (label smoothing {MAX_SMOOTHING:g} c)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("MNIST CNN conditioned on label smoothing")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=TrainSettings.steps, help="steps per model (default: %(default)s)")
    p.add_argument("--lr", type=float, default=TrainSettings.lr)
    p.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="conditions c")
    p.add_argument("--sweep", type=int, default=11, help="evenly spaced conditions in [0, 1] for the curve")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a small CNN: more only contend)")
    p.add_argument("--out", type=Path, default=Path("runs/hyperparameter_conditioned"))
    p.add_argument("--plot", type=Path, help="where to write the PNG (default: OUT/calibration.png)")
    args = p.parse_args()
    if not all(0 <= c <= 1 for c in args.compare) or args.sweep < 2 or args.steps < 1:
        p.error("--compare values must lie in [0, 1], --sweep must be at least 2 and --steps at least 1")
    torch.set_num_threads(args.threads)
    settings = TrainSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    data, evaluation = load_mnist("train", normalize=True), load_mnist("eval", normalize=True)
    start = time.perf_counter()

    with open(args.out / "metrics.jsonl", "w") as f:
        log = lambda record: print(json.dumps(record), file=f, flush=True)
        torch.manual_seed(args.seed)
        model = trained(hypernetize(small_cnn()), "hypernetized", data, settings, None, log)
        points = sorted({round(i / (args.sweep - 1), 4) for i in range(args.sweep)} | set(args.compare))
        sweep = [{"c": c, **evaluate(model, evaluation, c)} for c in points]
        separate = []
        for c in args.compare:
            torch.manual_seed(args.seed)
            cnn = trained(small_cnn(), f"separate c={c:g}", data, settings, c, log)
            separate.append({"c": c, **evaluate(cnn, evaluation, c)})
        for record in sweep:
            log({"hypernetized": record})
        for record in separate:
            log({"separate": record})

    plot(sweep, separate, args.plot or args.out / "calibration.png")
    by_c = {r["c"]: r for r in separate}
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch thread(s), torch {torch.__version__}"
    )
    print(f"`python {shlex.join(sys.argv)}` ({machine}; {time.perf_counter() - start:.0f} s)\n")
    print("| c | label smoothing | accuracy (%) | ECE (%) | separate: accuracy (%) | separate: ECE (%) |")
    print("|---|---|---|---|---|---|")
    for r in sweep:
        other = by_c.get(r["c"])
        versus = f"{other['accuracy']:.2f} | {other['ece']:.2f}" if other else " | "
        print(f"| {r['c']:g} | {MAX_SMOOTHING * r['c']:g} | {r['accuracy']:.2f} | {r['ece']:.2f} | {versus} |")
    gaps = [next(s for s in sweep if s["c"] == c)["accuracy"] - by_c[c]["accuracy"] for c in args.compare]
    print(
        f"\naccuracy, hypernetized minus separate, at the {len(gaps)} compared values: "
        f"{', '.join(f'{g:+.2f}' for g in gaps)} points (largest gap {max(map(abs, gaps)):.2f})"
    )


if __name__ == "__main__":
    main()
