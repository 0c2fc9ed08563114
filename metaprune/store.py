"""Pruned models on disk: ``model.safetensors`` + ``model.json``, no pickles.

A pruned network has the architecture its config describes with fewer channels (or attention heads), so
``model.json`` is the original config and the channel and head counts are read back from the tensor
shapes: :func:`load_pruned` builds the dense architecture, then resizes each layer to the shapes in the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hypernets.checkpoint import json_text, load_state_strict, read_json
from metaprune.population import CONFIG_FILE, WEIGHTS_FILE, build_from_config
from metaprune.prune import is_attention, set_num_heads


def save_pruned(model: nn.Module, config: dict[str, Any], directory: str | os.PathLike) -> None:
    """The two files of a pruned model in ``directory`` (a staging directory: see
    :func:`hypernets.atomic.write_directory`)."""
    directory = Path(directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json_text(config))


def load_pruned(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A model saved by :func:`save_pruned` (or any member directory), in eval mode, and its config."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    config = read_json(config_path, "model config", ValueError)
    model = build_from_config(config, config_path)
    state = load_file(weights_path)
    resize_to(model, state)
    load_state_strict(model, state, weights_path)
    return model.eval(), config


def resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter and buffer named in ``state`` that tensor's shape, and update the layer
    attributes that describe the shape (channels, features), so the model runs at the pruned size."""
    for name, tensor in state.items():
        owner, _, attribute = name.rpartition(".")
        module = model.get_submodule(owner)
        current = getattr(module, attribute, None)
        if current is None or current.shape == tensor.shape:
            continue
        if isinstance(current, nn.Parameter):
            setattr(module, attribute, nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad))
        else:
            module.register_buffer(attribute, torch.empty_like(tensor))
    for module in model.modules():
        _update_size_attributes(module)


def _update_size_attributes(module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        out_dim, in_dim = (1, 0) if module.transposed else (0, 1)
        module.out_channels = module.weight.shape[out_dim] * (module.groups if module.transposed else 1)
        module.in_channels = module.weight.shape[in_dim] * (1 if module.transposed else module.groups)
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase) and module.running_mean is not None:
        module.num_features = module.running_mean.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif is_attention(module):  # head pruning keeps each head's size, so the head count follows from qkv
        set_num_heads(module, module.qkv.weight.shape[0] // (3 * module.head_dim))
