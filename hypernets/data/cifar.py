"""CIFAR-10 and CIFAR-100 from the official "python version" directories
(https://www.cs.toronto.edu/~kriz/cifar.html).

Those files are pickles, and unpickling can run arbitrary code, so they are only ever read from a
directory the caller explicitly points at, and then through an unpickler that admits nothing but
builtin containers, bytes and numpy arrays."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hypernets.data.base import LabeledTensorDataset

_ROW = 3 * 32 * 32  # one image: 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # the official files (written by numpy 1.x)
        ("numpy._core.multiarray", "_reconstruct"),  # re-pickled by numpy 2.x
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5, numpy 1.x
        ("numpy._core.numeric", "_frombuffer"),  # protocol 5, numpy 2.x
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
    }
)


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant keeps its splits, labels and class names."""

    splits: dict[str, tuple[str, ...]]
    meta: str
    label_key: str
    names_key: str


def load_cifar10(root: str | os.PathLike, split: str = "train") -> LabeledTensorDataset:
    """CIFAR-10 ``split`` ("train": ``data_batch_1..5``, "test": ``test_batch``) from the extracted
    ``cifar-10-batches-py`` directory ``root``: float32 images ``[N, 3, 32, 32]`` in [0, 1], int64 labels.

    Reads pickles, which is only acceptable because the caller explicitly chose ``root``; the
    unpickler is restricted to containers, bytes and numpy arrays all the same."""
    batches = tuple(f"data_batch_{i}" for i in range(1, 6))
    layout = _Layout({"train": batches, "test": ("test_batch",)}, "batches.meta", "labels", "label_names")
    return _load(Path(root), split, layout)


def load_cifar100(root: str | os.PathLike, split: str = "train", labels: str = "fine") -> LabeledTensorDataset:
    """CIFAR-100 ``split`` ("train" or "test") from the extracted ``cifar-100-python`` directory
    ``root``, labelled with the 100 ``"fine"`` or the 20 ``"coarse"`` classes.

    Reads pickles, which is only acceptable because the caller explicitly chose ``root``; the
    unpickler is restricted to containers, bytes and numpy arrays all the same."""
    if labels not in ("fine", "coarse"):
        raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    splits = {"train": ("train",), "test": ("test",)}
    layout = _Layout(splits, "meta", f"{labels}_labels", f"{labels}_label_names")
    return _load(Path(root), split, layout)


def _load(root: Path, split: str, layout: _Layout) -> LabeledTensorDataset:
    if split not in layout.splits:
        raise ValueError(f"split must be one of {tuple(layout.splits)}, got {split!r}")
    files = [root / name for name in (*layout.splits[split], layout.meta)]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR directory {root} is incomplete: missing {', '.join(missing)}")
    *batch_paths, meta_path = files
    classes = [_text(name) for name in _field(_unpickle(meta_path), layout.names_key, meta_path)]
    batches = [_read_batch(path, layout.label_key, len(classes)) for path in batch_paths]
    images, labels = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    x = torch.from_numpy(images.reshape(-1, 3, 32, 32)).float().div_(255)
    return LabeledTensorDataset(x, torch.from_numpy(labels), classes)


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (uint8 ``[n, 3072]`` rows, int64 labels), validated."""
    batch = _unpickle(path)
    data, labels = _field(batch, "data", path), np.asarray(_field(batch, label_key, path), dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape [N, {_ROW}]")
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise ValueError(f"{path}: expected {len(data)} labels in 0..{num_classes - 1}")
    return data, labels


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the handful of globals a CIFAR file needs, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}; CIFAR files hold only containers, bytes and numpy arrays"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        try:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise pickle.UnpicklingError(f"{path}: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _field(batch: dict, key: str, path: Path) -> Any:
    """``batch[key]``; the official files use bytes keys, re-pickled copies often use str."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise ValueError(f"{path}: no {key!r} entry")


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
