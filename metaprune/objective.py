"""The meta-training objective: task loss of the rewritten network plus a group lasso over its channels.

A prunable channel group is everything that must go when one channel goes: the weights into the
channel (a conv/linear output channel) and its bias, the batch norm scale and shift on it, and the
weights out of it (the next layer's input columns). Channels joined by a residual addition are one
group, as are the addends; in attention, a whole head is one group (its q, k and v rows and the output
projection's columns for it), as heads are what gets pruned there. On the neuron graph this is structure
alone: a group is a connected set of hidden nodes under identity, head and q-k pair edges, and its
parameters are those nodes' values and every weight edge that enters or leaves the set. Groups of
consecutive layers share the weights between them (a weight is an output of one channel and an input
of another), as in Torch-Pruning's groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from hypernets.graph import EDGE_TYPES, NODE_TYPES

from .metanet import PARAMETER_SLOTS

HIDDEN_NODE_TYPES = tuple(NODE_TYPES.index(t) for t in ("neuron", "norm", "sum", "scale", "head", "attention"))
_WEIGHT = EDGE_TYPES.index("weight")
_BINDING = tuple(EDGE_TYPES.index(t) for t in ("identity", "head", "qk_pair"))  # nodes that go together
EPS = 1e-12  # keeps the gradient of a group norm finite at zero
PENALTIES = ("group_lasso", "concentration")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Weights of the objective's terms."""

    task_weight: float = 1.0
    group_weight: float = 1.0  # lambda, on the penalty relative to the original network's
    relative: bool = True  # divide the penalty by the input network's, so every member counts alike
    # Batch norms normalize with the batch's own statistics: a pruned network's are re-estimated before
    # use, so the stale running statistics of the input network would charge the metanetwork for a shift
    # that recalibration removes (and compound it through a deep ResNet).
    batch_statistics: bool = True
    # "concentration": the sum of the group norms over the root of the sum of their squares, which only falls
    # when mass moves into fewer groups; "group_lasso": the sum alone, which also falls when a whole layer shrinks.
    penalty: str = "concentration"

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise ValueError(f"ObjectiveConfig.penalty must be one of {', '.join(PENALTIES)}, got {self.penalty!r}")


@dataclass(frozen=True)
class ChannelGroups:
    """Prunable channel groups of one neuron graph, as (member, group) pairs."""

    num_groups: int
    node_group: Tensor  # [N] group of each node, -1 outside every group
    edges: Tensor  # [M] weight edges into or out of a group (one between two groups appears for each)
    edge_group: Tensor  # [M] the group each of those belongs to

    @classmethod
    def of(cls, graph: Data) -> ChannelGroups:
        component = _bound_components(graph)
        hidden = torch.isin(graph.node_type, torch.tensor(HIDDEN_NODE_TYPES, device=graph.node_type.device))
        # A set touching an input, output or token cannot be removed: drop it.
        blocked = torch.zeros(graph.num_nodes, dtype=torch.bool, device=hidden.device)
        blocked.index_fill_(0, component[~hidden], True)
        keep = ~blocked[component]
        ids, node_group = torch.unique(component[keep], return_inverse=True)
        groups = torch.full_like(component, -1)
        groups[keep] = node_group
        weights = (graph.edge_type == _WEIGHT).nonzero().flatten()
        source, target = groups[graph.edge_index[:, weights]]
        source = source.masked_fill(source == target, -1)  # a weight inside one group counts once
        edges, edge_group = torch.cat([weights, weights]), torch.cat([source, target])
        inside = edge_group >= 0
        return cls(len(ids), groups, edges[inside], edge_group[inside])


def _bound_components(graph: Data) -> Tensor:
    """Smallest node id reachable through identity, head and q-k pair edges, per node: a label per connected set."""
    label = torch.arange(graph.num_nodes, device=graph.edge_index.device)
    binding = torch.isin(graph.edge_type, torch.tensor(_BINDING, device=graph.edge_type.device))
    src, dst = graph.edge_index[:, binding]
    while True:
        new = label.scatter_reduce(0, dst, label[src], "amin").scatter_reduce(0, src, label[dst], "amin")
        if torch.equal(new, label):
            return label
        label = new


def group_norms(graph: Data, groups: ChannelGroups) -> Tensor:
    """``[G]`` L2 norm of each group's parameters, read from the graph (differentiable)."""
    squares = graph.edge_attr.square().sum(dim=1)  # padding columns are zero
    total = torch.zeros(groups.num_groups, dtype=squares.dtype, device=squares.device)
    total = total.index_add(0, groups.edge_group, squares[groups.edges])
    members = groups.node_group >= 0
    node_squares = graph.x[members][:, list(PARAMETER_SLOTS)].square().sum(dim=1)
    total = total.index_add(0, groups.node_group[members], node_squares)
    return (total + EPS).sqrt()


def group_penalty(graph: Data, groups: ChannelGroups, kind: str = "group_lasso") -> Tensor:
    """The group lasso (the sum of the groups' L2 norms), or with ``kind="concentration"`` the same divided
    by the L2 norm of all the groups' parameters: a scale-free measure, between 1 and the root of the number
    of groups, that only the spread of mass across groups moves.

    Group-norm pruning ranks channels within each layer, so the scale of a layer does not change what it
    removes; under the group lasso a metanetwork also gains by shrinking whole layers, which is free for a
    layer followed by a batch norm and costs accuracy for one that is not."""
    norms = group_norms(graph, groups)
    if kind == "concentration":
        return norms.sum() / norms.square().sum().sqrt()
    if kind != "group_lasso":
        raise ValueError(f"unknown group penalty {kind!r}; choose one of {', '.join(PENALTIES)}")
    return norms.sum()


def objective_terms(
    model: nn.Module,
    state: dict[str, Tensor],
    transformed: Data,
    groups: ChannelGroups,
    batch: tuple[Tensor, Tensor],
    config: ObjectiveConfig,
    reference_penalty: Tensor | None = None,
) -> dict[str, Tensor]:
    """``{"loss", "task", "penalty", "accuracy"}`` of ``model`` run with ``state`` (the rewritten
    parameters) on ``batch``; with ``config.relative`` the penalty is divided by ``reference_penalty``."""
    images, labels = batch
    if config.batch_statistics:
        with _batch_statistics(model):  # running statistics update copies, never the member
            buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
            logits = torch.func.functional_call(model, {**state, **buffers}, (images,))
    else:
        logits = torch.func.functional_call(model, state, (images,))
    task = F.cross_entropy(logits, labels)
    penalty = group_penalty(transformed, groups, config.penalty)
    if config.relative:
        if reference_penalty is None:
            raise ValueError("ObjectiveConfig.relative needs the input network's penalty as reference_penalty")
        penalty = penalty / reference_penalty
    return {
        "loss": config.task_weight * task + config.group_weight * penalty,
        "task": task,
        "penalty": penalty,
        "accuracy": (logits.argmax(dim=1) == labels).float().mean(),
    }


@contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[None]:
    """Batch norms of ``model`` in training mode (batch statistics) for the block, the rest as it was."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training]
    for norm in norms:
        norm.train()
    try:
        yield
    finally:
        for norm in norms:
            norm.eval()
