"""``hypernetize``: any module whose chosen parameters are predicted from a condition by a small hypernetwork.

Each predicted tensor is ``theta_t = theta0_t + gain_t * scale_t * h_t(c)`` under MIP (the default), and
``theta_t = gain_t * scale_t * h_t(c)`` without it:

- ``h`` is the body (:mod:`hypernets.conditional.bodies`) applied to the encoded condition
  (:mod:`hypernets.conditional.conditions`);
- ``scale_t`` is fixed: the RMS of the tensor's starting values, so every tensor's prediction starts at its
  own magnitude (a conv kernel at 0.05, a norm weight at 1) whatever the body's width;
- ``gain_t`` is learned per tensor and starts at :data:`OUTPUT_GAIN` (3), with ``h`` that much smaller. The
  product sets the start: under MIP ``gain * h`` is a tenth of order one, so the residual starts small next
  to ``theta0``; without MIP it is of order one, so the plain parametrization starts at a standard init's
  scale (a fair baseline, not one whose first forward pass explodes). The split sets the speed: under Adam
  each head weight moves by about the learning rate per step whatever its size, so a factor of 3 in front
  of heads 3 times smaller makes the predictions move 3 times faster from the same start
  (``recipes/bench/bench_hypernetize.py`` measures both parametrizations with it);
- ``theta0`` (MIP only) is learned too and starts from a standard init of the module (``reset_parameters``
  of each layer) or, with ``from_existing=True``, from the module's current (pretrained) values.

The module runs with the predicted tensors through ``torch.func.functional_call``, so nothing is swapped in
place; one condition serves the whole batch, and a batch of conditions (one per example) goes through
``torch.vmap``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_map

from hypernets.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
    typed_config,
)
from hypernets.conditional.bodies import BODIES, build_body, resolve_body
from hypernets.conditional.conditions import TaskEncoder, build_encoder, parse_condition
from hypernets.conditional.targets import Targets, detach_targets, existing_values, fresh_values, select_targets

CHECKPOINT_KIND = "hypernets.Hypernetized"
RESIDUAL_START = 0.1  # under MIP, gain * h starts at a tenth of order one: the residual starts small
OUTPUT_GAIN = 3.0  # every gain starts here, the heads that much smaller: same start, faster moves under Adam


@dataclass(frozen=True)
class HypernetizeConfig:
    """What is predicted, from what, and by how large a hypernetwork; saved as ``config.json``."""

    params: tuple[str, ...] = ("*",)  # glob patterns over named_parameters() names
    condition: str = "scalar"  # "scalar", "scalar:D" or "task:N" (see hypernets.conditional.conditions)
    mip: bool = True
    from_existing: bool = False  # theta0 from the module's current values instead of a fresh init (MIP only)
    body: str = "auto"  # "mlp", "chunked", or "auto" (resolved, and saved resolved, when the model is built)
    hidden: int = 64
    layers: int = 2
    chunk_size: int = 4096
    chunk_dim: int = 32
    embedding_dim: int = 32  # width of task embeddings

    def __post_init__(self) -> None:
        params = (self.params,) if isinstance(self.params, str) else self.params
        if not isinstance(params, list | tuple) or not params or not all(isinstance(p, str) for p in params):
            raise ValueError(f"params must be a glob pattern or a non-empty list of them, got {self.params!r}")
        object.__setattr__(self, "params", tuple(params))
        parse_condition(self.condition)
        if self.body not in BODIES:
            raise ValueError(f"body must be one of {', '.join(BODIES)}, got {self.body!r}")
        if self.from_existing and not self.mip:
            raise ValueError("from_existing=True needs mip=True: without MIP there is no theta0 to start from")
        for name in ("hidden", "layers", "chunk_size", "chunk_dim", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"HypernetizeConfig.{name} must be positive, got {getattr(self, name)}")


class Hypernetized(nn.Module):
    """A module whose selected parameters are predicted from a condition; the rest stay its own parameters.

    ``model(*args, condition=c, **kwargs)`` runs the module. ``c`` of a single condition's shape (a float for
    ``"scalar"``, an int for ``"task:N"``, a ``[D]`` tensor for ``"scalar:D"``) serves the whole batch. With
    one more leading dimension ``[B, ...]`` it is one condition per example: every tensor argument is then
    split along dim 0 into ``B`` batches of one, each run with its own parameters under ``torch.vmap``
    (modules that update buffers in place, such as batch norm in training mode, cannot be vmapped).
    """

    def __init__(self, module: nn.Module, config: HypernetizeConfig) -> None:
        super().__init__()
        self.targets = select_targets(module, config.params)
        sizes = self.targets.sizes
        self.config = config = replace(config, body=resolve_body(config.body, config.hidden, sum(sizes)))
        start = existing_values(module, self.targets) if config.from_existing else fresh_values(module, self.targets)
        detach_targets(module, self.targets)
        self.module = module
        self.encoder = build_encoder(config.condition, config.mip, config.embedding_dim)
        self.body = build_body(
            config.body,
            self.encoder.out_features,
            sizes,
            hidden=config.hidden,
            layers=config.layers,
            chunk_size=config.chunk_size,
            chunk_dim=config.chunk_dim,
            bias=not config.mip,  # under MIP theta0 is every tensor's offset
            head_std=(RESIDUAL_START if config.mip else 1.0) / OUTPUT_GAIN,
        )
        self.gain = nn.Parameter(torch.full((len(sizes),), OUTPUT_GAIN))
        self.register_buffer("scale", torch.stack([_scale(value) for value in start]))
        self.register_buffer("sizes", torch.tensor(sizes), persistent=False)  # values per tensor, for the factors
        if config.mip:
            self.theta0 = nn.Parameter(torch.cat([value.reshape(-1) for value in start]))

    def predict(self, condition: float | int | Tensor) -> dict[str, Tensor]:
        """The predicted tensors by name, in the module's exact shapes (``[B, *shape]`` for a batch)."""
        c, batched = self.encoder.prepare(condition, self.gain.device)
        predicted = self._predict(c)
        return predicted if batched else {name: value[0] for name, value in predicted.items()}

    def forward(self, *args: Any, condition: float | int | Tensor, **kwargs: Any) -> Any:
        c, batched = self.encoder.prepare(condition, self.gain.device)
        predicted = self._predict(c)
        if not batched:
            params = self.targets.with_aliases({name: value[0] for name, value in predicted.items()})
            return functional_call(self.module, params, args, kwargs)
        _check_batch(len(c), args, kwargs)
        dims = tree_map(lambda v: 0 if isinstance(v, Tensor) else None, (args, kwargs))
        return torch.vmap(self._run_one, in_dims=(0, *dims), randomness="different")(predicted, args, kwargs)

    def _predict(self, c: Tensor) -> dict[str, Tensor]:
        """``[B, *shape]`` tensors for a ``[B, ...]`` batch of checked conditions, all values in one flat pass."""
        deltas = self.body(self.encoder(c))  # [B, N]
        factors = torch.repeat_interleave(self.gain * self.scale, self.sizes, output_size=deltas.shape[1])
        flat = torch.addcmul(self.theta0, deltas, factors) if self.config.mip else deltas * factors
        values = flat.split(self.targets.sizes, dim=1)
        return {
            name: value.view(len(c), *shape)
            for name, shape, value in zip(self.targets.names, self.targets.shapes, values, strict=True)
        }

    def _run_one(self, params: dict[str, Tensor], args: tuple, kwargs: dict) -> Any:
        """The module on one example (as a batch of one) with that example's parameters: vmap's body."""
        args, kwargs = tree_map(lambda v: v[None] if isinstance(v, Tensor) else v, (args, kwargs))
        out = functional_call(self.module, self.targets.with_aliases(params), args, kwargs)
        return tree_map(lambda v: v[0] if isinstance(v, Tensor) else v, out)

    @property
    def task_embeddings(self) -> nn.Parameter:
        """The ``[num_tasks, dim]`` learned task embeddings of a ``"task:N"`` condition (continual learning
        freezes the rows of earlier tasks); a ``ValueError`` for other conditions."""
        if not isinstance(self.encoder, TaskEncoder):
            raise ValueError(f"condition {self.config.condition!r} has no task embeddings; use condition='task:N'")
        return self.encoder.embedding.weight

    def hypernet_parameters(self) -> list[nn.Parameter]:
        """The hypernetwork's own parameters (encoder, body, gains, theta0), not the module's remaining ones."""
        own = {id(p) for p in self.module.parameters()}
        return [p for p in self.parameters() if id(p) not in own]

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` (hypernetwork and the module's remaining state), each atomic."""
        config = {"kind": CHECKPOINT_KIND, **asdict(self.config), "targets": self.targets.shape_lists()}
        save_checkpoint(directory, config, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, module: nn.Module) -> Hypernetized:
        """Hypernetize ``module`` (built like the one that was saved) as the checkpoint says, then load its
        weights; a module that does not match raises a CheckpointError naming the tensors that differ."""
        directory = Path(directory)
        values, state = load_checkpoint(directory, CHECKPOINT_KIND)
        config = typed_config(HypernetizeConfig, values, directory / CONFIG_FILE, ignore=("kind", "targets"))
        _check_targets(values.get("targets"), select_targets(module, config.params), directory / CONFIG_FILE)
        model = cls(module, config)
        load_state_strict(model, state, directory / WEIGHTS_FILE)
        return model


def hypernetize(
    module: nn.Module, params: str | Sequence[str] = "*", condition: str = "scalar", **options: Any
) -> Hypernetized:
    """Make the parameters of ``module`` that match ``params`` (glob patterns) outputs of a hypernetwork
    conditioned on ``condition``; ``options`` are the other :class:`HypernetizeConfig` fields.

    The module is taken over, not copied: its selected parameters are removed from it.
    """
    return Hypernetized(module, HypernetizeConfig(params=params, condition=condition, **options))


def _scale(value: Tensor) -> Tensor:
    """A tensor's RMS; a tensor of zeros (a norm layer's bias) gets ``1/sqrt(n)``, the RMS of a unit vector."""
    rms = value.float().pow(2).mean().sqrt()
    return torch.where(rms > 0, rms, torch.tensor(1 / math.sqrt(value.numel()), device=value.device))


def _check_targets(saved: Any, targets: Targets, source: Path) -> None:
    """The tensors a checkpoint predicts (``{name: shape}`` in its config) are those its module selects."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{source}: 'targets' must map each predicted parameter to its shape, got {saved!r}")
    found = targets.shape_lists()
    problems = [f"{name} is not predicted by the checkpoint" for name in found if name not in saved]
    problems += [f"{name} is not in the module" for name in saved if name not in found]
    problems += [
        f"{name}: {saved[name]} in the checkpoint, {shape} in the module"
        for name, shape in found.items()
        if name in saved and saved[name] != shape
    ]
    if problems:
        raise CheckpointError(f"{source} was saved for other parameters than this module's: {'; '.join(problems)}")


def _check_batch(batch: int, args: tuple, kwargs: dict) -> None:
    """With ``B`` conditions every tensor argument must hold ``B`` examples along dim 0."""
    for name, value in [*((f"argument {i}", a) for i, a in enumerate(args)), *kwargs.items()]:
        if isinstance(value, Tensor) and (value.dim() == 0 or len(value) != batch):
            raise ValueError(
                f"with {batch} conditions (one per example), every tensor argument needs {batch} rows along "
                f"dim 0; {name} has shape {list(value.shape)}"
            )
