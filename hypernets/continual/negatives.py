"""Outlier exposure with self-generated negatives, for task inference by lowest entropy.

HNET+ENT trusts the task whose network is most confident, so each task's network must be unsure on
the other tasks' inputs, which it never sees (no replay). Outlier exposure (Hendrycks et al. 2019,
*Deep Anomaly Detection with Outlier Exposure*) teaches that by pushing the softmax toward uniform on
outliers; here the outliers are made from the current task's own batch by transformations that keep
its strokes and ink but break its classes' shapes, as CSI (Tack et al. 2020) and the continual
learners built on it (Kim et al. 2022, *Continual Learning Based on OOD Detection and Task Masking*)
use shifted copies of in-distribution data as negatives:

- ``patches``: the 28x28 image cut into a 4x4 grid of 7x7 patches, shuffled per image;
- ``splice``: the top half of one image over the bottom half of an image of another class;
- ``mixup``: an even blend of two images of different classes (mixup images taken as outliers);
- ``rotate``: a quarter or three-quarter turn.

Images are flat ``[n, 784]``; every function draws from torch's global generator (seeded per run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hypernets.continual.names import NEGATIVES

SIDE = 28


def uniform_loss(logits: Tensor) -> Tensor:
    """Mean KL divergence from the uniform distribution to the softmax: 0 exactly when every row is
    uniform (highest entropy); the outlier-exposure term, cross-entropy to uniform less its minimum."""
    return -logits.log_softmax(-1).mean(-1).mean() - math.log(logits.shape[-1])


def other_class(y: Tensor) -> Tensor:
    """For each example, the index of a random example of a different label (of any label where the
    batch holds only one)."""
    same = y[:, None] == y[None, :]
    return (torch.rand(len(y), len(y)) - 2.0 * same).argmax(1)


def shuffle_patches(x: Tensor, grid: int = 4) -> Tensor:
    """Each image's ``grid x grid`` patches in a random order of its own."""
    n, size = len(x), SIDE // grid
    patches = x.reshape(n, grid, size, grid, size).transpose(2, 3).reshape(n, grid * grid, size * size)
    order = torch.rand(n, grid * grid).argsort(1)
    patches = patches.gather(1, order[:, :, None].expand_as(patches))
    return patches.reshape(n, grid, grid, size, size).transpose(2, 3).reshape(n, SIDE * SIDE)


def splice(x: Tensor, y: Tensor) -> Tensor:
    """The top half of each image over the bottom half of an image of another class."""
    top = torch.arange(SIDE * SIDE) < SIDE * SIDE // 2
    return torch.where(top, x, x[other_class(y)])


def mixup(x: Tensor, y: Tensor) -> Tensor:
    """Each image blended half and half with an image of another class."""
    return 0.5 * (x + x[other_class(y)])


def rotate(x: Tensor) -> Tensor:
    """Each image turned by a quarter or three quarters (a half turn leaves 0, 1 and 8 what they were)."""
    images = x.reshape(len(x), SIDE, SIDE)
    turned = torch.where(torch.rand(len(x), 1, 1) < 0.5, images.rot90(1, (1, 2)), images.rot90(3, (1, 2)))
    return turned.reshape(len(x), SIDE * SIDE)


def make_negatives(kind: str, x: Tensor, y: Tensor) -> Tensor:
    """``kind`` (one of ``NEGATIVES`` but ``none``) negatives from a batch of current-task images."""
    if kind == "patches":
        return shuffle_patches(x)
    if kind == "splice":
        return splice(x, y)
    if kind == "mixup":
        return mixup(x, y)
    if kind == "rotate":
        return rotate(x)
    raise ValueError(f"negatives must be one of {', '.join(NEGATIVES)}; got {kind!r}")


@dataclass(frozen=True)
class OutlierExposure:
    """The term a learner adds to each task's loss: ``weight`` times :func:`uniform_loss` on ``kind``
    negatives of the batch."""

    kind: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in NEGATIVES[1:]:
            raise ValueError(f"negatives must be one of {', '.join(NEGATIVES[1:])}; got {self.kind!r}")

    def negatives(self, x: Tensor, y: Tensor) -> Tensor:
        return make_negatives(self.kind, x, y)

    def loss(self, logits: Tensor) -> Tensor:
        return self.weight * uniform_loss(logits)
