"""Workarounds for Torch-Pruning 1.6's dependency graph, each for a model family it misreads.

- ``refresh_split_offsets``: its ``SplitPruner`` updates a split's sizes but stores the new offsets on itself, not
  on the split, so the next step of progressive pruning would cut chunks at the dense offsets (fused gated MLPs).
- ``map_chunks``: it turns off the index mapping of every split downstream of a 3-d parameter it does not know (a
  ViT's ``pos_embed``), meant for the class token's concatenation; a fused linear's split is on its features.
- ``quiet_unwrapped_parameters``: it warns, on every graph it builds, about each parameter no module of a type it
  knows owns (a ViT's ``cls_token`` and ``pos_embed``), telling the caller to pass ``unwrapped_parameters``; a
  metaprune user has no such option, and a model that such a parameter breaks is caught by the pruned model's
  checks, so the warning is kept out of their logs.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch_pruning as tp
from torch import nn

__all__ = ["map_chunks", "quiet_unwrapped_parameters", "refresh_split_offsets"]


def refresh_split_offsets(graph: tp.DependencyGraph) -> None:
    """Move the offsets of every split in ``graph`` to its pruned sizes."""
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.SPLIT and node.module.split_sizes is not None:
            node.module.offsets = [0, *itertools.accumulate(node.module.split_sizes)]


def map_chunks(graph: tp.DependencyGraph, chunked: dict[nn.Module, int]) -> None:
    """Turn back on the index mapping of the splits of the fused linears in ``chunked``."""
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.SPLIT and any(source.module in chunked for source in node.inputs):
            node.enable_index_mapping = True


@contextmanager
def quiet_unwrapped_parameters() -> Iterator[None]:
    """Within, Torch-Pruning's warning about parameters outside the modules it knows is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        yield
