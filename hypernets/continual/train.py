"""The continual-learning loop: learn the tasks in order, and after each one fill a row of the
accuracy matrix by evaluating every task seen so far."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hypernets.continual.benchmarks import Benchmark, Task
from hypernets.continual.learners import Learner


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimizer steps per task
    batch_size: int = 128
    log_every: int = 200
    seed: int = 0  # seeds the minibatch order


@torch.no_grad()
def accuracy(learner: Learner, task: int, data: Task, batch_size: int = 1000) -> float:
    """Percent of ``data``'s held-out images classified correctly by ``learner``'s network for ``task``."""
    correct = sum(
        (learner.logits(task, x).argmax(-1) == y).sum().item()
        for x, y in zip(data.eval_x.split(batch_size), data.eval_y.split(batch_size), strict=True)
    )
    return 100.0 * correct / len(data.eval_y)


def train_continual(
    learner: Learner, benchmark: Benchmark, config: TrainConfig, log: Callable[[dict], None] = lambda record: None
) -> Tensor:
    """Train on every task in turn; returns the ``[T, T]`` accuracy matrix (NaN above the diagonal)."""
    tasks = len(benchmark)
    matrix = torch.full((tasks, tasks), float("nan"))
    generator = torch.Generator().manual_seed(config.seed)
    for t, data in enumerate(benchmark.tasks):
        learner.begin_task(t)
        for step in range(config.steps):
            batch = torch.randint(len(data.train_y), (config.batch_size,), generator=generator)
            stats = learner.train_step(t, data.train_x[batch], data.train_y[batch])
            if step % config.log_every == 0 or step == config.steps - 1:
                log({"task": t, "step": step, **stats})
        learner.end_task(t)
        for j in range(t + 1):
            matrix[t, j] = accuracy(learner, j, benchmark.tasks[j])
            log({"after_task": t, "task": j, "accuracy": matrix[t, j].item()})
    return matrix
