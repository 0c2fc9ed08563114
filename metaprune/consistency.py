"""A pruned model that runs: sizes that modules keep in plain attributes follow their pruned parameters, and a
failure of the pruned model names the module where it happens.

Torch-Pruning updates the size attributes of the layers it knows (``in_features``, ``num_features``,
``normalized_shape``); of any other module it prunes the parameters only, so a module that reshapes a parameter
by a size it stored (timm's MetaFormer ``Scale``: ``scale.view(self.shape)``) breaks, or, worse, computes
something else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .conv1d import is_conv1d
from .task import output_tensors

Shapes = dict[str, dict[str, torch.Size]]  # module name -> its own parameters' shapes
# attributes that hold spatial sizes, never a channel count, whatever their value (torchvision's ViT keeps
# image_size beside hidden_dim, equal in a small model)
_SPATIAL = re.compile(r"image|img|patch|resolution|window|kernel|stride|grid|height|length|position")


class PrunedModelBrokenError(ValueError):
    """The pruned model no longer runs; the message names the module where it fails (``module``, when found) and
    how to keep it whole."""

    def __init__(self, message: str, module: str | None = None) -> None:
        super().__init__(message)
        self.module = module


def parameter_shapes(model: nn.Module) -> Shapes:
    """The shapes of the parameters held directly by modules Torch-Pruning does not know, by module name."""
    return {
        name: {key: p.shape for key, p in module.named_parameters(recurse=False)}
        for name, module in model.named_modules()
        if _unknown_to_torch_pruning(module) and next(module.parameters(recurse=False), None) is not None
    }


def sync_size_attributes(model: nn.Module, before: Shapes) -> Shapes:
    """Where a parameter of such a module lost entries along a dimension since ``before``, every plain attribute
    of the module that held that dimension's old size (an int, or an element of a tuple or list of ints) takes
    the new size; a size that some other dimension of the module kept is ambiguous and left alone, and so are
    attributes named for spatial sizes (``image_size``, ``patch_size``, ``window_size``...). Returns the
    shapes now, the ``before`` of the next call."""
    modules = dict(model.named_modules())
    for name, shapes in before.items():
        module = modules[name]
        changed, kept = {}, set()
        for key, old in shapes.items():
            for a, b in zip(old, getattr(module, key).shape, strict=True):
                if a != b:
                    changed[a] = b
                else:
                    kept.add(a)
        resized = {a: b for a, b in changed.items() if a not in kept}
        if resized:
            for attribute, value in list(vars(module).items()):
                if not attribute.startswith("_") and not _SPATIAL.search(attribute):
                    setattr(module, attribute, _resized(value, resized))
    return parameter_shapes(model)


@contextmanager
def naming_breakage(model: nn.Module, example_inputs: Tensor) -> Iterator[None]:
    """Within, an error that a forward pass of the pruned ``model`` on ``example_inputs`` reproduces becomes
    :class:`PrunedModelBrokenError`, naming the innermost module whose ``forward`` fails and how to keep it
    whole (the counters run copies of the model, so the model itself is run again to find it). Other errors
    pass unchanged."""
    try:
        yield
    except Exception as err:
        names = {id(module): name for name, module in model.named_modules()}
        try:
            with torch.no_grad():
                model(example_inputs)
        except Exception as again:  # the user's code fails on the pruned model: say where
            failing = _innermost_module(again.__traceback__, names)
            message = f"{type(again).__name__}: {(str(again).splitlines() or [''])[0]}"
            if failing is None:
                raise PrunedModelBrokenError(f"the pruned model fails with {message}") from again
            kind = type(model.get_submodule(failing)).__name__
            raise PrunedModelBrokenError(
                f"the pruned model fails in module {failing!r} ({kind}) with {message}; keep it whole: "
                f"prune_model(..., keep=[{failing!r}]) or metaprune prune --keep {failing}",
                module=failing,
            ) from again
        raise err


def answer_shapes(model: nn.Module, example_inputs: Tensor) -> list[tuple[int, ...]]:
    """The shapes of every tensor a forward pass on ``example_inputs`` returns (a Hugging Face output's fields
    included): what pruning must leave as they were. Run in eval mode, so that batch-norm statistics stay as
    they were."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example_inputs)
    finally:
        model.train(was_training)
    return [tuple(tensor.shape) for tensor in output_tensors(output)]


def check_answer_shapes(model: nn.Module, example_inputs: Tensor, expected: list[tuple[int, ...]]) -> None:
    """Raise :class:`PrunedModelBrokenError` when the pruned ``model`` answers in other shapes than ``expected``."""
    shapes = answer_shapes(model, example_inputs)
    if shapes != expected:
        raise PrunedModelBrokenError(
            f"the pruned model answers in shapes {shapes}, not {expected}: a layer writing its output was pruned; "
            "keep it whole with prune_model(..., keep=[NAME]) or metaprune prune --keep NAME"
        )


def _unknown_to_torch_pruning(module: nn.Module) -> bool:
    return tp.ops.module2type(module) == tp.ops.OPTYPE.ELEMENTWISE and not is_conv1d(module)


def _resized(value: Any, resized: dict[int, int]) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return resized.get(value, value)
    if isinstance(value, tuple | list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return type(value)(resized.get(v, v) for v in value)
    return value


def _innermost_module(traceback: Any, names: dict[int, str]) -> str | None:
    """The name of the last module of the model whose ``forward`` is on the traceback (``''`` is the root)."""
    found = None
    while traceback is not None:
        owner = traceback.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names and names[id(owner)]:
            found = names[id(owner)]
        traceback = traceback.tb_next
    return found
