"""Continual-learning benchmarks from the embedded MNIST: Permuted-, Split- and Rotated-MNIST.

The embedded MNIST is the real MNIST test split (10,000 images); ``load_mnist`` gives its first 8,000
as ``train`` and its last 2,000 as ``eval``. Permuted and Rotated tasks transform all of both (8,000
training images per task); a Split task keeps its two digits of them (about 1,600).

All are deterministic: Permuted-MNIST draws task ``t``'s pixel permutation from a generator seeded with
``(seed, t)``, Rotated-MNIST's angles are fixed and Split-MNIST's digit pairs too, so two runs (or a
hypernetwork and its baselines) always see the same tasks. Images are flattened to ``[n, 784]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from hypernets.continual.names import FULL_LENGTH
from hypernets.data import load_mnist

SIDE = 28
PIXELS = SIDE * SIDE
DIGITS = tuple(range(10))
SPLIT_PAIRS: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


@dataclass(frozen=True)
class Task:
    """One task's data. Labels are local, in ``range(len(classes))``; ``classes[y]`` is the digit."""

    name: str
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    classes: tuple[int, ...] = DIGITS


@dataclass(frozen=True)
class Benchmark:
    """A sequence of tasks that share input size and number of classes per task (one head per task)."""

    name: str
    tasks: tuple[Task, ...]
    num_classes: int  # per task

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def total_classes(self) -> int:
        """Size of a head shared by all tasks (class-incremental): every digit any task holds."""
        return max(max(task.classes) for task in self.tasks) + 1


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


def rotation_angle(task: int, num_tasks: int) -> float:
    """Task ``t`` of ``T`` rotates by ``180 t / T`` degrees: evenly spaced, the first unrotated."""
    return 180.0 * task / num_tasks


def rotate(images: Tensor, degrees: float) -> Tensor:
    """``[n, 784]`` images turned counter-clockwise as displayed (rows downward) about their centre;
    bilinear, zeros outside. 90 degrees is ``rot90`` of the ``28 x 28`` image."""
    angle = torch.tensor(degrees * torch.pi / 180)
    cos, sin = torch.cos(angle).item(), torch.sin(angle).item()
    # affine_grid maps output coordinates to input ones: the inverse rotation
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).expand(len(images), 2, 3)
    square = images.reshape(len(images), 1, SIDE, SIDE)
    grid = F.affine_grid(theta, list(square.shape), align_corners=False)
    return F.grid_sample(square, grid, align_corners=False).reshape(len(images), PIXELS)


def rotated_mnist(num_tasks: int = 10) -> Benchmark:
    """Every task is all of MNIST (10 classes) turned by its own fixed angle (:func:`rotation_angle`)."""
    train_x, train_y = _flat_mnist("train")
    eval_x, eval_y = _flat_mnist("eval")
    tasks = []
    for t in range(num_tasks):
        degrees = rotation_angle(t, num_tasks)
        tasks.append(Task(f"rot{degrees:g}", rotate(train_x, degrees), train_y, rotate(eval_x, degrees), eval_y))
    return Benchmark(f"rotated_mnist{num_tasks}", tuple(tasks), num_classes=10)


def split_mnist(num_tasks: int = len(SPLIT_PAIRS)) -> Benchmark:
    """Split-MNIST: task ``t`` tells digit ``SPLIT_PAIRS[t][0]`` (label 0) from ``SPLIT_PAIRS[t][1]`` (1)."""
    if not 1 <= num_tasks <= len(SPLIT_PAIRS):
        raise ValueError(f"Split-MNIST has 1 to {len(SPLIT_PAIRS)} tasks; got {num_tasks}")
    train_x, train_y = _flat_mnist("train")
    eval_x, eval_y = _flat_mnist("eval")
    tasks = []
    for first, second in SPLIT_PAIRS[:num_tasks]:
        train = (train_y == first) | (train_y == second)
        held = (eval_y == first) | (eval_y == second)
        tasks.append(
            Task(
                f"{first}v{second}",
                train_x[train],
                (train_y[train] == second).long(),
                eval_x[held],
                (eval_y[held] == second).long(),
                classes=(first, second),
            )
        )
    return Benchmark(f"split_mnist{num_tasks}", tuple(tasks), num_classes=2)


def load_benchmark(name: str, num_tasks: int = 0, seed: int = 0) -> Benchmark:
    """The benchmark ``name`` with ``num_tasks`` tasks (0: its full length, :data:`FULL_LENGTH`)."""
    if name not in FULL_LENGTH:
        raise ValueError(f"benchmark must be one of {', '.join(FULL_LENGTH)}; got {name!r}")
    tasks = num_tasks or FULL_LENGTH[name]
    if name == "permuted":
        return permuted_mnist(tasks, seed)
    if name == "rotated":
        return rotated_mnist(tasks)
    return split_mnist(tasks)
