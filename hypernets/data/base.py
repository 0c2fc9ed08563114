"""Pieces every loader shares: the dataset type they return and the deterministic split rule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset

SPLITS = ("train", "eval", "all")


class LabeledTensorDataset(TensorDataset):
    """An (images, labels) ``TensorDataset`` that also remembers the class names, so plots and
    reports can show ``classes[label]`` instead of a bare integer."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> None:
        super().__init__(images, labels)
        self.classes = list(classes)

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]


def split_slice(n: int, split: str, eval_fraction: float) -> slice:
    """The slice of ``n`` ordered items that ``split`` selects: the trailing ``eval_fraction`` is the
    eval split and everything before it the train split. Contiguous and seed-free, so a split is the
    same on every machine and the two never overlap."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cut = n - round(n * eval_fraction)
    return {"train": slice(0, cut), "eval": slice(cut, n), "all": slice(0, n)}[split]
