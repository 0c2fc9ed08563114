"""Which parameters of a module a hypernetwork predicts, and taking them out of the module.

Selection is by fnmatch-style glob patterns over ``named_parameters()`` names (``"encoder.*.weight"``);
a pattern that matches nothing is a typo the user wants to hear about, so it is an error. A selected
parameter is replaced in its module by a tensor on the ``meta`` device of the same shape: it stops being
a parameter (nothing trains or saves it), ``repr`` and shape checks still work, and running the module
without predicted values fails instead of silently using stale weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Targets:
    """The selected parameters in ``named_parameters()`` order, and the other names of tied ones."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    aliases: dict[str, tuple[str, ...]]  # name -> every other name the same tensor is registered under

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]

    def shape_lists(self) -> dict[str, list[int]]:
        """``{name: shape}`` as JSON has it: what a checkpoint records it predicts."""
        return {name: list(shape) for name, shape in zip(self.names, self.shapes, strict=True)}

    def with_aliases(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """``values`` under every name of each tensor, so ``functional_call`` reaches tied copies too."""
        return {**values, **{alias: values[name] for name in self.names for alias in self.aliases[name]}}


def select_targets(module: nn.Module, patterns: Sequence[str]) -> Targets:
    """The parameters of ``module`` whose names match any of ``patterns``; ValueError naming the unmatched."""
    named = dict(module.named_parameters())
    unmatched = [p for p in patterns if not any(fnmatchcase(name, p) for name in named)]
    if unmatched:
        shown = ", ".join(list(named)[:8]) + (", ..." if len(named) > 8 else "")
        raise ValueError(
            f"params patterns match no parameter of {type(module).__name__}: {', '.join(map(repr, unmatched))} "
            f"(its parameters: {shown or 'none'})"
        )
    names = tuple(name for name in named if any(fnmatchcase(name, p) for p in patterns))
    by_tensor: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    aliases = {name: tuple(n for n in by_tensor[id(named[name])] if n != name) for name in names}
    return Targets(names, tuple(named[name].shape for name in names), aliases)


def existing_values(module: nn.Module, targets: Targets) -> list[Tensor]:
    """Detached copies of the selected parameters as they are now (pretrained weights, say)."""
    return [module.get_parameter(name).detach().clone() for name in targets.names]


def fresh_values(module: nn.Module, targets: Targets) -> list[Tensor]:
    """A standard init of the selected parameters: each owning layer's own ``reset_parameters()``, run on a
    copy so that the module's other (possibly pretrained) parameters keep their values."""
    fresh = copy.deepcopy(module)
    for owner in dict.fromkeys(name.rpartition(".")[0] for name in targets.names):
        layer = fresh.get_submodule(owner)
        reset = getattr(layer, "reset_parameters", None) or getattr(layer, "_reset_parameters", None)  # MHA: private
        if not callable(reset):
            raise ValueError(
                f"{owner or 'the root module'} ({type(layer).__name__}) has no reset_parameters(), so its "
                f"parameters have no standard init to start from; pass from_existing=True to start from their values"
            )
        reset()
    return [fresh.get_parameter(name).detach() for name in targets.names]


def detach_targets(module: nn.Module, targets: Targets) -> None:
    """Replace every selected parameter (and its tied names) in ``module`` by a ``meta`` placeholder."""
    for name in targets.names:
        for full_name in (name, *targets.aliases[name]):
            owner, _, attribute = full_name.rpartition(".")
            layer = module.get_submodule(owner)
            shape = layer._parameters.pop(attribute).shape
            setattr(layer, attribute, torch.empty(shape, device="meta"))
