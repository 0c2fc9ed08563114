"""Checkpoints as a directory of ``config.json`` + ``model.safetensors``: no pickles, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, corrupt, or does not match the model it is loaded into."""


def save_checkpoint(directory: str | os.PathLike, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write both files to temporary names, then rename them: a crash never leaves a half-written file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS_FILE, state)
    atomic_write(directory / CONFIG_FILE, lambda path: Path(path).write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """One safetensors file, written atomically; tensors are copied to contiguous CPU memory first."""
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(Path(path), lambda temporary: save_file(plain, temporary, metadata=metadata))


def load_checkpoint(directory: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate a checkpoint written by :func:`save_checkpoint` for a model of ``kind``."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: a {kind} checkpoint is a directory with {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("kind") != kind:
        found = config.get("kind") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{config_path} describes a {found!r}, not a {kind!r}")
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {err}") from err
    return config, state


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``load_state_dict`` whose failure names the file and every missing, unexpected or misshapen tensor."""
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} in file, {tuple(v.shape)} in model"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"{source} does not match the model its config describes: {shown}")
    module.load_state_dict(state)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(temporary)`` on a temporary file beside ``path``, then rename it to ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
