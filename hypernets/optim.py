"""AdamW parameter groups shared by the meta-training loops of hypernetworks and metanetworks."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from torch import nn


def adamw_groups(
    module: nn.Module, lr: float, weight_decay: float, fast: Collection[str] = (), fast_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Groups as in nanoGPT, weight decay on matrices only, and a faster rate for the parameters named in
    ``fast``: learned scalar gains that set the magnitude of a whole output. Adam moves a parameter by
    about ``lr`` per step whatever its gradient's size, so such a gain would need hundreds of steps to
    reach the scale of an init. Each group carries its ``lr_scale``, so a schedule can set
    ``group["lr"] = lr_at(step) * group["lr_scale"]``."""
    named = dict(module.named_parameters())
    unknown = sorted(set(fast) - set(named))
    if unknown:
        raise ValueError(f"{type(module).__name__} has no parameters named {', '.join(unknown)}")
    kinds: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "fast": []}
    for name, param in named.items():
        kinds["fast" if name in fast else "decay" if param.dim() >= 2 else "no_decay"].append(param)
    settings = {"decay": (weight_decay, 1.0), "no_decay": (0.0, 1.0), "fast": (0.0, fast_lr_scale)}
    return [
        {
            "params": params,
            "weight_decay": settings[kind][0],
            "lr_scale": settings[kind][1],
            "lr": lr * settings[kind][1],
        }
        for kind, params in kinds.items()
        if params
    ]
