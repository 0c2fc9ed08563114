"""The task-conditioned hypernetwork of any target module, built on :func:`hypernets.hypernetize`.

``hypernetize(target, "*", condition="task:N")`` predicts every parameter of the target from a learned
task embedding (a chunked body under MIP by default: ``theta = theta0 + gain * scale * h(e_t)``). This
adapter gives it the interface the continual learner and the output regularizer use: flat outputs per
task, a network per task, and the parameters to train on task ``t``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hypernets.conditional import hypernetize


class HypernetizedTaskHypernet(nn.Module):
    """``hypernetize(target, "*", condition="task:N", **options)``; the target is taken over.

    Training task ``t`` moves every hypernetwork weight and row ``t`` of the embedding table; a gradient
    hook zeroes the other rows, so earlier tasks keep the embeddings their regularizer targets came from.
    """

    def __init__(self, target: nn.Module, num_tasks: int, **options: Any) -> None:
        super().__init__()
        named = list(target.named_parameters())
        self.names = [name for name, _ in named]
        self.num_params = sum(p.numel() for _, p in named)
        self.model = hypernetize(target, "*", condition=f"task:{num_tasks}", **options)
        self.current = 0
        self.model.task_embeddings.register_hook(self._only_current_task)

    def _only_current_task(self, grad: Tensor) -> Tensor:
        keep = torch.zeros(len(grad), 1, dtype=grad.dtype, device=grad.device)
        keep[self.current] = 1
        return grad * keep

    def forward(self, tasks: Tensor) -> Tensor:
        """``[k]`` task ids -> ``[k, num_params]`` flat target parameters in ``named_parameters`` order."""
        predicted = self.model.predict(tasks.long())
        return torch.cat([predicted[name].reshape(len(tasks), -1) for name in self.names], dim=1)

    def predict(self, task: int) -> dict[str, Tensor]:
        """All parameters of the target for one task, in its exact shapes."""
        return self.model.predict(int(task))

    def trainable(self, task: int) -> list[nn.Parameter]:
        """Everything: the hook keeps the other tasks' embedding rows fixed while ``task`` trains."""
        self.current = task
        return list(self.parameters())
