"""Pruned models on disk: ``model.safetensors`` + ``model.json``, no pickles.

A pruned network is the architecture it was pruned from with fewer channels (or attention heads), so
``model.json`` records how to build that architecture (a model spec, or a population member's config) and
the pruned shape of every tensor: :func:`load_pruned` builds the dense architecture, resizes each layer to the
recorded shapes, and loads the weights strictly, on any machine with the same libraries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hypernets.checkpoint import json_text, load_state_strict, read_json
from hypernets.writers import tied_parameters  # {alias: stored name}
from metaprune.conv1d import is_conv1d
from metaprune.population import CONFIG_FILE, WEIGHTS_FILE, build_from_config
from metaprune.prune import is_attention, set_num_heads

FORMAT = "metaprune.pruned/1"


def save_pruned(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    spec: str | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """The files of a pruned model in ``directory`` (a staging directory: see :class:`hypernets.atomic.Staging`).

    ``spec`` (a :mod:`hypernets.models` spec) or ``config`` (a population member's ``model.json``) says what was
    pruned; ``extra`` is recorded as well (e.g. the weights file the spec was loaded with).
    """
    if (spec is None) == (config is None):
        raise ValueError("save_pruned needs exactly one of spec= and config=: what the model was pruned from")
    directory = Path(directory)
    tied = tied_parameters(model)  # stored once: safetensors refuses shared tensors (GPT-2's embedding and head)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, directory / WEIGHTS_FILE)
    record = {
        "format": FORMAT,
        "spec": spec,
        "config": config,
        **(extra or {}),
        "shapes": {name: list(tensor.shape) for name, tensor in state.items()},
        "tied": tied,
        "heads": {name: m.num_heads for name, m in model.named_modules() if is_attention(m)},
    }
    (directory / CONFIG_FILE).write_text(json_text(record))


def load_pruned(spec_or_model: str | nn.Module | None, directory: str | os.PathLike) -> nn.Module:
    """A model saved by :func:`save_pruned`, in eval mode.

    ``spec_or_model``: the dense architecture, as a model spec or a module (resized in place), or ``None`` for
    the one ``model.json`` records. Weights are read from safetensors only and must fit exactly.
    """
    from hypernets.models import build_model

    directory = Path(directory)
    record_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    record = read_json(record_path, "pruned model record", ValueError)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{record_path}: not a pruned model record (format {FORMAT!r})")
    if isinstance(spec_or_model, nn.Module):
        model = spec_or_model
    elif spec_or_model is not None or record.get("spec") is not None:
        model = build_model(spec_or_model or record["spec"])
    else:
        model = build_from_config(record["config"], record_path)
    state = load_file(weights_path)
    state.update({alias: state[name] for alias, name in record.get("tied", {}).items() if name in state})
    resize_to(model, state, heads=record.get("heads"))
    load_state_strict(model, state, weights_path)
    return model.eval()


def resize_to(model: nn.Module, state: dict[str, torch.Tensor], heads: dict[str, int] | None = None) -> None:
    """Give every parameter and buffer named in ``state`` that tensor's shape, and update the layer
    attributes that describe the shape (channels, features), so the model runs at the pruned size. A parameter
    reachable under several names (tied) is replaced by one new parameter under all the names ``state`` gives.
    ``heads``: the head count of each timm attention layer, by name (both heads and their channels may have been
    pruned); where not given, the heads kept their size and the count follows from ``qkv``."""
    replaced: dict[int, nn.Parameter] = {}
    for name, tensor in state.items():
        owner, _, attribute = name.rpartition(".")
        module = model.get_submodule(owner)
        current = getattr(module, attribute, None)
        if current is None or current.shape == tensor.shape:
            continue
        if isinstance(current, nn.Parameter):
            if id(current) not in replaced:
                replaced[id(current)] = nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad)
            setattr(module, attribute, replaced[id(current)])
        else:
            module.register_buffer(attribute, torch.empty_like(tensor))
    for name, module in model.named_modules():
        _update_size_attributes(module, (heads or {}).get(name))


def _update_size_attributes(module: nn.Module, num_heads: int | None) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        out_dim, in_dim = (1, 0) if module.transposed else (0, 1)
        module.out_channels = module.weight.shape[out_dim] * (module.groups if module.transposed else 1)
        module.in_channels = module.weight.shape[in_dim] * (1 if module.transposed else module.groups)
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif is_conv1d(module):  # transformers' Conv1D: weight [in, out]
        module.nx, module.nf = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase) and module.running_mean is not None:
        module.num_features = module.running_mean.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif is_attention(module):
        set_num_heads(module, num_heads or module.qkv.weight.shape[0] // (3 * module.head_dim))
