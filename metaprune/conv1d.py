"""Hugging Face's ``Conv1D`` (GPT-2's linear layers) taught to Torch-Pruning.

``transformers.pytorch_utils.Conv1D`` computes ``x @ weight + bias`` with ``weight`` stored ``[in, out]``, the
transpose of ``nn.Linear``'s. Torch-Pruning knows ``nn.Linear`` only; its extension point for other layers is a
customized pruner (``customized_pruners={Conv1D: pruner}``), which slices the weight on the right axis. Its
magnitude scorers still skip layer types they do not know, so a group made only of ``Conv1D`` layers (a GPT-2 MLP)
would get no score and never be pruned: :class:`Magnitude` shows them each ``Conv1D`` as the ``nn.Linear`` it is.

Nothing here imports ``transformers``: a model holding a ``Conv1D`` has imported it already.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch_pruning as tp
from torch import Tensor, nn


def conv1d_type() -> type[nn.Module] | None:
    """``transformers.pytorch_utils.Conv1D`` if ``transformers`` is loaded, else ``None``."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    kind = conv1d_type()
    return kind is not None and isinstance(module, kind)


class Conv1DPruner(tp.pruner.BasePruningFunc):
    """Removes output features (columns of the ``[in, out]`` weight, entries of the bias) or input features (rows),
    keeping ``nf``/``nx``, which ``Conv1D.forward`` reads, in step."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.nf, idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.nx, idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.nf

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.nx


CONV1D_PRUNER = Conv1DPruner()


def customized_pruners() -> dict[type[nn.Module], tp.pruner.BasePruningFunc]:
    """Torch-Pruning's ``customized_pruners`` argument: the ``Conv1D`` pruner when ``transformers`` is loaded."""
    kind = conv1d_type()
    return {} if kind is None else {kind: CONV1D_PRUNER}


def pruner_options() -> dict[str, Any]:
    """The arguments a Torch-Pruning pruner needs to cut ``Conv1D`` layers: their pruner, and ``Conv1D`` among the
    layer types a channel group may start from (beside Torch-Pruning's default ones)."""
    custom = customized_pruners()
    roots = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM, *custom]
    return {"customized_pruners": custom, "root_module_types": roots}


class Magnitude(tp.importance.GroupMagnitudeImportance):
    """Torch-Pruning's group magnitude importance, with each ``Conv1D`` in a group scored as the ``nn.Linear`` it
    computes (same formula, same reduction and normalization); groups without one are scored unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_types = [*self.target_types, _LinearView]

    def __call__(self, group: tp.dependency.Group) -> Tensor | None:
        return super().__call__([_as_linear(item) for item in group])


@dataclass
class _LinearView:
    """A ``Conv1D`` as an ``nn.Linear`` would hold it: ``weight`` ``[out, in]``."""

    weight: Tensor
    bias: Tensor | None


@dataclass
class _DependencyView:
    layer: Any
    pruning_fn: Any


def _as_linear(item: Any) -> Any:
    """A group item (``(dependency, idxs)`` with ``root_idxs``) whose ``Conv1D`` reads as an ``nn.Linear``."""
    dependency, idxs = item
    if not is_conv1d(dependency.layer):
        return item
    layer = dependency.layer
    out = dependency.pruning_fn == CONV1D_PRUNER.prune_out_channels
    function = tp.prune_linear_out_channels if out else tp.prune_linear_in_channels
    view = type(item)(_DependencyView(_LinearView(layer.weight.t(), layer.bias), function), idxs)
    view.root_idxs = item.root_idxs
    return view


def _kept(size: int, removed: Sequence[int]) -> list[int]:
    return sorted(set(range(size)) - set(removed))
