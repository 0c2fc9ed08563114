"""Op graphs of sampled architectures, converted once per process: tracing takes a fraction of a
second per architecture, which would otherwise cost as much as a training step."""

from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torch_geometric.data import Data

from hypernets.graph import to_op_graph
from hypernets.zoo.families import Arch


@cache
def arch_graph(arch: Arch, max_distance: int) -> tuple[nn.Module, Data]:
    """The architecture's module on the ``meta`` device (run through ``functional_call`` with predicted
    parameters, so it never needs real ones) and its op graph. Families are grids of at most a few
    thousand settings, so the cache stays small."""
    with torch.random.fork_rng(devices=[]):  # conversion order differs between a run and its resume
        model = arch.build(device="meta")
        return model, to_op_graph(model, max_distance=max_distance)
