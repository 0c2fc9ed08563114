"""Predicted parameters written to disk as they are decoded, in files the target's own library loads.

A safetensors header holds every tensor's name, dtype, shape and byte range, and all of them are known from
the op graph before anything is decoded. So the header is written first, then each part of the model's
parameters as soon as the hypernetwork has decoded it: peak memory is the hypernetwork plus one part, never
the model. Two layouts:

- ``"safetensors"``: one file with every parameter and persistent buffer; tied parameters are stored once and
  named in the metadata, and :func:`load_predicted` restores them (``load_state_dict(strict=True)`` of the
  file alone misses the tied names, as with Hugging Face's own files). timm models load it with
  ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=N), ...)``
  (``num_classes`` as the model was built, or timm drops the classifier it thinks is ImageNet's).
- ``"hf"``: a ``save_pretrained``-style directory (``config.json`` and ``model.safetensors``, sharded with an
  index past ``max_shard_size``) that ``AutoModel*.from_pretrained`` loads with no missing or unexpected keys.
"""

from __future__ import annotations

import json
import math
import os
import queue
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch
from safetensors import safe_open
from torch import Tensor, nn

from hypernets.atomic import atomic_write, write_directory
from hypernets.graph.inputs import Inputs
from hypernets.nn.plan import TargetPlan, TensorEntry

if TYPE_CHECKING:
    from hypernets.logah import LoGAH

FORMATS = ("safetensors", "hf")
PART_VALUES = 2**24  # values decoded at a time: 64 MB in fp32
DEFAULT_MAX_SHARD_BYTES = 50 * 10**9  # transformers' save_pretrained default ("50GB")
TIED_KEY = "hypernets.tied"  # metadata: JSON {alias: stored name} of tied parameters
PREDICTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_DTYPE_CODES = {
    **dict(zip(PREDICTED_DTYPES, ("F32", "BF16", "F16", "F64"), strict=True)),
    **{torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8"},
    torch.bool: "BOOL",
}
_HEADER_ALIGN = 8  # safetensors pads its JSON header to a multiple of 8 bytes


@dataclass(frozen=True)
class Written:
    """What :func:`save_prediction` wrote: tensors, values, bytes, seconds and files."""

    tensors: int
    values: int
    bytes: int
    seconds: float
    files: tuple[Path, ...]

    def summary(self, what: str) -> str:
        """One line for the user: what, how much, how long, how fast."""
        rate = self.bytes / max(self.seconds, 1e-9) / 1e9
        return (
            f"predicted {self.tensors} tensors ({self.values:,} values, {self.bytes / 1e9:.2f} GB) of {what} "
            f"in {self.seconds:.1f} s ({rate:.2f} GB/s)"
        )


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def save_prediction(
    hypernet: LoGAH,
    model: nn.Module,
    out: str | os.PathLike,
    inputs: Inputs = None,
    dtype: torch.dtype = torch.float32,
    format: str = "safetensors",
    max_shard_size: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
    metadata: dict[str, str] | None = None,
) -> Written:
    """Predict every parameter of ``model`` (a ``meta`` model is fine: it is never materialized) into ``out``,
    streamed part by part and published atomically; ``format`` is ``"safetensors"`` (a file) or ``"hf"`` (a
    Hugging Face directory). Raises ``ValueError`` for a non-finite prediction, leaving nothing behind."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if dtype not in PREDICTED_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, PREDICTED_DTYPES))}, got {dtype}")
    if format == "hf" and not hasattr(model, "save_pretrained"):
        raise ValueError(f"format 'hf' needs a Hugging Face model; {type(model).__name__} is not one")
    start = time.perf_counter()
    graphs = hypernet.op_graphs([model], [inputs])
    # the tiled baseline repeats a tile across rows, which row blocks would not line up with
    split_rows = hypernet.config.decoder == "lowrank"
    plans = TargetPlan.for_graphs(graphs, hypernet.config.max_ck, PART_VALUES, split_rows=split_rows)
    predicted = _whole_tensors([e for plan in plans for e in plan.entries], dtype)
    buffers = [] if format == "hf" else _buffers(model)
    tensors = predicted + [_Tensor(name, tuple(b.shape), b.dtype) for name, b in buffers]
    stream = _prefetched(_stream(hypernet, graphs, plans, dtype, buffers))
    meta = {"format": "pt", **(metadata or {})}
    if format == "safetensors":
        meta[TIED_KEY] = json.dumps(tied_parameters(model))
    total = sum(t.nbytes for t in tensors)
    with _bar(total, progress) as bar:
        if format == "safetensors":
            atomic_write(out, lambda path: _write_file(path, tensors, stream, meta, bar))
            files: tuple[Path, ...] = (Path(out),)
        else:
            shards = _shards(tensors, max_shard_size)
            write_directory(out, lambda staging: _write_hf(staging, model, shards, stream, meta, bar), overwrite=True)
            files = tuple(Path(out) / name for name, _ in shards)
    values = sum(math.prod(t.shape) for t in predicted)
    return Written(len(predicted), values, total, time.perf_counter() - start, files)


def load_predicted(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a file :func:`save_prediction` wrote into ``model``, tied parameters included; a model on ``meta``
    is materialized by the load (``assign``) and its tied parameters tied again."""
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(path, framework="pt") as handle:
        tied = json.loads((handle.metadata() or {}).get(TIED_KEY, "{}"))
    state = load_file(path)
    state.update({alias: state[name] for alias, name in tied.items() if name in state})
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(state, strict=strict, assign=on_meta)
    for alias, name in tied.items() if on_meta else ():
        owner, _, attribute = alias.rpartition(".")
        setattr(model.get_submodule(owner), attribute, model.get_parameter(name))
    return model


def _whole_tensors(entries: Sequence[TensorEntry], dtype: torch.dtype) -> list[_Tensor]:
    """The tensors the header lists, in decoding order: the row blocks of a matrix joined into one."""
    tensors: list[_Tensor] = []
    for e in entries:
        if e.row_start:  # the next rows of the matrix before it
            above = tensors.pop()
            tensors.append(_Tensor(e.name, (above.shape[0] + e.rows, e.cols), dtype))
        else:
            tensors.append(_Tensor(e.name, e.shape, dtype))
    return tensors


def _stream(
    hypernet: LoGAH, graphs, plans: list[TargetPlan], dtype: torch.dtype, buffers: Sequence[tuple[str, Tensor]]
) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` in header order: the predicted parts as decoded (a large matrix as consecutive row
    blocks under its name), then the persistent buffers."""
    with torch.no_grad():
        for (part,) in hypernet.predictions(graphs, dtype, plans=plans):
            for name, tensor in part.items():
                if not _all_finite(tensor):
                    raise ValueError(f"the prediction of {name} in {dtype} holds NaN or infinite values (try float32)")
                yield name, tensor
    yield from buffers


def _all_finite(tensor: Tensor) -> bool:
    """Whether every value is finite. A NaN or an infinity makes the sum NaN or infinite, so one reduction
    (no bool copy of the tensor) answers; only a finite tensor whose sum overflows needs the full check."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _prefetched(items: Iterator[tuple[str, Tensor]], ahead: int = 2) -> Iterator[tuple[str, Tensor]]:
    """``items`` produced on a background thread while the caller writes the previous ones: decoding and
    disk writes overlap (both release the GIL). At most ``ahead`` tensors wait; an error is re-raised here."""
    slots: queue.Queue = queue.Queue(maxsize=ahead)
    done = object()
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put ``item`` in a slot unless the consumer has stopped; whether it went in."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(done)
        except BaseException as err:  # handed to the consumer, which raises it
            offer(err)

    producer = threading.Thread(target=produce, name="hypernets-decode", daemon=True)
    producer.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


def _buffers(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Persistent buffers to store beside the parameters, so the file loads strictly: their values, or on
    ``meta`` the values a reset gives (batch-norm statistics); any other ``meta`` buffer has none to give."""
    names = set(model.state_dict()) - {n for n, _ in model.named_parameters(remove_duplicate=False)}
    buffers = [(n, b) for n, b in model.named_buffers() if n in names]
    missing = [n for n, b in buffers if b.is_meta and not _resettable(n, model)]
    if missing:
        raise ValueError(
            f"{type(model).__name__} has buffers ({', '.join(missing[:5])}) with no values on the meta device; "
            "build it on a real device instead"
        )
    return [(n, _reset_value(n, b) if b.is_meta else b.detach().cpu()) for n, b in buffers]


def _resettable(name: str, model: nn.Module) -> bool:
    owner = model.get_submodule(name.rpartition(".")[0])
    return hasattr(owner, "reset_running_stats")


def _reset_value(name: str, buffer: Tensor) -> Tensor:
    """What ``reset_running_stats`` leaves: variances 1, means and counts 0."""
    fill = 1 if name.endswith("running_var") else 0
    return torch.full(buffer.shape, fill, dtype=buffer.dtype)


def tied_parameters(model: nn.Module) -> dict[str, str]:
    """``{alias: first name}`` of parameters reachable under more than one name."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def _header(tensors: Sequence[_Tensor], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and the JSON header, padded with spaces to a multiple of 8 bytes."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        span = [offset, offset + t.nbytes]
        header[t.name] = {"dtype": _DTYPE_CODES[t.dtype], "shape": list(t.shape), "data_offsets": span}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text


def _write_file(path: str | os.PathLike, tensors: Sequence[_Tensor], stream, metadata: dict[str, str], bar) -> None:
    with open(path, "wb") as file:
        file.write(_header(tensors, metadata))
        for expected in tensors:
            written = 0  # a large matrix comes as consecutive row blocks
            while True:
                name, tensor = next(stream)
                if (name, tuple(tensor.shape[1:]), tensor.dtype) != (expected.name, expected.shape[1:], expected.dtype):
                    raise RuntimeError(f"decoded {name} {tuple(tensor.shape)} where the header has {expected}")
                _write_tensor(file, tensor)
                nbytes = tensor.numel() * tensor.element_size()
                written += nbytes
                bar.update(nbytes)
                if written >= expected.nbytes:
                    break
            if written != expected.nbytes:
                raise RuntimeError(f"decoded {written} bytes of {expected.name} where the header has {expected}")


def _write_tensor(file: BinaryIO, tensor: Tensor) -> None:
    """The tensor's bytes, little-endian, without a copy when it is contiguous on the CPU."""
    file.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _shards(tensors: Sequence[_Tensor], max_bytes: int) -> list[tuple[str, list[_Tensor]]]:
    """Tensors in order, cut into shards of at most ``max_bytes`` (a larger tensor gets one of its own), named
    as ``save_pretrained`` names them."""
    groups: list[list[_Tensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return [("model.safetensors", groups[0])]
    return [(f"model-{i:05d}-of-{len(groups):05d}.safetensors", g) for i, g in enumerate(groups, start=1)]


def _write_hf(staging: Path, model: nn.Module, shards, stream, metadata: dict[str, str], bar) -> None:
    model.config.save_pretrained(staging)
    for name, tensors in shards:
        _write_file(staging / name, tensors, stream, metadata, bar)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for _, ts in shards for t in ts)},
            "weight_map": {t.name: name for name, ts in shards for t in ts},
        }
        (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="decoding and writing", disable=not enabled)
