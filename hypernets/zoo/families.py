"""Seeded samplers of target architectures, in the spirit of ViTs-1K and GPTs-1K.

A family is a grid of architecture settings with a training space and a held-out space. About one in
ten in-range settings is reserved (by a hash of its JSON, the same on every machine) and never sampled
for training; the held-out space adds deeper and wider settings than any training one. So every
held-out architecture is one the hypernetwork has never seen.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

RESERVED_ONE_IN = 10  # one in-range setting in ten is held out


class Arch(Protocol):
    """A frozen dataclass describing one target network."""

    family: str

    @property
    def depth(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def name(self) -> str: ...

    def build(self, device: str | torch.device = "cpu") -> nn.Module: ...


@dataclass(frozen=True)
class Family:
    """A named grid of architectures: ``train`` and ``heldout`` map each field to its choices."""

    name: str
    arch: type
    train: Mapping[str, Sequence[Any]]
    heldout: Mapping[str, Sequence[Any]]
    valid: Callable[[Any], bool] = lambda arch: True

    def is_reserved(self, arch: Arch) -> bool:
        """In-range settings kept out of training: a stable hash, so train and held-out never overlap."""
        return zlib.crc32(arch_to_json(arch).encode()) % RESERVED_ONE_IN == 0

    def in_train_space(self, arch: Arch) -> bool:
        return all(getattr(arch, k) in v for k, v in self.train.items()) and not self.is_reserved(arch)

    def grid(self, space: Mapping[str, Sequence[Any]]) -> list[Arch]:
        keys = list(space)
        archs = (self.arch(**dict(zip(keys, values, strict=True))) for values in itertools.product(*space.values()))
        return [a for a in archs if self.valid(a)]

    def heldout_archs(self, n: int, seed: int = 0) -> list[Arch]:
        """``n`` held-out architectures, taken in turn from four groups (reserved in-range, deeper, wider,
        deeper and wider) so that even a few cover every way of being unseen."""
        train_depth = max(a.depth for a in self.grid(self.train))
        train_width = max(a.width for a in self.grid(self.train))
        groups: dict[tuple[bool, bool], list[Arch]] = {}
        for arch in self.grid(self.heldout):
            if not self.in_train_space(arch):
                groups.setdefault((arch.depth > train_depth, arch.width > train_width), []).append(arch)
        generator = torch.Generator().manual_seed(seed)
        shuffled = [[g[i] for i in torch.randperm(len(g), generator=generator)] for _, g in sorted(groups.items())]
        ordered = [a for column in itertools.zip_longest(*shuffled) for a in column if a is not None]
        if n > len(ordered):
            raise ValueError(f"the {self.name} family has {len(ordered)} held-out architectures, asked for {n}")
        return ordered[:n]


class ArchSampler:
    """Draws training architectures of a family from its own generator, so that its state can be saved
    and restored for an exact resume, and each data-parallel rank can draw different ones."""

    def __init__(self, family: Family, seed: int = 0) -> None:
        self.family = family
        self.generator = torch.Generator().manual_seed(seed)
        self.choices = [a for a in family.grid(family.train) if family.in_train_space(a)]

    def __len__(self) -> int:
        return len(self.choices)

    def sample(self, n: int) -> list[Arch]:
        """``n`` architectures drawn uniformly, with replacement, from the training space."""
        return [self.choices[i] for i in torch.randint(len(self.choices), (n,), generator=self.generator)]


def arch_to_json(arch: Arch) -> str:
    return json.dumps({"family": arch.family, **dataclasses.asdict(arch)}, sort_keys=True)


def arch_from_json(text: str | Mapping[str, Any]) -> Arch:
    """The architecture :func:`arch_to_json` wrote (a JSON string or the decoded mapping)."""
    fields = dict(json.loads(text) if isinstance(text, str) else text)
    return get_family(fields.pop("family", None)).arch(**fields)


def get_family(name: str) -> Family:
    """The family called ``name`` (``"vit"``, ``"gpt2"`` or ``"gpt2-wide"``)."""
    families = all_families()
    if name not in families:
        raise ValueError(f"unknown architecture family {name!r}; choose one of {', '.join(families)}")
    return families[name]


def all_families() -> dict[str, Family]:
    from .gpt2 import GPT2_FAMILY, GPT2_WIDE_FAMILY  # imported here: they import this module
    from .vit import VIT_FAMILY

    return {f.name: f for f in (VIT_FAMILY, GPT2_FAMILY, GPT2_WIDE_FAMILY)}
