"""Checkpoints as a directory of ``config.json`` + ``model.safetensors``: no pickles, written atomically,
and checked on the way in: JSON that is JSON, settings of the declared types, finite tensors of the shapes
the settings imply (compared on the ``meta`` device, before anything is allocated)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hypernets.atomic import atomic_write

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, corrupt, or does not match the model it is loaded into."""


def save_checkpoint(directory: str | os.PathLike, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write both files to temporary names, then rename them: a crash never leaves a half-written file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS_FILE, state)
    atomic_write(directory / CONFIG_FILE, lambda path: Path(path).write_text(json_text(config)))
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
    config = read_json(config_path, f"{kind} config", CheckpointError)
    if not isinstance(config, dict) or config.get("kind") != kind:
        found = config.get("kind") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{config_path} describes a {found!r}, not a {kind!r}")
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {err}") from err
    check_finite_tensors(state, weights_path, CheckpointError)
    return config, state


def read_json(path: str | os.PathLike, what: str, error: type[Exception] = CheckpointError) -> Any:
    """The JSON in ``path``; a missing, unreadable, binary or malformed file raises ``error`` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"{path}: cannot read the {what}: {err.strerror or err}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not valid JSON for a {what}: {err}") from err


def json_text(value: Any) -> str:
    """``value`` as strict JSON (indented, newline-terminated): NaN and infinities, which Python would write
    as the non-JSON ``NaN``, become ``null``."""
    return json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def check_finite_tensors(
    tensors: dict[str, torch.Tensor], source: str | os.PathLike, error: type[Exception] = CheckpointError
) -> None:
    """Refuse NaN or infinite values, naming the first tensor that holds one."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).sum().item()
            raise error(f"{source}: tensor {name!r} holds {bad:,} NaN or infinite values")


Config = TypeVar("Config")


def typed_config(
    cls: type[Config],
    values: Any,
    source: str | os.PathLike,
    ignore: tuple[str, ...] = ("kind",),
    namespace: dict[str, Any] | None = None,
) -> Config:
    """The dataclass ``cls`` from JSON ``values``, each field of its declared type (a JSON ``"false"`` is not
    a bool, ``1.5`` is not an int, NaN is no float) and the class's own checks passed; else CheckpointError."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: expected a JSON object of settings, got {type(values).__name__}")
    hints = typing.get_type_hints(cls, localns=namespace)  # namespace: names imported only for type checkers
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known - set(ignore))
    if unknown:
        raise CheckpointError(f"{source}: unknown settings: {', '.join(unknown)}")
    settings = {}
    for name in known & set(values):
        expected, value = hints[name], values[name]
        if dataclasses.is_dataclass(expected):
            settings[name] = typed_config(expected, value, f"{source} ({name})", ignore=())
        elif not _is_a(value, expected):
            raise CheckpointError(f"{source}: setting {name!r} must be {_type_name(expected)}, got {value!r}")
        else:
            settings[name] = value
    try:
        return cls(**settings)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid settings: {err}") from err


def _is_a(value: Any, expected: Any) -> bool:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return any(_is_a(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if expected is str:
        return isinstance(value, str)
    return True  # containers are checked by the class itself


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(expected))
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
        expected, "null" if expected is type(None) else str(expected)
    )


def load_model(
    directory: str | os.PathLike, kind: str, settings_class: type[Config], build: Callable[[Config], torch.nn.Module]
) -> torch.nn.Module:
    """The model a checkpoint directory of ``kind`` holds, ``build(settings)`` with its weights loaded: the
    settings checked for type, the tensors for shape against a build on the ``meta`` device (settings that
    imply a 51 GB model fail here, not in the allocator), and only then the real build."""
    directory = Path(directory)
    config, state = load_checkpoint(directory, kind)
    settings = typed_config(settings_class, config, directory / CONFIG_FILE)
    with torch.device("meta"):
        _compare_state(build(settings), state, directory / WEIGHTS_FILE)
    model = build(settings)
    model.load_state_dict(state)
    return model


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``load_state_dict`` whose failure names the file and every missing, unexpected or misshapen tensor."""
    _compare_state(module, state, source)
    module.load_state_dict(state)


def _compare_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
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
