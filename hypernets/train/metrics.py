"""Training metrics as JSON lines, and the loss curve drawn from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per step to ``path``. On a resume from ``step`` the records after it
    (written after the checkpoint, before the run died) are dropped, so the log reads as one run."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        records = [r for r in read_metrics(path) if r["step"] <= resume_step] if resume_step else []
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss per step, raw and smoothed (exponential moving average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in metrics]
    losses = [r["loss"] for r in metrics]
    smooth, average = [], losses[0] if losses else 0.0
    for loss in losses:
        average = 0.95 * average + 0.05 * loss
        smooth.append(average)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="moving average")
    ax.set(xlabel="step", ylabel="mean task loss of predicted networks", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
