"""Metanetwork: permutation equivariance, a fresh one is nearly the identity, gradients, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hypernets import zoo
from hypernets.graph import EDGE_TYPES, NODE_SLOTS, to_neuron_graph
from metaprune.metanet import GraphLayout, Metanet, MetanetConfig, transformed_state

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


def test_too_wide_edges_are_refused() -> None:
    graph = to_neuron_graph(nn.Conv2d(1, 2, 5), (1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"25 values.*max_width=9"):
        Metanet(CONFIG)(graph)


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
