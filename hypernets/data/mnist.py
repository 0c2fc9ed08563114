"""MNIST that works offline: the official 10,000-image test split ships inside the package, and is
split deterministically into 8,000 training and 2,000 evaluation images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hypernets.data.base import LabeledTensorDataset, split_slice
from hypernets.data.idx import IDXFormatError, read_idx

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
EVAL_FRACTION = 0.2  # 10,000 images -> first 8,000 train, last 2,000 eval
EMBEDDED_DIR = Path(__file__).with_name("mnist")
IMAGES_FILE = "t10k-images-idx3-ubyte"
LABELS_FILE = "t10k-labels-idx1-ubyte"


def load_mnist(
    split: str = "train", root: str | os.PathLike | None = None, normalize: bool = False
) -> LabeledTensorDataset:
    """MNIST images as float32 ``[N, 1, 28, 28]`` in [0, 1] (or standardised with the usual MNIST
    mean/std when ``normalize``) and int64 labels.

    ``split`` is ``"train"`` (first 80%), ``"eval"`` (last 20%) or ``"all"``. ``root`` defaults to the
    copy embedded in the package; any directory holding ``t10k-images-idx3-ubyte[.gz]`` and
    ``t10k-labels-idx1-ubyte[.gz]`` works too.
    """
    root = EMBEDDED_DIR if root is None else Path(root)
    images_path, labels_path = _find(root, IMAGES_FILE), _find(root, LABELS_FILE)
    images, labels = read_idx(images_path), read_idx(labels_path)
    _check(images, labels, images_path, labels_path)
    keep = split_slice(len(labels), split, EVAL_FRACTION)
    x = torch.from_numpy(images[keep]).unsqueeze(1).float().div_(255)
    if normalize:
        x = x.sub_(MNIST_MEAN).div_(MNIST_STD)
    y = torch.from_numpy(labels[keep]).long()
    return LabeledTensorDataset(x, y, classes=[str(digit) for digit in range(10)])


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file {name}.gz (or uncompressed {name}) not found in {root}")


def _check(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path) -> None:
    """IDX only guarantees a consistent file; make sure the pair is actually MNIST."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXFormatError(
            f"{images_path}: expected uint8 images of shape [N, 28, 28], got {images.dtype} {list(images.shape)}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or labels.max(initial=0) > 9:
        raise IDXFormatError(f"{labels_path}: expected a 1-d array of uint8 labels in 0..9")
    if len(images) != len(labels):
        raise IDXFormatError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
