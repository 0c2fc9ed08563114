"""The output regularizer of von Oswald et al. (2020) that keeps a hypernetwork from forgetting.

After task ``t`` the hypernetwork's outputs for every task so far are frozen as targets
``theta*_j``. While learning a later task, ``beta / J * sum_j ||h(e_j; W) - theta*_j||^2`` over those
``J`` tasks is added to the loss: the shared weights ``W`` may move only in directions that leave the
earlier networks where they were. With look-ahead the penalty is taken at ``W + dW``, the step the
optimizer is about to make for the task loss, so it corrects the step rather than the current point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call


class OutputRegularizer:
    """``beta * mean_j ||h(e_j) - theta*_j||^2`` over the tasks of the last :meth:`snapshot`; ``hypernet`` is
    any module mapping ``[k]`` task ids to ``[k, num_params]`` flat parameters."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.tasks = torch.zeros(0, dtype=torch.long)
        self.targets = torch.zeros(0)

    @torch.no_grad()
    def snapshot(self, hypernet: nn.Module, tasks: Sequence[int]) -> None:
        """Freeze the hypernetwork's current outputs for ``tasks`` as the targets to keep."""
        self.tasks = torch.tensor(list(tasks), dtype=torch.long)
        self.targets = hypernet(self.tasks).detach().clone() if len(self.tasks) else torch.zeros(0)

    def __call__(self, hypernet: nn.Module, weights: dict[str, Tensor] | None = None) -> Tensor:
        """The penalty now, or at ``weights`` (name -> value overrides, e.g. look-ahead ``W + dW``)."""
        if not len(self.tasks):
            return torch.zeros(())
        outputs = hypernet(self.tasks) if weights is None else functional_call(hypernet, weights, (self.tasks,))
        return self.beta * (outputs - self.targets).pow(2).sum(-1).mean()


@torch.no_grad()
def adam_step(optimizer: torch.optim.Adam, module: nn.Module) -> dict[str, Tensor]:
    """The change ``optimizer.step()`` would make to each of ``module``'s parameters that has a gradient,
    by name, without stepping: Adam's update from its moments and the current gradients."""
    if not isinstance(optimizer, torch.optim.Adam) or any(
        g["amsgrad"] or g["weight_decay"] for g in optimizer.param_groups
    ):
        raise TypeError("look-ahead previews plain Adam steps (no amsgrad, no weight decay)")
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    deltas = {}
    for name, p in module.named_parameters():
        if p.grad is None or id(p) not in group_of:
            continue
        group, state = group_of[id(p)], optimizer.state.get(p, {})
        beta1, beta2 = group["betas"]
        step = float(state.get("step", 0)) + 1
        m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * p.grad
        v = beta2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - beta2) * p.grad**2
        denominator = v.sqrt() / (1 - beta2**step) ** 0.5 + group["eps"]
        deltas[name] = -group["lr"] / (1 - beta1**step) * m / denominator
    return deltas
