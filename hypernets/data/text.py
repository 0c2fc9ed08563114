"""Byte-level text for next-token prediction that works offline: by default Python's own reference
documentation (``pydoc_data.topics``, ~465k characters of English that ship with CPython)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hypernets.data.base import split_slice

VOCAB_SIZE = 256  # one token per byte value
EVAL_FRACTION = 0.1
_SEPARATOR = "\n\n"


def load_text_corpus(source: str | os.PathLike | None = None, text_column: str = "text") -> str:
    """The text of ``source``, deterministically joined.

    ``None``: every ``pydoc_data.topics`` entry in sorted key order (fixed for a given Python version).
    A file: its UTF-8 text. A directory: all ``*.txt`` files below it in sorted path order, or, when it
    is a Hugging Face dataset saved with ``save_to_disk``, its ``text_column`` (needs ``datasets``)."""
    if source is None:
        from pydoc_data.topics import topics

        return _SEPARATOR.join(topics[key] for key in sorted(topics))
    path = Path(source)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if not path.is_dir():
        raise FileNotFoundError(f"text source {path} does not exist")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_hf_dataset(path, text_column)
    files = sorted(path.rglob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no .txt files under {path}")
    return _SEPARATOR.join(file.read_text(encoding="utf-8") for file in files)


def _read_hf_dataset(path: Path, column: str) -> str:
    """Optional: ``datasets`` is deliberately not a dependency, so it is imported only here."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"{path} is a Hugging Face dataset saved with save_to_disk; reading it needs `pip install datasets`"
        ) from err
    loaded = datasets.load_from_disk(str(path))
    is_dict = isinstance(loaded, datasets.DatasetDict)
    parts = [loaded[name] for name in sorted(loaded)] if is_dict else [loaded]
    return _SEPARATOR.join(text for part in parts for text in part[column])


def encode_bytes(text: str) -> torch.Tensor:
    """UTF-8 bytes as int64 token ids in [0, 256): no vocabulary to train, ship or get out of sync."""
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))


def decode_bytes(tokens: torch.Tensor) -> str:
    """Inverse of :func:`encode_bytes`; invalid UTF-8 (e.g. a window that cuts a character) becomes U+FFFD."""
    return bytes(tokens.tolist()).decode("utf-8", errors="replace")


class TokenStream:
    """One long token sequence with a fixed split (the trailing ``eval_fraction`` is eval) that
    serves random windows for next-token prediction."""

    vocab_size = VOCAB_SIZE

    def __init__(self, tokens: torch.Tensor, eval_fraction: float = EVAL_FRACTION) -> None:
        self.tokens = tokens
        self.eval_fraction = eval_fraction

    @classmethod
    def from_text(cls, text: str, eval_fraction: float = EVAL_FRACTION) -> TokenStream:
        return cls(encode_bytes(text), eval_fraction)

    def split(self, split: str) -> torch.Tensor:
        """The tokens of ``"train"``, ``"eval"`` or ``"all"``."""
        return self.tokens[split_slice(len(self.tokens), split, self.eval_fraction)]

    def batch(
        self, batch_size: int, block_size: int, generator: torch.Generator | None = None, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` int64 ``[batch_size, block_size]`` windows at random offsets, ``y`` being ``x``
        shifted one token ahead. Windows never cross the train/eval boundary."""
        data = self.split(split)
        if len(data) <= block_size:
            raise ValueError(f"the {split} split has {len(data)} tokens, too few for block_size={block_size}")
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        windows = data[starts[:, None] + torch.arange(block_size + 1)]
        return windows[:, :-1], windows[:, 1:]
