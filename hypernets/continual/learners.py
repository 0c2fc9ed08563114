"""The three ways to learn a sequence of tasks that the benchmarks compare, behind one interface.

- :class:`HypernetLearner`: a task-conditioned hypernetwork generates the whole network per task;
  the output regularizer keeps the networks of earlier tasks in place.
- :class:`FineTuneLearner`: one network (shared trunk, one output head per task) trained on each task
  in turn; nothing protects old tasks, so it shows what forgetting looks like.
- :class:`SeparateLearner`: a fresh network per task; cannot forget, the upper bound.

All three use task identity the same way (it selects a generated network, a head or a network).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from hypernets.continual.hypernet import TaskHypernet
from hypernets.continual.regularizer import OutputRegularizer, adam_step


class Learner(Protocol):
    def begin_task(self, task: int) -> None: ...
    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]: ...
    def end_task(self, task: int) -> None: ...
    def logits(self, task: int, x: Tensor) -> Tensor: ...


class HypernetLearner:
    """Trains the shared hypernetwork weights and task ``t``'s embedding on task ``t``'s loss plus the
    output regularizer (with look-ahead if asked); a fresh Adam per task, as in von Oswald et al."""

    def __init__(
        self, hypernet: TaskHypernet, target: nn.Module, beta: float, lr: float = 1e-3, lookahead: bool = False
    ) -> None:
        self.hypernet, self.target, self.lr, self.lookahead = hypernet, target, lr, lookahead
        self.regularizer = OutputRegularizer(beta)
        self.optimizer: torch.optim.Adam | None = None

    def begin_task(self, task: int) -> None:
        self.optimizer = torch.optim.Adam([*self.hypernet.weights(), self.hypernet.task_embeddings[task]], lr=self.lr)

    def logits(self, task: int, x: Tensor) -> Tensor:
        return functional_call(self.target, self.hypernet.predict(task), (x,))

    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]:
        self.hypernet.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.logits(task, x), y)
        loss.backward()
        stats = {"loss": loss.item()}
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

    def end_task(self, task: int) -> None:
        self.regularizer.snapshot(self.hypernet, range(task + 1))


class FineTuneLearner:
    """One network; ``build(classes * num_tasks)`` makes it, and task ``t`` reads its own block of outputs."""

    def __init__(self, build: Callable[[int], nn.Module], num_tasks: int, num_classes: int, lr: float = 1e-3) -> None:
        self.network = build(num_classes * num_tasks)
        self.num_classes = num_classes
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)

    def begin_task(self, task: int) -> None:
        pass

    def logits(self, task: int, x: Tensor) -> Tensor:
        return self.network(x)[:, task * self.num_classes : (task + 1) * self.num_classes]

    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]:
        return _supervised_step(self.optimizer, self.logits(task, x), y)

    def end_task(self, task: int) -> None:
        pass


class SeparateLearner:
    """A new ``build(num_classes)`` network and optimizer for every task."""

    def __init__(self, build: Callable[[int], nn.Module], num_classes: int, lr: float = 1e-3) -> None:
        self.build, self.num_classes, self.lr = build, num_classes, lr
        self.networks: list[nn.Module] = []
        self.optimizer: torch.optim.Adam | None = None

    def begin_task(self, task: int) -> None:
        self.networks.append(self.build(self.num_classes))
        self.optimizer = torch.optim.Adam(self.networks[task].parameters(), lr=self.lr)

    def logits(self, task: int, x: Tensor) -> Tensor:
        return self.networks[task](x)

    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]:
        return _supervised_step(self.optimizer, self.logits(task, x), y)

    def end_task(self, task: int) -> None:
        pass


def _supervised_step(optimizer: torch.optim.Optimizer, logits: Tensor, y: Tensor) -> dict[str, float]:
    """One cross-entropy step of the baselines, which train their networks directly."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item()}
