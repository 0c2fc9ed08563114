"""Benchmark MIP against the plain parametrization of ``hypernetize`` on one task, with one hypernetwork body,
over several seeds in one run: the label-smoothing-conditioned MNIST CNN of
``recipes/hyperparameter_conditioned.py``, the same batches for both parametrizations at each seed.

The probe loss is the training objective on 1,000 fixed training images less its floor (the entropy of
the smoothed targets: what remains is the KL divergence from them, 0 for a perfect fit), averaged over
c = 0, 0.25, 0.5, 0.75 and 1, and measured every ``--every`` steps. Prints, as mean ± std over seeds,
the steps until it first falls to ``--threshold`` and its value after ``--steps``; then the size of the
hypernetwork ``hypernetize`` builds for torchvision's resnet18. Writes ``metrics.jsonl`` (every curve)
and ``probe_loss.png`` to ``--out``.

    python recipes/bench/bench_hypernetize.py
    python recipes/bench/bench_hypernetize.py --steps 1000 --threshold 0.1 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torchvision
from tqdm import tqdm

from hypernets.conditional import Hypernetized, hypernetize
from hypernets.conditional.label_smoothing import MAX_SMOOTHING, TrainSettings, small_cnn, smoothed_loss, train
from hypernets.data import LabeledTensorDataset, load_mnist

PROBE_CONDITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
PROBE_IMAGES = 1000


@torch.no_grad()
def probe_loss(model: Hypernetized, probe: LabeledTensorDataset) -> float:
    losses = (smoothed_loss(model, *probe.tensors, c).item() - target_entropy(c) for c in PROBE_CONDITIONS)
    return statistics.fmean(losses)


def target_entropy(condition: float, classes: int = 10) -> float:
    """The smoothed cross-entropy's floor: the entropy of the smoothed one-hot target."""
    s = MAX_SMOOTHING * condition
    probabilities = [1 - s + s / classes] + [s / classes] * (classes - 1)
    return -sum(p * math.log(p) for p in probabilities if p > 0)


def curve(mip: bool, seed: int, settings: TrainSettings, data: LabeledTensorDataset, every: int) -> dict:
    """One training run's probe-loss curve ``[(step, loss)]``, hypernetwork size and seconds per step."""
    torch.manual_seed(seed)
    model = hypernetize(small_cnn(), mip=mip)
    probe = LabeledTensorDataset(data.images[:PROBE_IMAGES], data.labels[:PROBE_IMAGES], data.classes)
    points = [(0, probe_loss(model, probe))]
    bar = tqdm(total=settings.steps, desc=f"{'MIP' if mip else 'plain'} seed {seed}", file=sys.stderr, leave=False)
    training = 0.0
    last = time.perf_counter()

    def record(step: int, loss: float) -> None:
        nonlocal training, last
        bar.update()
        if step % every == 0:
            training += time.perf_counter() - last
            points.append((step, probe_loss(model, probe)))
            last = time.perf_counter()

    train(model, data, settings, callback=record)
    bar.close()
    size = sum(p.numel() for p in model.hypernet_parameters())
    return {
        "mip": mip,
        "seed": seed,
        "points": points,
        "parameters": size,
        "ms_per_step": 1000 * training / settings.steps,
    }


def steps_to(points: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, loss in points if loss <= threshold), None)


def mean_std(values: list[float], digits: int) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"


def resnet18_sizes() -> list[tuple[str, int]]:
    """Parameters of resnet18 and of the bodies hypernetize builds for it, counted on the meta device."""
    with torch.device("meta"):
        rows = [
            ("resnet18 itself (= theta0 under MIP)", sum(p.numel() for p in torchvision.models.resnet18().parameters()))
        ]
        for body in ("auto", "mlp"):
            model = hypernetize(torchvision.models.resnet18(), body=body, from_existing=True)
            rows.append(
                (
                    f'body="{body}" ({model.config.body}, hidden {model.config.hidden})',
                    sum(p.numel() for p in model.body.parameters()),
                )
            )
    return rows


def plot(runs: list[dict], threshold: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run in runs:
        steps, losses = zip(*run["points"], strict=True)
        ax.plot(steps, losses, color="C0" if run["mip"] else "C1", alpha=0.8, label="MIP" if run["mip"] else "plain")
    ax.axhline(threshold, color="gray", linestyle="--", linewidth=1)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys())
    ax.set_xlabel("training step")
    ax.set_ylabel("probe loss (nats above the floor)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="the fixed budget (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.15, help="probe loss to reach (default: %(default)s)")
    p.add_argument("--every", type=int, default=10, help="probe every this many steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/bench_hypernetize"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_mnist("train", normalize=True)
    runs = []
    with open(args.out / "metrics.jsonl", "w") as f:
        for seed in args.seeds:
            settings = TrainSettings(steps=args.steps, seed=seed)
            for mip in (True, False):
                runs.append(curve(mip, seed, settings, data, args.every))
                print(json.dumps(runs[-1]), file=f, flush=True)
    plot(runs, args.threshold, args.out / "probe_loss.png")

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch thread(s), torch {torch.__version__}"
    )
    print(f"`python {shlex.join(sys.argv)}` ({machine})\n")
    print(
        f"| parametrization | hypernetwork parameters | steps to probe loss <= {args.threshold:g} | "
        f"probe loss after {args.steps} steps | ms/step |"
    )
    print("|---|---|---|---|---|")
    for mip in (True, False):
        mine = [run for run in runs if run["mip"] == mip]
        reached = [s for s in (steps_to(run["points"], args.threshold) for run in mine) if s is not None]
        steps = mean_std(reached, 0) if reached else "not reached"
        if reached and len(reached) < len(mine):
            steps += f" ({len(reached)} of {len(mine)} seeds; the others never)"
        final = mean_std([run["points"][-1][1] for run in mine], 3)
        speed = mean_std([run["ms_per_step"] for run in mine], 1)
        print(f"| {'MIP' if mip else 'plain'} | {mine[0]['parameters']:,} | {steps} | {final} | {speed} |")
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), mean ± std.\n")
    print("| resnet18 | parameters |")
    print("|---|---|")
    for name, count in resnet18_sizes():
        print(f"| {name} | {count:,} |")


if __name__ == "__main__":
    main()
