"""Shared checks for the continual-learning tests: the contract every task hypernetwork keeps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def check_outputs_every_parameter_per_task(target: nn.Module, build: Callable[[nn.Module], nn.Module]) -> None:
    """``build(target)``'s outputs for tasks ``[0, 2, 0]``: one flat row each, equal for equal tasks and different
    for different ones, in the target's ``named_parameters`` order (read before ``build``, which may take the
    parameters over); ``predict`` gives the same values in exact shapes, and the target runs on them (784
    inputs, 3 classes)."""
    shapes = {name: tuple(p.shape) for name, p in target.named_parameters()}
    hypernet = build(target)
    flat = hypernet(torch.tensor([0, 2, 0]))
    assert flat.shape == (3, sum(torch.Size(s).numel() for s in shapes.values()))
    assert torch.allclose(flat[0], flat[2]) and not torch.allclose(flat[0], flat[1])
    predicted = hypernet.predict(2)
    assert {name: tuple(v.shape) for name, v in predicted.items()} == shapes
    assert torch.allclose(torch.cat([v.reshape(-1) for v in predicted.values()]), flat[1], atol=1e-6)
    assert torch.func.functional_call(target, predicted, (torch.rand(5, 784),)).shape == (5, 3)
