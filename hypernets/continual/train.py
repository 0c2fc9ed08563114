"""The continual-learning loop: learn the tasks in order, and after each one fill a row of the
accuracy matrix by evaluating every task seen so far, with the task given (task-incremental) or not
(class-incremental; learners that infer the task also fill a task-inference matrix)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hypernets.continual.benchmarks import Benchmark, Task
from hypernets.continual.learners import Learner
from hypernets.continual.names import SETTINGS


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimizer steps per task
    batch_size: int = 128
    log_every: int = 200
    seed: int = 0  # seeds the minibatch order
    setting: str = "task"  # "task": the task id is given at test time; "class": it is not


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # percent of images whose global class is right
    task_inference: float | None  # percent whose task was inferred right, where the learner inferred it


@torch.no_grad()
def evaluate(learner: Learner, task: int, data: Task, given: bool = True, batch_size: int = 1000) -> Evaluation:
    """Score ``learner`` on task ``task``'s held-out images, telling it the task only if ``given``."""
    classes, tasks = [], []
    for x in data.eval_x.split(batch_size):
        prediction = learner.predict(task if given else None, x)
        classes.append(prediction.classes)
        tasks.append(prediction.tasks)
    truth = torch.tensor(data.classes)[data.eval_y]
    accuracy = 100.0 * (torch.cat(classes) == truth).float().mean().item()
    if any(t is None for t in tasks):
        return Evaluation(accuracy, None)
    return Evaluation(accuracy, 100.0 * (torch.cat(tasks) == task).float().mean().item())


def accuracy(learner: Learner, task: int, data: Task, batch_size: int = 1000) -> float:
    """Percent of ``data``'s held-out images classified correctly with the task given."""
    return evaluate(learner, task, data, True, batch_size).accuracy


def train_continual(
    learner: Learner,
    benchmark: Benchmark,
    config: TrainConfig,
    log: Callable[[dict], None] = lambda record: None,
    advance: Callable[[int], None] = lambda steps: None,
) -> tuple[Tensor, Tensor]:
    """Train on every task in turn, calling ``advance(1)`` after each step; returns the ``[T, T]`` accuracy
    matrix and the task-inference matrix (NaN above the diagonal, and everywhere no task was inferred)."""
    if config.setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {config.setting!r}")
    tasks = len(benchmark)
    matrix = torch.full((tasks, tasks), float("nan"))
    inference = matrix.clone()
    generator = torch.Generator().manual_seed(config.seed)
    for t, data in enumerate(benchmark.tasks):
        learner.begin_task(t)
        for step in range(config.steps):
            batch = torch.randint(len(data.train_y), (config.batch_size,), generator=generator)
            stats = learner.train_step(t, data.train_x[batch], data.train_y[batch])
            if step % config.log_every == 0 or step == config.steps - 1:
                log({"task": t, "step": step, **stats})
            advance(1)
        learner.end_task(t, data)
        for j in range(t + 1):
            result = evaluate(learner, j, benchmark.tasks[j], given=config.setting == "task")
            matrix[t, j] = result.accuracy
            record = {"after_task": t, "task": j, "accuracy": result.accuracy}
            if result.task_inference is not None:
                inference[t, j] = result.task_inference
                record["task_inference"] = result.task_inference
            log(record)
    return matrix, inference
