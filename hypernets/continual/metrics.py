"""Continual-learning metrics over the accuracy matrix ``R[i, j]``: accuracy on task ``j`` after
training task ``i`` (NaN where ``j > i``, tasks not seen yet).

Average final accuracy is the last row's mean. Backward transfer (Lopez-Paz & Ranzato 2017) is
``mean_j (R[T-1, j] - R[j, j])`` over the tasks before the last: negative when learning new tasks
hurts old ones. Forgetting (Chaudhry et al. 2018) is ``mean_j (max_{j <= i < T-1} R[i, j] - R[T-1, j])``:
the drop from the best accuracy a task ever had.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import torch
from torch import Tensor


def average_accuracy(matrix: Tensor) -> float:
    """Mean accuracy over all tasks after training the last one."""
    return matrix[-1].mean().item()


def backward_transfer(matrix: Tensor) -> float:
    """``mean_j (R[T-1, j] - R[j, j])`` for ``j < T-1``; 0 for a single task."""
    tasks = matrix.shape[0]
    if tasks < 2:
        return 0.0
    return (matrix[-1, :-1] - matrix.diagonal()[:-1]).mean().item()


def forgetting(matrix: Tensor) -> float:
    """``mean_j (max_{j <= i < T-1} R[i, j] - R[T-1, j])`` for ``j < T-1``; 0 for a single task."""
    tasks = matrix.shape[0]
    if tasks < 2:
        return 0.0
    drops = [matrix[j:-1, j].max() - matrix[-1, j] for j in range(tasks - 1)]
    return torch.stack(drops).mean().item()


def summarize(matrix: Tensor) -> dict[str, float]:
    """The three numbers a results table reports, in percent points when ``matrix`` is in percent."""
    return {
        "average_accuracy": average_accuracy(matrix),
        "backward_transfer": backward_transfer(matrix),
        "forgetting": forgetting(matrix),
    }


def plot_accuracy_matrix(matrix: Tensor, path: str | Path, title: str = "") -> None:
    """A heat map of ``R`` (rows: after training task i, columns: evaluated on task j) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tasks = matrix.shape[0]
    size = max(3.0, 0.55 * tasks + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix.numpy(), vmin=0, vmax=100, cmap="viridis")
    for i in range(tasks):
        for j in range(tasks):
            value = matrix[i, j].item()
            if not math.isnan(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="w" if value < 60 else "k")
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_xticks(range(tasks))
    ax.set_yticks(range(tasks))
    ax.set_title("\n".join(textwrap.fill(line, 48) for line in title.splitlines()), fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
