"""The ways to learn a sequence of tasks that the benchmarks compare, behind one interface.

- :class:`HypernetLearner`: a task-conditioned hypernetwork generates the whole network per task;
  the output regularizer keeps the networks of earlier tasks in place.
- :class:`SeparateLearner`: a fresh network per task; cannot forget, the upper bound.
- :class:`SingleNetworkLearner`: one network trained on each task in turn: fine-tuning, or with EWC's
  or SI's penalty (:mod:`hypernets.continual.consolidation`).

Labels are local to a task (``range(classes per task)``); ``predict`` answers with global classes (digits).
Task-incremental: the task id selects a generated network, a network or an output block.
Class-incremental (``predict(None, x)``): learners with a network per task infer the task by lowest
predictive entropy (HNET+ENT), and with an ``exposure`` (:class:`OutlierExposure`) are trained to be unsure
off their own task; a single network has one head over all classes and ignores the task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from hypernets.continual.benchmarks import Task
from hypernets.continual.consolidation import Consolidation
from hypernets.continual.hypernet import TaskHypernet
from hypernets.continual.hypernetized import HypernetizedTaskHypernet
from hypernets.continual.inference import infer_task
from hypernets.continual.negatives import OutlierExposure
from hypernets.continual.regularizer import OutputRegularizer, adam_step


class Prediction(NamedTuple):
    classes: Tensor  # [n] global classes
    tasks: Tensor | None  # [n] inferred tasks, where the learner inferred them


class Learner(Protocol):
    def begin_task(self, task: int) -> None: ...
    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]: ...
    def end_task(self, task: int, data: Task) -> None: ...
    def predict(self, task: int | None, x: Tensor) -> Prediction: ...


def task_loss(
    logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, exposure: OutlierExposure | None
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy of one task's network on its batch, plus the outlier-exposure term on negatives made
    from the same batch where ``exposure`` asks for it (one forward pass over both)."""
    if exposure is None:
        loss = F.cross_entropy(logits(x), y)
        return loss, {"loss": loss.item()}
    outputs = logits(torch.cat([x, exposure.negatives(x, y)]))
    loss, outlier = F.cross_entropy(outputs[: len(x)], y), exposure.loss(outputs[len(x) :])
    return loss + outlier, {"loss": loss.item(), "outlier": outlier.item()}


class PerTaskNetworks:
    """Prediction for learners with a network per task: by the given task, or by the most confident one
    among the tasks learned so far. ``classes[t][y]`` is the global class of task ``t``'s local label ``y``."""

    def __init__(self, classes: Sequence[Sequence[int]]) -> None:
        self.classes = torch.tensor(classes)
        self.learned = 0

    def logits(self, task: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def predict(self, task: int | None, x: Tensor) -> Prediction:
        if task is not None:
            return Prediction(self.classes[task][self.logits(task, x).argmax(-1)], None)
        logits = torch.stack([self.logits(t, x) for t in range(self.learned)])  # [T, n, classes]
        tasks = infer_task(logits)
        local = logits[tasks, torch.arange(len(x))].argmax(-1)
        return Prediction(self.classes[tasks, local], tasks)


class HypernetLearner(PerTaskNetworks):
    """Trains the shared hypernetwork weights and task ``t``'s embedding on task ``t``'s loss plus the
    output regularizer (with look-ahead if asked); a fresh Adam per task, as in von Oswald et al."""

    def __init__(
        self,
        hypernet: TaskHypernet | HypernetizedTaskHypernet,
        target: nn.Module,
        classes: Sequence[Sequence[int]],
        beta: float,
        lr: float = 1e-3,
        lookahead: bool = False,
        exposure: OutlierExposure | None = None,
    ) -> None:
        super().__init__(classes)
        self.hypernet, self.target, self.lr, self.lookahead = hypernet, target, lr, lookahead
        self.exposure = exposure
        self.regularizer = OutputRegularizer(beta)
        self.optimizer: torch.optim.Adam | None = None

    def begin_task(self, task: int) -> None:
        self.optimizer = torch.optim.Adam(self.hypernet.trainable(task), lr=self.lr)

    def logits(self, task: int, x: Tensor) -> Tensor:
        return functional_call(self.target, self.hypernet.predict(task), (x,))

    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]:
        self.hypernet.zero_grad(set_to_none=True)
        loss, stats = task_loss(partial(self.logits, task), x, y, self.exposure)
        loss.backward()
        if len(self.regularizer.tasks):
            weights = None
            if self.lookahead:  # the earlier tasks' outputs where the task loss's step would take them
                step = adam_step(self.optimizer, self.hypernet)
                weights = {name: p + step[name] for name, p in self.hypernet.named_parameters() if name in step}
            penalty = self.regularizer(self.hypernet, weights)
            penalty.backward()
            stats["reg"] = penalty.item()
        self.optimizer.step()
        return stats

    def end_task(self, task: int, data: Task) -> None:
        self.regularizer.snapshot(self.hypernet, range(task + 1))
        self.learned = task + 1


class SeparateLearner(PerTaskNetworks):
    """A new ``build(classes per task)`` network and optimizer for every task."""

    def __init__(
        self,
        build: Callable[[int], nn.Module],
        classes: Sequence[Sequence[int]],
        lr: float = 1e-3,
        exposure: OutlierExposure | None = None,
    ) -> None:
        super().__init__(classes)
        self.build, self.lr, self.exposure = build, lr, exposure
        self.networks: list[nn.Module] = []
        self.optimizer: torch.optim.Adam | None = None

    def begin_task(self, task: int) -> None:
        self.networks.append(self.build(self.classes.shape[1]))
        self.optimizer = torch.optim.Adam(self.networks[task].parameters(), lr=self.lr)

    def logits(self, task: int, x: Tensor) -> Tensor:
        return self.networks[task](x)

    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, stats = task_loss(partial(self.logits, task), x, y, self.exposure)
        loss.backward()
        self.optimizer.step()
        return stats

    def end_task(self, task: int, data: Task) -> None:
        self.learned = task + 1


class SingleNetworkLearner:
    """One network, one Adam, trained on each task in turn, with an optional penalty against forgetting.

    ``shared_head=False`` (task-incremental): one block of outputs per task, chosen by the task id.
    ``shared_head=True`` (class-incremental): one output per global class, trained on global labels over
    all of them; the task id is never used.
    """

    def __init__(
        self,
        build: Callable[[int], nn.Module],
        classes: Sequence[Sequence[int]],
        shared_head: bool,
        lr: float = 1e-3,
        consolidation: Consolidation | None = None,
    ) -> None:
        self.classes = torch.tensor(classes)
        self.shared_head, self.consolidation = shared_head, consolidation
        tasks, per_task = self.classes.shape
        self.network = build(int(self.classes.max()) + 1 if shared_head else tasks * per_task)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)

    def head(self, task: int) -> Callable[[Tensor], Tensor]:
        """Network outputs -> the logits task ``task`` is trained on."""
        if self.shared_head:
            return lambda outputs: outputs
        per_task = self.classes.shape[1]
        return lambda outputs: outputs[:, task * per_task : (task + 1) * per_task]

    def begin_task(self, task: int) -> None:
        pass

    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.head(task)(self.network(x)), self.classes[task][y] if self.shared_head else y)
        loss.backward()
        stats = {"loss": loss.item()}
        if self.consolidation is not None:
            self.consolidation.before_step(self.network)
            penalty = self.consolidation.penalty(self.network)
            if penalty.requires_grad:
                penalty.backward()
                stats["reg"] = penalty.item()
        self.optimizer.step()
        if self.consolidation is not None:
            self.consolidation.after_step(self.network)
        return stats

    def end_task(self, task: int, data: Task) -> None:
        if self.consolidation is not None:
            self.consolidation.consolidate(self.network, self.head(task), data.train_x)

    def predict(self, task: int | None, x: Tensor) -> Prediction:
        if self.shared_head:
            return Prediction(self.network(x).argmax(-1), None)
        if task is None:
            raise ValueError("a network with a head per task needs the task (use shared_head for class-incremental)")
        return Prediction(self.classes[task][self.head(task)(self.network(x)).argmax(-1)], None)
