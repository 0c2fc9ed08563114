"""Resumable training state: hypernetwork, optimizer, step and every random generator, as safetensors
and JSON (no pickles). A checkpoint is a directory ``checkpoint-STEP`` that ``latest`` names; ``latest``
is replaced atomically only once the directory is complete, so a run killed mid-save resumes from
the previous checkpoint."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from hypernets.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint, save_checkpoint, save_tensors

KIND = "hypernets.train"
LATEST = "latest"


def save_state(
    out: Path,
    step: int,
    config: dict[str, Any],
    hnet: nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
) -> None:
    """Every rank writes its random states; then rank 0 writes the shared state and publishes it."""
    directory = out / f"checkpoint-{step}"
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(_rng_file(directory, rank), _rng_states(generators))
    barrier()
    if rank == 0:
        optim = optimizer.state_dict()
        tensors = {f"hnet.{k}": v for k, v in hnet.state_dict().items()}
        tensors |= {f"optim.{i}.{k}": v for i, s in optim["state"].items() for k, v in s.items()}
        meta = {"kind": KIND, "step": step, "world_size": world_size, "train": config}
        save_checkpoint(directory, {**meta, "param_groups": optim["param_groups"]}, tensors)
        previous = latest_checkpoint(out)
        temporary = out / f".{LATEST}.tmp"
        temporary.write_text(directory.name)
        os.replace(temporary, out / LATEST)
        if previous is not None and previous != directory:
            shutil.rmtree(previous, ignore_errors=True)
    barrier()


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint ``out/latest`` names, if there is one; a pointer that names no checkpoint is an error."""
    pointer = out / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        name = ""
    if not name.startswith("checkpoint-") or "/" in name or not (out / name).is_dir():
        raise CheckpointError(f"{pointer} names no checkpoint directory of {out}; remove it to start the run afresh")
    return out / name


def load_state(
    directory: Path,
    hnet: nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    rank: int,
    world_size: int,
) -> tuple[int, dict[str, Any]]:
    """Restore what :func:`save_state` wrote; returns the step and the run's saved settings."""
    meta, tensors = load_checkpoint(directory, KIND)
    _check_meta(meta, directory, rank)
    if meta["world_size"] != world_size:
        raise CheckpointError(
            f"{directory} was written by {meta['world_size']} processes; resume it with as many (got {world_size})"
        )
    hnet.load_state_dict({k.removeprefix("hnet."): v for k, v in tensors.items() if k.startswith("hnet.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            index, name = key.removeprefix("optim.").split(".", 1)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    _set_rng_states(load_file(_rng_file(directory, rank)), generators)
    return meta["step"], meta["train"]


def _check_meta(meta: dict[str, Any], directory: Path, rank: int) -> None:
    """The fields :func:`save_state` writes, each of its type: a hand-edited or foreign file is named."""
    from hypernets.train.config import TrainConfig

    source = directory / CONFIG_FILE
    for name, kind in (("step", int), ("world_size", int), ("train", dict), ("param_groups", list)):
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise CheckpointError(f"{source}: {name!r} is missing or not a {kind.__name__}; not a training checkpoint")
    TrainConfig.from_dict(meta["train"], f"{source} (train)")
    rng = _rng_file(directory, rank)
    if not rng.is_file():
        raise CheckpointError(f"{rng} is missing: the checkpoint is incomplete")


def _rng_file(directory: Path, rank: int) -> Path:
    return directory / f"rng-rank{rank}.safetensors"


def _rng_states(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states | {name: g.get_state() for name, g in generators.items()}


def _set_rng_states(states: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    for name, generator in generators.items():
        generator.set_state(states[name])
