"""Find the linear layers that Torch-Pruning's dependency graph would couple wrongly.

- Linears along tokens: MLP-Mixer's and ResMLP's token mixing and gMLP's spatial gating unit apply an
  ``nn.Linear`` to a transposed sequence. The dependency graph does not follow the transpose: it couples the
  token axis with the channels, so pruning them would cut tokens as if they were channels.
- Fused linears split along their features on an axis other than 1: Phi-3's ``gate_up_proj`` and timm's
  ``GluMlp`` chunk one linear's output into gate and value on the last axis of ``[batch, tokens, features]``.
  The dependency graph maps split channels only on axis 1 (convolutions' layout), so it indexes past the halves.

This module runs the example input once and follows which axis of every tensor holds the features, so that those
layers can be kept whole.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

_SWAPS = {"transpose", "swapaxes", "swapdims"}
_FEATURES_FIRST = {"conv1d", "conv2d", "conv3d", "batch_norm", "group_norm", "instance_norm"}
_SPLITS = {"chunk", "split", "split_with_sizes", "tensor_split"}


class _FeatureAxes(TorchFunctionMode):
    """Tracks the feature axis of every tensor of one forward pass (where it is known) and records the linear
    layers whose input has its features on an axis other than the last."""

    def __init__(self, weights: dict[int, str]) -> None:
        super().__init__()
        self.weights = weights  # id of a Linear's weight -> the Linear's name
        self.axes: dict[int, int] = {}  # id of a tensor -> its feature axis, from the front
        self.alive: list[Tensor] = []  # keeps every tracked tensor alive, so that ids are not reused
        self.along_tokens: set[str] = set()
        self.outputs: dict[int, str] = {}  # id of a Linear's output -> the Linear's name
        self.split: set[str] = set()  # Linears whose output is split on its feature axis, not axis 1

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _SPLITS and args and id(args[0]) in self.outputs:
            self._check_split(args, kwargs)
        if name == "linear" and len(args) > 1 and id(args[1]) in self.weights and isinstance(out, Tensor):
            self.outputs[id(out)] = self.weights[id(args[1])]
        if isinstance(out, Tensor):
            axis = self._output_axis(name, args, kwargs, out)
            if axis is not None and 0 <= axis < out.dim():
                self.axes[id(out)] = axis
                self.alive.append(out)
        return out

    def _check_split(self, args: tuple, kwargs: dict) -> None:
        source = args[0]
        dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % source.dim()
        if dim == self._axis(source) and dim != 1:
            self.split.add(self.outputs[id(source)])

    def _axis(self, tensor: Any) -> int | None:
        return self.axes.get(id(tensor)) if isinstance(tensor, Tensor) else None

    def _output_axis(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> int | None:
        source = args[0] if args else None
        axis = self._axis(source)
        if name == "linear":
            if axis is not None and axis != source.dim() - 1 and id(args[1]) in self.weights:
                self.along_tokens.add(self.weights[id(args[1])])
                return axis  # the features pass through a linear along tokens
            return out.dim() - 1
        if name == "layer_norm":
            return out.dim() - 1
        if name in _FEATURES_FIRST:
            return 1
        if axis is None:
            return next((self._axis(a) for a in args if self._axis(a) is not None and a.shape == out.shape), None)
        if name in _SWAPS:
            first, second = (d % source.dim() for d in _dims(args[1:], kwargs, ("dim0", "dim1")))
            return {first: second, second: first}.get(axis, axis)
        if name == "permute":
            order = kwargs.get("dims") or (args[1] if len(args) == 2 and not isinstance(args[1], int) else args[1:])
            return [d % source.dim() for d in order].index(axis)
        if name == "flatten":
            start, end = (d % source.dim() for d in _dims(args[1:], kwargs, ("start_dim", "end_dim"), (0, -1)))
            return axis if axis < start else axis - (end - start) if axis > end else None
        return axis if out.shape == source.shape else None  # elementwise; any other op loses the axis


def _dims(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: tuple[int, ...] = ()) -> list[int]:
    """The dimension arguments ``names`` of a call, given by position, keyword or default."""
    defaults = defaults or (None,) * len(names)
    return [args[i] if i < len(args) else kwargs.get(name, defaults[i]) for i, name in enumerate(names)]


def token_mixing_linears(model: nn.Module, example_inputs: Tensor) -> list[str]:
    """The names of the ``nn.Linear`` layers of ``model`` that read their input along a non-feature axis (a
    transposed sequence), found by running ``example_inputs`` once without gradients."""
    mode = _trace(model, example_inputs)
    return _named(mode, mode.along_tokens)


def split_linears(model: nn.Module, example_inputs: Tensor) -> list[str]:
    """The names of the ``nn.Linear`` layers of ``model`` whose output is split (``chunk``, ``split``) along its
    features on an axis other than 1, found by running ``example_inputs`` once without gradients."""
    mode = _trace(model, example_inputs)
    return _named(mode, mode.split)


def misread_linears(model: nn.Module, example_inputs: Tensor) -> list[str]:
    """Both kinds from one forward pass: the linears pruning keeps whole."""
    mode = _trace(model, example_inputs)
    return _named(mode, mode.along_tokens | mode.split)


def _trace(model: nn.Module, example_inputs: Tensor) -> _FeatureAxes:
    """One forward pass of ``example_inputs`` in eval mode without gradients, the feature axes followed."""
    mode = _FeatureAxes({id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), mode:
            model(example_inputs)
    finally:
        model.train(was_training)
    return mode


def _named(mode: _FeatureAxes, found: set[str]) -> list[str]:
    """The linears in ``found``, in the model's order."""
    return [name for name in mode.weights.values() if name in found]
