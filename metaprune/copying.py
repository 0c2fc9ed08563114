"""Copies of a user's model that survive what the model caches between calls."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


def copy_model(model: M) -> M:
    """``copy.deepcopy(model)`` that works on models caching tensors computed from their parameters."""
    with leaf_caches(model):
        return copy.deepcopy(model)


@contextmanager
def leaf_caches(model: nn.Module) -> Iterator[None]:
    """Within, every tensor a module keeps outside its parameters and buffers (as an attribute, or a value of a
    dict attribute) that is not a graph leaf is replaced by its detached self; put back after.

    Some models cache tensors computed from their parameters on a forward pass (timm's LeViT keeps its attention
    biases per device in a dict); after a forward pass with gradients on, such a tensor is not a graph leaf and
    ``copy.deepcopy`` (ours, and the one inside Torch-Pruning's counter) refuses it. Detached, it holds the same
    values, so a copy made within is the same model.
    """
    replaced: list[tuple[dict[str, Any], str, Tensor]] = []
    for module in model.modules():
        for holder in _holders(module):
            for key, value in holder.items():
                if isinstance(value, Tensor) and not value.is_leaf:
                    replaced.append((holder, key, value))
    for holder, key, value in replaced:
        holder[key] = value.detach()
    try:
        yield
    finally:
        for holder, key, value in replaced:
            holder[key] = value


def _holders(module: nn.Module) -> list[dict[str, Any]]:
    """The module's own attribute dict, and the dicts among its attributes (its caches)."""
    attributes = vars(module)
    plain = {k: v for k, v in attributes.items() if k not in ("_parameters", "_buffers", "_modules")}
    return [attributes, *(v for v in plain.values() if isinstance(v, dict))]
