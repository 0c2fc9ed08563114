"""Graph encoder: constant-norm shape encoding, graphs of a batch kept apart, structure is seen."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from hypernets.graph import to_op_graph
from hypernets.nn import EncoderConfig, GraphEncoder, encode_shape


def test_mip_shape_encoding_has_constant_norm_and_plain_one_does_not() -> None:
    shapes = torch.tensor([[1, 1, 1, 1], [64, 3, 7, 7], [50257, 1280, 1, 1], [0, 0, 0, 0]])
    norms = encode_shape(shapes, mip=True, num_frequencies=8).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), (4 * 8) ** 0.5))
    plain = encode_shape(shapes, mip=False, num_frequencies=8).norm(dim=1)
    assert plain[2] > 5 * plain[0] and plain[3] == 0
    distinct = encode_shape(torch.tensor([[768, 768, 1, 1], [3072, 768, 1, 1]]), mip=True)
    assert not torch.allclose(distinct[0], distinct[1])


def _distances_from_width_96(**frequencies) -> torch.Tensor:
    widths = torch.linspace(96, 192, 25).round().long()
    ones = torch.ones_like(widths)
    codes = encode_shape(torch.stack([widths, widths, ones, ones], 1), mip=True, **frequencies)
    return (codes - codes[0]).norm(dim=1)


def test_default_shape_encoding_moves_away_steadily_as_a_width_grows() -> None:
    """Unseen widths must encode near the nearest seen one: the distance from width 96 grows with every
    step up to 192, so no frequency wraps around. With 8 frequencies the fastest turns 10 rad per
    doubling, and the distance goes up and down."""
    assert torch.all(_distances_from_width_96().diff() > 0)
    assert not torch.all(_distances_from_width_96(num_frequencies=8).diff() > 0)


def test_shape_encoding_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        encode_shape(torch.zeros(3, 2, dtype=torch.long), mip=True)


def _mlp(widths: list[int]) -> nn.Module:
    layers = [nn.Linear(a, b) for a, b in itertools.pairwise(widths)]
    return nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())][:-1])


@pytest.fixture
def encoder() -> GraphEncoder:
    torch.manual_seed(0)
    return GraphEncoder(EncoderConfig(hidden=32, layers=2, heads=4, max_distance=3)).eval()


def test_batched_graphs_do_not_attend_to_each_other(encoder: GraphEncoder) -> None:
    small, large = to_op_graph(_mlp([4, 8, 2]), (1, 4)), to_op_graph(_mlp([4, 16, 16, 16, 2]), (1, 4))
    alone = [encoder(small), encoder(large)]
    together = encoder(Batch.from_data_list([small, large]))
    assert together.shape == (small.num_nodes + large.num_nodes, 32)
    torch.testing.assert_close(together[: small.num_nodes], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together[small.num_nodes :], alone[1], rtol=1e-4, atol=1e-5)


def test_embeddings_depend_on_graph_structure_beyond_node_features(encoder: GraphEncoder) -> None:
    graph = to_op_graph(_mlp([4, 8, 8, 2]), (1, 4))
    rewired = graph.clone()
    rewired.spd = torch.ones_like(graph.spd)  # same nodes, every pair now adjacent
    assert not torch.allclose(encoder(graph), encoder(rewired), atol=1e-4)
    # the two hidden ReLUs share op and shape; only their position in the graph tells them apart
    relus = [i for i, name in enumerate(graph.names) if name in ("1", "3")]
    h = encoder(graph)
    assert not torch.allclose(h[relus[0]], h[relus[1]], atol=1e-4)


def test_heads_must_divide_hidden() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        EncoderConfig(hidden=30, heads=4)
