"""Continual-learning benchmarks from the embedded MNIST: Permuted-MNIST and Split-MNIST.

Both are deterministic: Permuted-MNIST draws task ``t``'s pixel permutation from a generator seeded
with ``(seed, t)``, and Split-MNIST's tasks are fixed digit pairs, so two runs (or a hypernetwork and
its baselines) always see the same tasks. Images are flattened to ``[n, 784]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hypernets.data import load_mnist

PIXELS = 28 * 28
SPLIT_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


@dataclass(frozen=True)
class Task:
    """One task's data; labels are already in ``range(num_classes)`` of its benchmark."""

    name: str
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor


@dataclass(frozen=True)
class Benchmark:
    """A sequence of tasks that share input size and number of classes (one head per task)."""

    name: str
    tasks: tuple[Task, ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.tasks)


def _flat_mnist(split: str) -> tuple[Tensor, Tensor]:
    images, labels = load_mnist(split).tensors
    return images.reshape(len(images), PIXELS), labels


def permutation(task: int, seed: int = 0) -> Tensor:
    """The pixel permutation of Permuted-MNIST task ``task``: a function of ``(seed, task)`` only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + task)
    return torch.randperm(PIXELS, generator=generator)


def permuted_mnist(num_tasks: int = 10, seed: int = 0) -> Benchmark:
    """Every task is all of MNIST (10 classes) under its own fixed random pixel permutation."""
    train_x, train_y = _flat_mnist("train")
    eval_x, eval_y = _flat_mnist("eval")
    tasks = []
    for t in range(num_tasks):
        perm = permutation(t, seed)
        tasks.append(Task(f"perm{t}", train_x[:, perm], train_y, eval_x[:, perm], eval_y))
    return Benchmark(f"permuted_mnist{num_tasks}", tuple(tasks), num_classes=10)


def split_mnist(pairs: tuple[tuple[int, int], ...] = SPLIT_PAIRS) -> Benchmark:
    """Task-incremental Split-MNIST: task ``t`` tells digit ``pairs[t][0]`` (label 0) from ``pairs[t][1]`` (1)."""
    train_x, train_y = _flat_mnist("train")
    eval_x, eval_y = _flat_mnist("eval")
    tasks = []
    for first, second in pairs:
        train = (train_y == first) | (train_y == second)
        held = (eval_y == first) | (eval_y == second)
        tasks.append(
            Task(
                f"{first}v{second}",
                train_x[train],
                (train_y[train] == second).long(),
                eval_x[held],
                (eval_y[held] == second).long(),
            )
        )
    return Benchmark(f"split_mnist{len(pairs)}", tuple(tasks), num_classes=2)


BENCHMARKS = {"permuted": permuted_mnist, "split": split_mnist}
