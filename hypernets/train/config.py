"""Settings of a meta-training run, and the learning-rate schedule they imply."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypernets.logah import LoGAH, LoGAHConfig

# A small hypernetwork that meta-trains on a CPU; the command line shows these without importing torch.
HYPERNET_DEFAULTS: dict[str, Any] = {
    "hidden": 96,
    "layers": 2,
    "heads": 4,
    "rank": 32,
    "max_ck": 64,
    "shape_frequencies": 4,
}


def hypernet_config(**overrides: Any) -> LoGAHConfig:
    """:data:`HYPERNET_DEFAULTS` with ``overrides``, as a ``LoGAHConfig``."""
    from hypernets.logah import LoGAHConfig

    return LoGAHConfig(**{**HYPERNET_DEFAULTS, **overrides})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved in each checkpoint so that a resume continues the same run."""

    family: str = "vit"  # "vit" (MNIST) or "gpt2" (byte-level text)
    out: str = "runs/hnet"
    steps: int = 2000
    archs_per_step: int = 8  # per rank
    batch_size: int = 64  # examples per step, shared by the step's architectures
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.01  # on weight matrices only; gains, biases and norms are not decayed
    gain_lr_scale: float = 10.0  # the MIP gains (one scalar per op kind) learn this much faster
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast where the device supports it (CUDA); off on CPU
    hypernet: LoGAHConfig = field(default_factory=hypernet_config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        from hypernets.logah import LoGAHConfig

        hypernet = values.get("hypernet", {})
        return cls(**{**values, "hypernet": LoGAHConfig(**hypernet) if isinstance(hypernet, dict) else hypernet})


def parameter_groups(hnet: LoGAH, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices only, and ``gain_lr_scale`` times the rate for the MIP gains."""
    from hypernets.optim import adamw_groups

    gains = ("residual_gain", "base_gain", "vector_offset") if hnet.config.mip else ()
    return adamw_groups(hnet, config.lr, config.weight_decay, gains, config.gain_lr_scale)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at the last step (as in nanoGPT)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (config.lr - config.min_lr)
