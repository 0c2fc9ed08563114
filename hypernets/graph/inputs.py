"""Example inputs for tracing: what the user passed, normalized, or a guess for known model families."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import InvalidInputError

Inputs = torch.Tensor | Sequence[Any] | Mapping[str, Any] | torch.Size | None

DEFAULT_TEXT_LENGTH = 8


def normalize_inputs(model: nn.Module, inputs: Inputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Turn ``inputs`` into (args, kwargs) for ``model(*args, **kwargs)`` on the model's device.

    ``inputs`` may be a tensor, a sequence of positional arguments, a mapping of keyword arguments,
    a shape (ints) for one float input, or ``None`` to guess from the model family.
    """
    if inputs is None:
        args, kwargs = default_inputs(model)
    elif isinstance(inputs, torch.Tensor):
        args, kwargs = (inputs,), {}
    elif isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    elif isinstance(inputs, Sequence) and inputs and all(isinstance(d, int) for d in inputs):
        args, kwargs = (torch.zeros(tuple(inputs)),), {}
    elif isinstance(inputs, Sequence) and not isinstance(inputs, str):
        args, kwargs = tuple(inputs), {}
    else:
        raise InvalidInputError(
            f"example inputs for {type(model).__name__} must be a tensor, a shape, a sequence of "
            f"positional arguments or a mapping of keyword arguments; got {type(inputs).__name__}"
        )
    if "use_cache" in inspect.signature(model.forward).parameters:
        kwargs.setdefault("use_cache", False)  # a KV cache would add cache-update ops to the graph
    device = _device_of(model)
    return _to_device(args, device), _to_device(kwargs, device)


def default_inputs(model: nn.Module) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inputs for timm vision models (image size from the patch embedding or pretrained config) and
    Hugging Face language models (a short run of token ids)."""
    patch_embed = _patch_embedding(model)
    if patch_embed is not None:
        channels = patch_embed.proj.in_channels
        return (torch.zeros(1, channels, *patch_embed.img_size),), {}
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, Mapping) and "input_size" in pretrained_cfg:
        return (torch.zeros(1, *pretrained_cfg["input_size"]),), {}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "vocab_size"):
        max_positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 0)
        length = min(DEFAULT_TEXT_LENGTH, max_positions or DEFAULT_TEXT_LENGTH)
        return (), {"input_ids": torch.zeros(1, length, dtype=torch.long)}
    raise InvalidInputError(
        f"cannot guess example inputs for {type(model).__name__}: pass inputs= (a tensor, a shape such "
        f"as (1, 3, 32, 32), positional arguments, or keyword arguments)"
    )


def _patch_embedding(model: nn.Module) -> nn.Module | None:
    """timm's patch embedding with a fixed image size, wherever the model keeps it (``patch_embed`` in a ViT,
    ``stem`` in MLP-Mixer): the first module with an ``img_size`` and a ``proj`` conv."""
    return next(
        (
            module
            for module in model.modules()
            if getattr(module, "img_size", None) is not None and isinstance(getattr(module, "proj", None), nn.Conv2d)
        ),
        None,
    )


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    return value
