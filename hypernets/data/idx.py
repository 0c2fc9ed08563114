"""Reader for the IDX format MNIST ships in (http://yann.lecun.com/exdb/mnist/), gzip-compressed or
raw. Every header field is checked so a damaged download fails loudly instead of yielding garbage."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
# IDX type code -> big-endian element type.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXFormatError(ValueError):
    """Raised when a file is not a well-formed IDX file; the message names the file."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or raw, detected from its first bytes) into a native-endian array."""
    path = Path(path)
    raw = _read_bytes(path)
    dtype, dims, offset = _parse_header(raw, path)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise IDXFormatError(
            f"{path}: header declares shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - offset}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).astype(dtype.newbyteorder("=")).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise IDXFormatError(f"{path}: damaged gzip stream ({err})") from err


def _parse_header(raw: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Magic is two zero bytes, a type code and the number of dims, then one big-endian uint32 per dim."""
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _DTYPES:
        raise IDXFormatError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise IDXFormatError(f"{path}: truncated IDX header ({len(raw)} bytes, need {offset})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return np.dtype(_DTYPES[raw[2]]), dims, offset
