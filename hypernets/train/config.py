"""Settings of a meta-training run, and the learning-rate schedule they imply."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypernets.logah import LoGAH, LoGAHConfig

FAMILIES = ("vit", "gpt2", "gpt2-wide")  # the architecture families of hypernets.zoo, by name
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

    family: str = "vit"  # one of FAMILIES: "vit" (MNIST), "gpt2" or "gpt2-wide" (byte-level text)
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
    spectral_penalty: float = 0.0  # weight of hypernets.train.spectra.spectral_excess in the loss (0: off)
    stream_penalty: float = 0.0  # weight of hypernets.train.spectra.stream_excess (GPT-2 families only; 0: off)
    base_gain_floor: float = 0.0  # the MIP base gains (theta_0's scale per op kind) stay at or above this
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast where the device supports it (CUDA); off on CPU
    hypernet: LoGAHConfig = field(default_factory=hypernet_config)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        for name in ("steps", "archs_per_step", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup < 0 or self.seed < 0:
            raise ValueError(f"warmup and seed must be at least 0, got {self.warmup} and {self.seed}")
        rates = {
            name: getattr(self, name)
            for name in (
                "lr",
                "min_lr",
                "weight_decay",
                "gain_lr_scale",
                "grad_clip",
                "spectral_penalty",
                "stream_penalty",
                "base_gain_floor",
            )
        }
        for name, value in rates.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and at least 0, got {value}")
        if self.stream_penalty and self.family == "vit":
            raise ValueError("stream_penalty reads GPT-2's residual stream; the vit family has no such writers")
        if self.lr == 0 or self.min_lr > self.lr or self.grad_clip == 0:
            raise ValueError(f"need 0 <= min_lr <= lr, lr > 0 and grad_clip > 0; got {rates}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "training settings") -> TrainConfig:
        """Settings saved by :meth:`to_dict`, each of its declared type (CheckpointError naming ``source``)."""
        from hypernets.checkpoint import typed_config
        from hypernets.logah import LoGAHConfig

        return typed_config(cls, values, source, ignore=(), namespace={"LoGAHConfig": LoGAHConfig})


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
