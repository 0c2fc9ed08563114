"""Benchmark ``hypernetize`` on one task, over several seeds in one run: MIP against the plain parametrization
(same body), and against the ``hyperlight`` library (the MIP authors') with the same condition encoding and
no fewer hypernetwork parameters: hyperlight's trunk is 64 wide (our default), ours the widest at which
neither of our two has more parameters than hyperlight's (63: at equal width ours has one learned gain per
predicted tensor more). The task is the label-smoothing-conditioned MNIST CNN of
``recipes/hyperparameter_conditioned.py``; at each seed every model sees the same batches and conditions.

The probe loss is the training objective on 1,000 fixed training images less its floor (the entropy of
the smoothed targets: what remains is the KL divergence from them, 0 for a perfect fit), averaged over
c = 0, 0.25, 0.5, 0.75 and 1, and measured every ``--every`` steps. Prints, as mean ± std over seeds,
the steps until it first falls to ``--threshold``, its value after ``--steps`` and the training time per
step (probes excluded); the time per step with the models taking turns (median and quartiles, and each of
ours over hyperlight round by round); then the hypernetworks both libraries build for torchvision's resnet18
in hyperlight's README example. Writes ``metrics.jsonl`` (every curve) and ``probe_loss.png`` to ``--out``.

hyperlight is not a dependency of this project; install it for this benchmark only, without its pins:
``pip install hyperlight --no-deps`` (0.0.5 needs nothing but torch). ``--models MIP plain`` runs without it,
both 64 wide.

    python recipes/bench/bench_hypernetize.py
    python recipes/bench/bench_hypernetize.py --steps 1000 --threshold 0.1 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import importlib.util
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
from torch import Tensor, nn
from tqdm import tqdm

from hypernets.conditional import HypernetizeConfig, Hypernetized, hypernetize
from hypernets.conditional.label_smoothing import MAX_SMOOTHING, TrainSettings, small_cnn, smoothed_loss, train
from hypernets.data import LabeledTensorDataset, load_mnist

PROBE_CONDITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
PROBE_IMAGES = 1000
MODELS = ("MIP", "plain", "hyperlight")
COLORS = {"MIP": "C0", "plain": "C1", "hyperlight": "C2"}
INSTALL_HYPERLIGHT = "pip install hyperlight --no-deps"
TIMING_ROUNDS = 20  # rounds of TIMING_STEPS training steps per model, the models taking turns
TIMING_STEPS = 20
WIDTH, LAYERS = HypernetizeConfig().hidden, HypernetizeConfig().layers  # hyperlight's trunk; ours is at most as wide


class HyperlightModel(nn.Module):
    """hyperlight's way to condition ``module`` on a scalar in [0, 1]: every parameter made external, predicted by
    its ``HyperNet`` (cos/sin input, ``theta0`` as the output layer's bias, taken from the module's own fresh
    values as ``from_existing``), the same trunk as ours; the predicted values set with ``using_externals``."""

    def __init__(self, module: nn.Module, hidden: int, layers: int) -> None:
        import hyperlight as hl  # only for this benchmark

        super().__init__()
        self.mainnet, values = hl.hypernetize(module, parameters=list(module.parameters()), return_values=True)
        self.hypernet = hl.HyperNet.from_existing(values, input_shapes={"c": (1,)}, hidden_sizes=[hidden] * layers)

    def forward(self, images: Tensor, *, condition: float) -> Tensor:
        predicted = self.hypernet(c=torch.tensor([float(condition)]))
        with self.mainnet.using_externals(predicted):
            return self.mainnet(images)


def build(name: str, hidden: int = WIDTH) -> nn.Module:
    """One of :data:`MODELS` for the small CNN with a 2-layer MLP trunk: hyperlight's :data:`WIDTH` wide, ours
    ``hidden``."""
    if name == "hyperlight":
        return HyperlightModel(small_cnn(), WIDTH, LAYERS)
    return hypernetize(small_cnn(), body="mlp", mip=name == "MIP", hidden=hidden, layers=LAYERS)


def matched_hidden(budget: int | None) -> int:
    """The widest trunk, up to :data:`WIDTH`, at which neither of our hypernetworks has more than ``budget``
    parameters (None: :data:`WIDTH`). At equal width ours has one learned gain per predicted tensor more than
    hyperlight, so the comparison narrows ours rather than changing anything of hyperlight's."""
    hidden = WIDTH
    while budget is not None and max(hypernet_size(build(name, hidden)) for name in ("MIP", "plain")) > budget:
        hidden -= 1
    return hidden


def hypernet_size(model: nn.Module) -> int:
    """The hypernetwork's parameters, ``theta0`` included; not the parameters a Hypernetized module keeps."""
    params = model.hypernet_parameters() if isinstance(model, Hypernetized) else model.parameters()
    return sum(p.numel() for p in params)


@torch.no_grad()
def probe_loss(model: nn.Module, probe: LabeledTensorDataset) -> float:
    losses = (smoothed_loss(model, *probe.tensors, c).item() - target_entropy(c) for c in PROBE_CONDITIONS)
    return statistics.fmean(losses)


def target_entropy(condition: float, classes: int = 10) -> float:
    """The smoothed cross-entropy's floor: the entropy of the smoothed one-hot target."""
    s = MAX_SMOOTHING * condition
    probabilities = [1 - s + s / classes] + [s / classes] * (classes - 1)
    return -sum(p * math.log(p) for p in probabilities if p > 0)


def curve(name: str, hidden: int, seed: int, settings: TrainSettings, data: LabeledTensorDataset, every: int) -> dict:
    """One training run's probe-loss curve ``[(step, loss)]``, hypernetwork size and seconds per step."""
    torch.manual_seed(seed)
    model = build(name, hidden)
    probe = LabeledTensorDataset(data.images[:PROBE_IMAGES], data.labels[:PROBE_IMAGES], data.classes)
    points = [(0, probe_loss(model, probe))]
    bar = tqdm(total=settings.steps, desc=f"{name} seed {seed}", file=sys.stderr, leave=False)
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
    return {
        "model": name,
        "seed": seed,
        "points": points,
        "parameters": hypernet_size(model),
        "ms_per_step": 1000 * training / settings.steps,
    }


def step_times(names: list[str], hidden: int, data: LabeledTensorDataset) -> dict[str, list[float]]:
    """Milliseconds per training step of each model in :data:`TIMING_ROUNDS` rounds of :data:`TIMING_STEPS`
    steps, the models taking turns (A B C A B C ...): a busy spell on shared cores then slows every model
    alike, and a median drops the rounds it hit hardest."""
    torch.manual_seed(0)
    models = {name: build(name, hidden) for name in names}
    rounds: dict[str, list[float]] = {name: [] for name in names}
    for index in range(TIMING_ROUNDS):
        for name, model in models.items():
            start = time.perf_counter()
            train(model, data, TrainSettings(steps=TIMING_STEPS, seed=index))
            rounds[name].append(1000 * (time.perf_counter() - start) / TIMING_STEPS)
    return rounds


def ratio_lines(timings: dict[str, list[float]]) -> list[str]:
    """Each of our models' time per step over hyperlight's, round by round (paired: both in the same spell)."""
    lines = []
    for name in (name for name in timings if name != "hyperlight"):
        ratios = [ours / theirs for ours, theirs in zip(timings[name], timings["hyperlight"], strict=True)]
        lines.append(
            f"{name} / hyperlight, round by round: median {statistics.median(ratios):.3f} "
            f"(quartiles {quartiles(ratios, 3)}); faster in {sum(r < 1 for r in ratios)} of {len(ratios)} rounds"
        )
    return lines


def steps_to(points: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, loss in points if loss <= threshold), None)


def quartiles(values: list[float], digits: int = 1) -> str:
    """The first and third quartiles, ``"q1-q3"``."""
    first, _, third = statistics.quantiles(values, n=4)
    return f"{first:.{digits}f}-{third:.{digits}f}"


def mean_std(values: list[float], digits: int) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"


def resnet18_sizes(with_hyperlight: bool) -> list[tuple[str, int, int]]:
    """hyperlight's README example: resnet18's convolution weights predicted from 10 numbers in [0, 1]. Rows of
    (hypernetwork, its parameters, those less ``theta0``), counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        net = torchvision.models.resnet18()
        convs = [f"{name}.weight" for name, layer in net.named_modules() if isinstance(layer, nn.Conv2d)]
        theta0 = sum(net.get_parameter(name).numel() for name in convs)
        rows = []
        if with_hyperlight:
            import hyperlight as hl

            net = hl.hypernetize(net, modules=hl.find_modules_of_type(net, [nn.Conv2d]))
            hypernet = hl.HyperNet({"h": (10,)}, net.external_shapes(), hidden_sizes=[16, 64, 128])
            rows.append(("hyperlight HyperNet, hidden_sizes=[16, 64, 128]", hypernet_size(hypernet)))
        for body in ("auto", "mlp"):
            model = hypernetize(torchvision.models.resnet18(), convs, "scalar:10", body=body, from_existing=True)
            rows.append((f'hypernetize, body="{body}" ({model.config.body}, hidden 64)', hypernet_size(model)))
    return [(name, size, size - theta0) for name, size in rows]


def plot(runs: list[dict], threshold: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run in runs:
        steps, losses = zip(*run["points"], strict=True)
        ax.plot(steps, losses, color=COLORS[run["model"]], alpha=0.8, label=run["model"])
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
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/bench_hypernetize"))
    args = p.parse_args()
    with_hyperlight = "hyperlight" in args.models
    if with_hyperlight and importlib.util.find_spec("hyperlight") is None:
        p.exit(2, f"--models hyperlight: hyperlight is not installed; `{INSTALL_HYPERLIGHT}` (benchmark only)\n")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_mnist("train", normalize=True)
    hidden = matched_hidden(hypernet_size(build("hyperlight")) if with_hyperlight else None)
    runs = []
    with open(args.out / "metrics.jsonl", "w") as f:
        for seed in args.seeds:
            settings = TrainSettings(steps=args.steps, seed=seed)
            for name in args.models:
                runs.append(curve(name, hidden, seed, settings, data, args.every))
                print(json.dumps(runs[-1]), file=f, flush=True)
    plot(runs, args.threshold, args.out / "probe_loss.png")
    timings = step_times(args.models, hidden, data)

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch thread(s), torch {torch.__version__}"
    )
    print(f"`python {shlex.join(sys.argv)}` ({machine})\n")
    print(
        f"| parametrization | hypernetwork parameters | steps to probe loss <= {args.threshold:g} | "
        f"probe loss after {args.steps} steps | ms/step in those runs | ms/step, in turn (median, quartiles) |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.models:
        mine = [run for run in runs if run["model"] == name]
        reached = [s for s in (steps_to(run["points"], args.threshold) for run in mine) if s is not None]
        steps = mean_std(reached, 0) if reached else "not reached"
        if reached and len(reached) < len(mine):
            steps += f" ({len(reached)} of {len(mine)} seeds; the others never)"
        final = mean_std([run["points"][-1][1] for run in mine], 3)
        speed = mean_std([run["ms_per_step"] for run in mine], 1)
        width = WIDTH if name == "hyperlight" else hidden
        turns = f"{statistics.median(timings[name]):.1f} ({quartiles(timings[name])})"
        row = [f"{name}, hidden {width}", f"{mine[0]['parameters']:,}", steps, final, speed, turns]
        print(f"| {' | '.join(row)} |")
    print(
        f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), mean ± std; the last column: median and "
        f"quartiles of {TIMING_ROUNDS} rounds of {TIMING_STEPS} steps per model, the models taking turns.\n"
    )
    if with_hyperlight:
        print("\n".join(ratio_lines(timings)) + "\n")
    print("| resnet18 conv weights from 10 conditions | hypernetwork parameters | less theta0 |")
    print("|---|---|---|")
    for name, size, body in resnet18_sizes(with_hyperlight):
        print(f"| {name} | {size:,} | {body:,} |")


if __name__ == "__main__":
    main()
