"""Pruned models on disk: ``model.safetensors`` + ``model.json``, no pickles, a whole directory or nothing.

A pruned network has the architecture its config describes with fewer channels (or attention heads), so
``model.json`` is the original config and the channel and head counts are read back from the tensor
shapes: :func:`load_pruned` builds the dense architecture, then resizes each layer to the shapes in the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hypernets.checkpoint import load_state_strict
from metaprune.population import CONFIG_FILE, WEIGHTS_FILE, build_from_config
from metaprune.prune import is_attention, set_num_heads


def write_directory(directory: str | os.PathLike, files: dict[str, bytes], overwrite: bool = False) -> Path:
    """Write ``files`` into a temporary sibling of ``directory``, then rename it into place.

    A crash leaves either the old directory or the new one, never a half-written one.
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; choose another output or pass overwrite")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        if directory.exists():
            retired = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old."))
            os.replace(directory, retired / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(retired)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def pruned_files(model: nn.Module, config: dict[str, Any]) -> dict[str, bytes]:
    """The two files of a pruned model, as bytes (so they can be written all at once)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / WEIGHTS_FILE
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, path)
        weights = path.read_bytes()
    return {WEIGHTS_FILE: weights, CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode()}


def load_pruned(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A model saved by :func:`pruned_files` (or any member directory), in eval mode, and its config."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not a readable model config: {err}") from err
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
