"""Penalties that keep one network's important weights near their values for earlier tasks: EWC and SI.

Both add ``strength * sum_i importance_i (theta_i - anchor_i)^2`` to the loss of later tasks; they differ
in how the importance is measured.

- :class:`EWC` (Kirkpatrick et al. 2017): the diagonal of the Fisher information of each finished task,
  computed from that task's data at the end of it, with one anchor per task.
- :class:`SI` (Zenke et al. 2017, "synaptic intelligence"): each weight's share of the drop in the task
  loss along the training path, accumulated step by step (``-g * dtheta``) and normalized by how far the
  weight moved over the task.

Written here rather than taken from Avalanche: avalanche-lib 0.6.0 installs without touching torch, but
brings about 40 packages (wandb, tensorboard, gdown, scikit-learn, qpsolvers, dill) for two small penalties.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

Head = Callable[[Tensor], Tensor]  # network outputs -> the logits a task is trained on


class Consolidation(Protocol):
    """What a single-network learner calls around each step and at the end of each task."""

    def penalty(self, network: nn.Module) -> Tensor: ...
    def before_step(self, network: nn.Module) -> None: ...  # gradients hold the task loss's alone
    def after_step(self, network: nn.Module) -> None: ...
    def consolidate(self, network: nn.Module, head: Head, inputs: Tensor) -> None: ...


def _detached(network: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in network.named_parameters()}


def _quadratic(network: nn.Module, importance: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
    """``sum_i importance_i (theta_i - anchor_i)^2`` over every parameter of ``network``."""
    return sum(((importance[n] * (p - anchor[n]) ** 2).sum() for n, p in network.named_parameters()), torch.zeros(()))


def fisher_diagonal(network: nn.Module, head: Head, inputs: Tensor, chunk: int = 32) -> dict[str, Tensor]:
    """The diagonal Fisher ``E_x E_{c ~ p(c|x)} [(d log p(c|x) / d theta)^2]``: exact over the classes, per
    example (not the square of a batch gradient), averaged over ``inputs``."""
    params = {name: p.detach() for name, p in network.named_parameters()}

    def log_probs(values: dict[str, Tensor], x: Tensor) -> Tensor:
        return head(functional_call(network, values, (x[None],)))[0].log_softmax(-1)

    jacobians = vmap(jacrev(log_probs), in_dims=(None, 0))
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    for part in inputs.split(chunk):
        probs = vmap(log_probs, in_dims=(None, 0))(params, part).exp()  # [n, classes]
        for name, jacobian in jacobians(params, part).items():  # [n, classes, *shape]
            fisher[name] += torch.einsum("nc,nc...->...", probs, jacobian**2)
    return {name: f / len(inputs) for name, f in fisher.items()}


class EWC:
    """``strength / 2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2`` over the finished tasks ``t``, with
    ``F_t`` the diagonal Fisher on ``samples`` of task ``t``'s training inputs at its end point ``theta*_t``."""

    def __init__(self, strength: float, samples: int = 256) -> None:
        self.strength, self.samples = strength, samples
        self.tasks: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []  # (Fisher, anchor) per task

    def penalty(self, network: nn.Module) -> Tensor:
        total = sum((_quadratic(network, fisher, anchor) for fisher, anchor in self.tasks), torch.zeros(()))
        return self.strength / 2 * total

    def before_step(self, network: nn.Module) -> None:
        pass

    def after_step(self, network: nn.Module) -> None:
        pass

    def consolidate(self, network: nn.Module, head: Head, inputs: Tensor) -> None:
        self.tasks.append((fisher_diagonal(network, head, inputs[: self.samples]), _detached(network)))


class SI:
    """``strength * sum_i Omega_i (theta_i - theta*_i)^2`` with ``theta*`` the end of the last task and
    ``Omega += omega / (Delta^2 + damping)`` per task: ``omega = -sum_steps g * dtheta`` (``g`` the task
    loss's gradient) is the path integral, ``Delta`` the weight's change over the task. A negative
    ``omega`` (noisy Adam steps that raised the loss on balance) counts as 0: a negative importance would
    turn the penalty's bowl into a ridge that pushes the weight away from its anchor without bound."""

    def __init__(self, strength: float, damping: float = 0.1) -> None:
        self.strength, self.damping = strength, damping
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.start: dict[str, Tensor] = {}  # the parameters where the current task began
        self.omega: dict[str, Tensor] = {}
        self._gradients: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}

    def penalty(self, network: nn.Module) -> Tensor:
        if not self.importance:
            return torch.zeros(())
        return self.strength * _quadratic(network, self.importance, self.anchor)

    def before_step(self, network: nn.Module) -> None:
        if not self.start:
            self.start = _detached(network)
            self.omega = {name: torch.zeros_like(p) for name, p in self.start.items()}
        self._before = _detached(network)
        self._gradients = {
            n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for n, p in network.named_parameters()
        }

    def after_step(self, network: nn.Module) -> None:
        for name, p in network.named_parameters():
            self.omega[name] -= self._gradients[name] * (p.detach() - self._before[name])

    def consolidate(self, network: nn.Module, head: Head, inputs: Tensor) -> None:
        end = _detached(network)
        for name, omega in self.omega.items():
            gained = omega.clamp(min=0) / ((end[name] - self.start[name]) ** 2 + self.damping)
            self.importance[name] = self.importance.get(name, torch.zeros_like(gained)) + gained
        self.anchor, self.start = end, {}
