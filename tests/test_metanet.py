"""Metanetwork: permutation equivariance, a fresh one is nearly the identity, gradients, checkpoints, and
kernels of any width (resampled to ``max_width`` and back; graphs that fit are rewritten as before)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from hypernets import zoo
from hypernets.graph import EDGE_TYPES, NODE_SLOTS, to_neuron_graph
from metaprune.metanet import GraphLayout, Metanet, MetanetConfig, read_edges, transformed_state

CONFIG = MetanetConfig(node_dim=16, edge_dim=16, layers=2)
MNIST = (2, 1, 28, 28)


def _bn_cnn() -> nn.Module:
    return zoo.vgg((4, "M", 6), in_channels=1)


def _randomize_norms(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    return model.eval()


def _wide_stem() -> nn.Module:
    """A 7x7 stem (49 values an edge, resampled) before a 3x3 conv (9 values, read as they are)."""
    return nn.Sequential(nn.Conv2d(1, 4, 7, padding=3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))


def _bn(prefix: str) -> list[tuple[str, int]]:
    return [(f"{prefix}.{key}", 0) for key in ("weight", "bias", "running_mean", "running_var")]


# model, input shape, hidden width, and the (tensor, dim) pairs one hidden permutation moves.
SYMMETRIES = {
    "mlp": (lambda: zoo.mlp(20, (7, 5)), (2, 20), 7, [("1.weight", 0), ("1.bias", 0), ("3.weight", 1)]),
    "bn_cnn": (_bn_cnn, MNIST, 6, [("4.weight", 0), *_bn("5"), ("9.weight", 1)]),
    # The first stage's channels: stem, first block's conv2, the residual sum, and both readers of it.
    "resnet_residual": (
        lambda: zoo.cifar_resnet(8, in_channels=1, width=3),
        MNIST,
        3,
        [
            ("conv1.weight", 0), *_bn("bn1"), ("layer1.0.conv1.weight", 1), ("layer1.0.conv2.weight", 0),
            *_bn("layer1.0.bn2"), ("layer2.0.conv1.weight", 1), ("layer2.0.shortcut.0.weight", 1),
        ],
    ),
    "wide_stem": (_wide_stem, (2, 1, 12, 12), 4, [("0.weight", 0), ("0.bias", 0), *_bn("1"), ("3.weight", 1)]),
}  # fmt: skip


def _permute(state: dict[str, torch.Tensor], moves: list[tuple[str, int]], perm: torch.Tensor) -> dict:
    state = dict(state)
    for name, dim in moves:
        state[name] = state[name].index_select(dim, perm)
    return state


@pytest.mark.parametrize("name", SYMMETRIES)
def test_permuting_hidden_neurons_permutes_the_output(name: str) -> None:
    torch.manual_seed(0)
    build, inputs, width, moves = SYMMETRIES[name]
    model = _randomize_norms(build())
    perm = torch.randperm(width)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(_permute(model.state_dict(), moves, perm))
    x = torch.randn(inputs)
    torch.testing.assert_close(model(x), permuted(x))  # a true symmetry of the network
    metanet = Metanet(CONFIG)
    with torch.no_grad():
        metanet.alpha.fill_(1.0)  # full-size deltas, so any asymmetry would show
        out = _permute(metanet.transform(model, inputs), moves, perm)
        out_permuted = metanet.transform(permuted, inputs)
    original = model.state_dict()
    for key, value in out_permuted.items():
        torch.testing.assert_close(value, out[key], atol=1e-5, rtol=1e-4, msg=key)
    changed = [k for k, v in out.items() if not torch.allclose(v, _permute(original, moves, perm)[k], atol=1e-3)]
    assert any("weight" in k for k in changed)  # the rewrite is not trivial


@pytest.mark.parametrize("name", SYMMETRIES)
def test_fresh_metanet_is_nearly_identity(name: str) -> None:
    torch.manual_seed(0)
    build, inputs, _, _ = SYMMETRIES[name]
    model = _randomize_norms(build())
    graph = to_neuron_graph(model, inputs)
    with torch.no_grad():
        out = Metanet(CONFIG)(graph)
        state = transformed_state(Metanet(CONFIG), graph)
    assert out.edge_index is graph.edge_index and out.placements is graph.placements  # same structure
    layout = GraphLayout.of(graph)
    relative = (out.edge_attr - graph.edge_attr).abs() / layout.edge_scale
    assert 0 < relative.max() < 1e-2
    assert torch.equal(out.edge_attr[~layout.edge_mask], graph.edge_attr[~layout.edge_mask])  # padding, identity
    statistics = [NODE_SLOTS.index("running_mean"), NODE_SLOTS.index("running_var")]
    assert torch.equal(out.x[:, statistics], graph.x[:, statistics])
    assert torch.equal(out.x[~layout.node_mask], graph.x[~layout.node_mask])
    x = torch.randn(inputs)
    expected = model(x)
    got = torch.func.functional_call(model, state, (x,))
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()


def test_only_weight_edges_and_true_kernel_widths_are_written() -> None:
    graph = to_neuron_graph(zoo.cifar_resnet(8, in_channels=1, width=2), MNIST)
    mask = GraphLayout.of(graph).edge_mask
    weights = graph.edge_type == EDGE_TYPES.index("weight")
    assert not mask[~weights].any()
    assert set(mask[weights].sum(1).tolist()) == {1, 9}  # 1x1 shortcuts and the fc, 3x3 convs


def test_gradients_reach_every_metanet_parameter_through_functional_call() -> None:
    torch.manual_seed(0)
    model = _randomize_norms(zoo.cifar_resnet(8, in_channels=1, width=2))
    metanet = Metanet(CONFIG)
    state = metanet.transform(model, MNIST)
    loss = torch.func.functional_call(model, state, (torch.randn(MNIST),)).square().mean()
    loss.backward()
    silent = [name for name, p in metanet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    metanet = Metanet(CONFIG)
    metanet.save_pretrained(tmp_path)
    restored = Metanet.from_pretrained(tmp_path)
    assert restored.config == CONFIG
    graph = to_neuron_graph(_bn_cnn(), MNIST)
    with torch.no_grad():
        assert torch.equal(metanet(graph).edge_attr, restored(graph).edge_attr)


def test_rewrite_in_place_loads_exactly_what_transform_returns() -> None:
    from hypernets.zoo import small_cnn

    torch.manual_seed(0)
    model = small_cnn(channels=(4, 8)).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    metanet = Metanet(residual_scale=0.5)
    expected = {k: v.detach().clone() for k, v in metanet.transform(model, (1, 1, 28, 28)).items()}
    assert metanet.rewrite_(model, (1, 1, 28, 28)) is model
    state = model.state_dict()
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    assert not torch.equal(state["0.weight"], original["0.weight"])


def test_a_partial_rewrite_lies_on_the_line_from_the_input_to_the_full_rewrite() -> None:
    from hypernets.zoo import small_cnn

    torch.manual_seed(0)
    model = small_cnn(channels=(4, 8)).eval()
    metanet = Metanet(residual_scale=0.5)
    full = {k: v.detach().clone() for k, v in metanet.transform(model, MNIST).items()}
    for strength in (0.0, 0.25, 1.0):
        copy = small_cnn(channels=(4, 8)).eval()
        copy.load_state_dict(model.state_dict())
        state = metanet.rewrite_(copy, MNIST, strength=strength).state_dict()
        for name, value in full.items():
            expected = model.state_dict()[name] + strength * (value - model.state_dict()[name])
            assert torch.allclose(state[name], expected, atol=1e-6), (strength, name)
        if strength == 0.0:
            assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="rewrite strength must be in"):
        metanet.rewrite_(model, MNIST, strength=1.5)


# -- kernels of any width ---------------------------------------------------------------------------
def _forward_before_resampling(metanet: Metanet, graph) -> tuple[torch.Tensor, torch.Tensor]:
    """``Metanet.forward`` as it was before edges were resampled (it refused edges wider than max_width)."""
    layout = GraphLayout.of(graph)
    width, max_width = graph.edge_attr.shape[1], metanet.config.max_width
    assert width <= max_width
    x = graph.x / layout.node_scale
    attr = nn.functional.pad(graph.edge_attr / layout.edge_scale, (0, max_width - width))
    edge_mask = nn.functional.pad(layout.edge_mask, (0, max_width - width))
    h = metanet.node_type_embedding(graph.node_type) + metanet.node_encoder(
        torch.cat([x, layout.node_mask.to(x.dtype)], dim=-1)
    )
    e = metanet.edge_type_embedding(graph.edge_type) + metanet.edge_encoder(
        torch.cat([attr, edge_mask.to(attr.dtype)], dim=-1)
    )
    for layer in metanet.layers:
        h, e = layer(h, graph.edge_index, e)
    node_delta = metanet.node_decoder(h) * layout.node_mask * layout.node_scale
    edge_delta = metanet.edge_decoder(e)[:, :width] * layout.edge_mask * layout.edge_scale
    return graph.x + metanet.alpha[0] * node_delta, graph.edge_attr + metanet.alpha[1] * edge_delta


FITTING = {  # graphs no wider than max_width: narrower (padded), as wide (5x5 at 25), only 1-wide edges
    "resnet_3x3": (lambda: zoo.cifar_resnet(8, in_channels=1, width=3), MNIST, 9),
    "3x3_at_16": (_bn_cnn, MNIST, 16),
    "5x5_at_25": (lambda: nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.Conv2d(3, 2, 3)), (1, 1, 12, 12), 25),
    "mlp": (lambda: zoo.mlp(20, (7, 5)), (2, 20), 9),
}


@pytest.mark.parametrize("name", FITTING)
def test_graphs_that_fit_are_rewritten_bit_for_bit_as_before_resampling(name: str) -> None:
    torch.manual_seed(0)
    build, inputs, max_width = FITTING[name]
    graph = to_neuron_graph(_randomize_norms(build()), inputs)
    metanet = Metanet(CONFIG, max_width=max_width)
    with torch.no_grad():
        metanet.alpha.fill_(1.0)
        out = metanet(graph)
        x, edge_attr = _forward_before_resampling(metanet, graph)
    assert torch.equal(out.x, x) and torch.equal(out.edge_attr, edge_attr)


def _placement(graph, name: str):
    return next(p for p in graph.placements if p.name == name)


def test_a_3x3_kernel_beside_a_7x7_stem_is_read_as_its_own_9_values_and_the_stem_resampled() -> None:
    torch.manual_seed(0)
    graph = to_neuron_graph(_wide_stem(), (1, 1, 12, 12))
    assert graph.edge_attr.shape[1] == 49
    layout = GraphLayout.of(graph)
    encoded = read_edges(graph.edge_attr, layout, 9)
    narrow, wide = _placement(graph, "3.weight"), _placement(graph, "0.weight")
    rows = slice(narrow.start, narrow.start + narrow.rows * narrow.cols)
    values = graph.edge_attr[rows, :9] / layout.edge_scale[rows]
    assert torch.equal(encoded[rows], torch.cat([values, torch.ones_like(values)], dim=1))  # as in a 3x3-only graph
    rows = slice(wide.start, wide.start + wide.rows * wide.cols)
    kernels = (graph.edge_attr[rows] / layout.edge_scale[rows]).reshape(-1, 1, 7, 7)
    expected = nn.functional.interpolate(kernels, size=(3, 3), mode="bilinear", antialias=True).reshape(-1, 9)
    torch.testing.assert_close(encoded[rows, :9], expected)
    assert torch.equal(encoded[rows, 9:], torch.ones(len(expected), 9))
    identity = graph.edge_type == EDGE_TYPES.index("identity")
    assert not encoded[identity, 9:].any()


def test_a_constant_kernel_is_read_as_a_constant_whatever_its_width() -> None:
    model = nn.Conv1d(2, 3, 11)  # 11 values an edge: not a square, resampled along the line
    nn.init.constant_(model.weight, -0.3)
    graph = to_neuron_graph(model, (1, 2, 20))
    encoded = read_edges(graph.edge_attr, GraphLayout.of(graph), 9)
    torch.testing.assert_close(encoded, torch.cat([-torch.ones(6, 9), torch.ones(6, 9)], dim=1))


def _constant_delta_metanet(delta: torch.Tensor, alpha: float = 0.5) -> Metanet:
    """A metanetwork whose edge decoder emits ``delta`` (max_width values) for every edge, nodes untouched."""
    metanet = Metanet(CONFIG)
    with torch.no_grad():
        head = metanet.edge_decoder[-1]
        head.weight.zero_()
        head.bias.copy_(delta)
        metanet.node_decoder[-1].weight.zero_()
        metanet.node_decoder[-1].bias.zero_()
        metanet.alpha.fill_(alpha)
    return metanet


WIDE = {  # a wide layer (resampled) before a narrow one (read as is)
    "7x7": (_wide_stem, (1, 1, 12, 12)),
    "5x5": (lambda: nn.Sequential(nn.Conv2d(2, 3, 5), nn.ReLU(), nn.Conv2d(3, 2, 3)), (1, 2, 12, 12)),
    "1d_11": (lambda: nn.Sequential(nn.Conv1d(2, 3, 11), nn.ReLU(), nn.Conv1d(3, 2, 3)), (1, 2, 20)),
    "1x11": (lambda: nn.Sequential(nn.Conv2d(2, 3, (1, 11)), nn.ReLU(), nn.Conv2d(3, 2, 3)), (1, 2, 6, 20)),
}


@pytest.mark.parametrize("name", WIDE)
def test_a_constant_delta_is_written_as_the_same_constant_on_every_value_of_every_kernel(name: str) -> None:
    torch.manual_seed(0)
    build, inputs = WIDE[name]
    model = build().eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    _constant_delta_metanet(torch.full((9,), 2.0)).rewrite_(model, inputs)
    for key, value in model.state_dict().items():
        assert value.shape == original[key].shape, key
        before = original[key]
        if key.endswith("weight") and before.dim() > 1:  # 0.5 * 2 * the tensor's RMS on each value
            torch.testing.assert_close(value - before, before.square().mean().sqrt().expand_as(before), msg=key)
        else:
            assert torch.equal(value, before), key


def test_a_linear_delta_on_the_3x3_grid_is_written_as_a_smooth_ramp_on_the_7x7_kernel() -> None:
    ramp = torch.tensor([0.0, 1.0, 2.0]).repeat(3)  # rising along kernel columns, constant along rows
    model = _wide_stem().eval()
    before = model[0].weight.detach().clone()
    _constant_delta_metanet(ramp, alpha=1.0).rewrite_(model, (1, 1, 12, 12))
    delta = (model[0].weight - before) / before.square().mean().sqrt()
    # 3x3 cell centres sit at 7x7 columns 7/6 - 1/2 + 7/3 * i; linear between them, flat beyond
    column = ((torch.arange(7) + 0.5) * 3 / 7 - 0.5).clamp(0, 2)
    torch.testing.assert_close(delta, column.expand_as(delta))


def test_tied_wide_kernels_are_read_at_their_own_width() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(2, 2, 7, padding=3), nn.Conv2d(2, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(self.conv(x)))

    torch.manual_seed(0)
    graph = to_neuron_graph(Twice(), (1, 2, 9, 9))
    groups = dict(GraphLayout.of(graph).edge_groups)
    tied = (graph.edge_type == EDGE_TYPES.index("tied")).nonzero().flatten()
    assert len(tied) == 4 and set(tied.tolist()) <= set(groups[49].tolist()) and len(groups[49]) == 8
    assert len(groups[9]) == 6


def test_gradients_reach_every_metanet_parameter_from_a_7x7_model() -> None:
    torch.manual_seed(0)
    model = _randomize_norms(_wide_stem())
    metanet = Metanet(CONFIG)
    state = metanet.transform(model, (2, 1, 12, 12))
    loss = torch.func.functional_call(model, state, (torch.randn(2, 1, 12, 12),)).square().mean()
    loss.backward()
    silent = [name for name, p in metanet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def _mnist_resnet18() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1, model.maxpool = nn.Conv2d(1, 64, 3, 1, 1), nn.Identity()  # a user's MNIST adaptation
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    "build, inputs",
    [(lambda: torchvision.models.resnet18(num_classes=10), (1, 3, 64, 64)), (_mnist_resnet18, (1, 1, 28, 28))],
    ids=["7x7_stem", "mnist_3x3_stem"],
)
def test_torchvision_resnet18_rewrites_its_parameters_only(build, inputs) -> None:
    torch.manual_seed(0)
    model = build().eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    Metanet(CONFIG, layers=1, residual_scale=0.1).rewrite_(model, inputs)
    parameters = dict(model.named_parameters())
    for key, value in model.state_dict().items():
        assert value.shape == original[key].shape, key
        assert torch.isfinite(value).all(), key
        if key not in parameters:
            assert torch.equal(value, original[key]), key  # batch-norm statistics
    assert not torch.equal(model.conv1.weight, original["conv1.weight"])
    assert not torch.equal(model.layer4[1].conv2.weight, original["layer4.1.conv2.weight"])
