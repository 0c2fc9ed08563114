"""Compare initializations of held-out architectures: parameters predicted by hypernetworks against the
model's own random init, scored at step 0 and along a short fine-tuning run (``hypernets evaluate``).

Every initialization of an architecture is fine-tuned on the same batches in the same order, so the
curves differ only by where they start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

import torch
from torch import nn

from hypernets.logah import LoGAH
from hypernets.train.tasks import ImageTask, TextTask, task_for
from hypernets.zoo.families import Arch

RANDOM = "random init"


@dataclass(frozen=True)
class Curve:
    """Scores of one initialization of one architecture after each number of fine-tuning steps."""

    init: str
    arch: str
    steps: list[int]
    scores: list[float]


def finetune(
    model: nn.Module, task: ImageTask | TextTask, steps: int, lr: float, batch_size: int, seed: int, points: int = 5
) -> tuple[list[int], list[float]]:
    """Fine-tune ``model`` in place with AdamW; its eval score at ``points + 1`` evenly spaced steps."""
    at = sorted({round(i * steps / points) for i in range(points + 1)})
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scores = []
    for step in range(steps + 1):
        if step in at:
            model.eval()
            scores.append(task.score(model))
        if step == steps:
            break
        model.train()
        loss = task.loss(model, None, task.batch(batch_size, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return at, scores


def initialize(arch: Arch, hypernet: LoGAH | None, seed: int) -> nn.Module:
    """The architecture with predicted parameters (built on ``meta``: no random init is ever made), or
    with its library's own random init when ``hypernet`` is ``None``."""
    if hypernet is None:
        torch.manual_seed(seed)
        return arch.build("cpu")
    return hypernet.predict_(arch.build("meta"), device="cpu")


def compare_inits(
    archs: Sequence[Arch],
    hypernets: Mapping[str, LoGAH],
    family: str,
    finetune_steps: int = 100,
    lr: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[Curve]:
    """One curve per (initialization, architecture): every hypernetwork's prediction, then random init."""
    from tqdm.auto import tqdm

    task = task_for(family)
    inits: dict[str, LoGAH | None] = {**{name: h.eval() for name, h in hypernets.items()}, RANDOM: None}
    curves = []
    with tqdm(total=len(archs) * len(inits), desc="evaluating", unit="run", disable=not progress) as bar:
        for i, arch in enumerate(archs):
            for name, hypernet in inits.items():
                bar.set_postfix(arch=arch.name, init=name)
                model = initialize(arch, hypernet, seed + i)
                steps, scores = finetune(model, task, finetune_steps, lr, batch_size, seed + i)
                curves.append(Curve(name, arch.name, steps, scores))
                bar.update()
    return curves


def summary(curves: Sequence[Curve]) -> dict[str, list[float]]:
    """Per initialization, the mean score over architectures at each recorded step."""
    by_init: dict[str, list[list[float]]] = {}
    for curve in curves:
        by_init.setdefault(curve.init, []).append(curve.scores)
    return {name: [mean(column) for column in zip(*rows, strict=True)] for name, rows in by_init.items()}


def markdown_table(curves: Sequence[Curve], metric: str) -> str:
    """One row per initialization (mean over architectures), then the same per architecture; the columns
    are step 0 and, when there was fine-tuning, its last step."""
    last = curves[0].steps[-1]
    archs = sorted({c.arch for c in curves})

    def cells(scores: list[float]) -> str:
        return " | ".join(f"{s:.3f}" for s in (scores[:1] if last == 0 else [scores[0], scores[-1]]))

    columns = f"{metric} at step 0" + ("" if last == 0 else f" | {metric} after {last} steps")
    rule = "---:|" * (1 if last == 0 else 2)
    rows = [f"| initialization | {columns} |", f"|---|{rule}"]
    rows += [f"| {name} | {cells(s)} |" for name, s in summary(curves).items()]
    detail = ["", f"| architecture | initialization | {columns} |", f"|---|---|{rule}"]
    detail += [f"| {c.arch} | {c.init} | {cells(c.scores)} |" for a in archs for c in curves if c.arch == a]
    title = f"Mean eval {metric} over {len(archs)} held-out architectures\n\n"
    return title + "\n".join([*rows, *detail]) + "\n"


def plot_curves(curves: Sequence[Curve], path: str | Path, metric: str) -> None:
    """Mean eval score against fine-tuning steps, one line per initialization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, scores in summary(curves).items():
        ax.plot(curves[0].steps, scores, marker="o", label=name)
    ax.set(xlabel="fine-tuning steps", ylabel=f"eval {metric}", title="held-out architectures")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(curves: Sequence[Curve], out: str | Path, metric: str, overwrite: bool = False) -> str:
    """``results.md``, ``results.json`` (every curve) and ``curves.png`` in ``out``, published together (an
    existing ``out`` only with ``overwrite``); returns the table."""
    from hypernets.atomic import write_directory
    from hypernets.checkpoint import json_text

    table = markdown_table(curves, metric)

    def fill(staging: Path) -> None:
        (staging / "results.md").write_text(table)
        (staging / "results.json").write_text(json_text([asdict(c) for c in curves]))
        plot_curves(curves, staging / "curves.png", metric)

    write_directory(out, fill, overwrite=overwrite)
    return table
