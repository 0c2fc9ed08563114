"""Neuron graph: exact inverse, hand-worked layouts, and permutation equivariance."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import GPT2Config, GPT2LMHeadModel

from hypernets.graph import UnsupportedModuleError, trace
from hypernets.graph.neuron_graph import EDGE_TYPES, NODE_TYPES, NodePlacement, from_neuron_graph, to_neuron_graph


class ResidualCNN(nn.Module):
    """A user-written residual block with batch norm, a projection shortcut and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.shortcut = nn.Conv2d(4, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y)) + self.shortcut(x)
        return self.head(torch.relu(y).mean(dim=(2, 3)))


def _randomize_norm_statistics(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    return model


def _vit(**kwargs) -> nn.Module:
    options = dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    return timm.models.vision_transformer.VisionTransformer(**{**options, **kwargs})


def _gpt2(n_embd: int = 16) -> nn.Module:
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=n_embd, n_head=2, vocab_size=20, n_positions=8))


def _encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)


class FunctionalLinear(nn.Module):
    """``forward(x, weight)`` with the weight stored as given: a linear map read through matmul or a transpose."""

    def __init__(self, weight: torch.Tensor, forward: Callable) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.function = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, self.weight)


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)), (2, 3, 2, 2)),
    "vgg_grouped_flatten": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
        ),
        (1, 3, 8, 8),
    ),
    "residual_cnn": (ResidualCNN, (1, 3, 8, 8)),
    "vit_cls": (_vit, None),
    "vit_avg_layerscale": (lambda: _vit(class_token=False, global_pool="avg", init_values=0.1), None),
    "gpt2": (_gpt2, None),
    "torch_encoder_layer": (_encoder_layer, (1, 4, 16)),
    "x@W.T": (lambda: FunctionalLinear(torch.randn(3, 4), lambda x, w: x @ w.T), (2, 4)),
}  # fmt: skip


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_exact_and_loads(name: str) -> None:
    torch.manual_seed(0)
    build, inputs = MODELS[name]
    model = _randomize_norm_statistics(build())
    graph = to_neuron_graph(model, inputs)
    tensors = from_neuron_graph(graph)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert tensors.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    # Write modified graph values back: the model must change exactly as the graph did.
    graph.edge_attr = graph.edge_attr * 2
    graph.x = graph.x * 2
    restored = build()
    restored.load_state_dict(from_neuron_graph(graph), strict=False)
    for key, value in restored.state_dict().items():
        if key in expected:
            assert torch.equal(value, expected[key] * 2), key


def test_linear_layout_worked_by_hand() -> None:
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        layer.bias.copy_(torch.tensor([7.0, 8.0, 9.0]))
    graph = to_neuron_graph(layer, (1, 2))
    # Nodes 0-1: inputs; 2-4: outputs. Edge (input j -> output i) carries weight[i, j], output-major.
    assert graph.num_nodes == 5
    assert graph.node_type.tolist() == [NODE_TYPES.index("input")] * 2 + [NODE_TYPES.index("output")] * 3
    assert graph.edge_index.tolist() == [[0, 1, 0, 1, 0, 1], [2, 2, 3, 3, 4, 4]]
    assert graph.edge_attr.flatten().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert graph.x[2:, 0].tolist() == [7.0, 8.0, 9.0]
    assert graph.edge_type.tolist() == [EDGE_TYPES.index("weight")] * 6


def test_conv_kernel_is_one_edge_feature_vector() -> None:
    conv = nn.Conv2d(2, 1, kernel_size=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(8.0).view(1, 2, 2, 2))
    graph = to_neuron_graph(conv, (1, 2, 4, 4))
    assert graph.edge_index.tolist() == [[0, 1], [2, 2]]
    assert graph.edge_attr.tolist() == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]


def test_patch_embedding_has_one_input_node_per_kernel_position() -> None:
    """A stride-2 2x2 conv on the image is a linear map on 2 x 2 x 2 patch values: width-1 edges."""
    conv = nn.Conv2d(2, 3, kernel_size=2, stride=2)
    graph = to_neuron_graph(conv, (1, 2, 4, 4))
    assert graph.node_type.tolist() == [NODE_TYPES.index("input")] * 8 + [NODE_TYPES.index("output")] * 3
    assert graph.edge_index.tolist() == [list(range(8)) * 3, [8] * 8 + [9] * 8 + [10] * 8]
    assert torch.equal(graph.edge_attr, conv.weight.detach().reshape(24, 1))
    assert torch.equal(from_neuron_graph(graph)["weight"], conv.weight)


def test_vit_edges_carry_one_value() -> None:
    """Without the patch-embedding rule every edge of ViT would be as wide as a patch (8 x 8 = 64 values)."""
    graph = to_neuron_graph(_vit())
    assert graph.edge_attr.shape[1] == 1
    assert int((graph.node_type == NODE_TYPES.index("input")).sum()) == 3 * 8 * 8


@pytest.mark.parametrize(
    ("stored_out_in", "forward"),
    [
        (True, lambda x, w: x @ w.T),
        (False, lambda x, w: x @ w),
        (True, lambda x, w: (w @ x.T).T),
        (False, lambda x, w: F.linear(x, w.t())),
    ],
    ids=["x@W.T", "x@W", "W@x", "F.linear(W.t())"],
)
def test_weight_read_through_matmul_or_transpose_gives_the_linear_graph(stored_out_in, forward) -> None:
    linear = nn.Linear(5, 7, bias=False)
    weight = linear.weight.detach() if stored_out_in else linear.weight.detach().T
    model = FunctionalLinear(weight.clone(), forward)
    torch.testing.assert_close(model(torch.ones(3, 5)), linear(torch.ones(3, 5)))
    graph, expected = to_neuron_graph(model, (3, 5)), to_neuron_graph(linear, (3, 5))
    assert torch.equal(graph.edge_index, expected.edge_index)
    assert torch.equal(graph.edge_attr, expected.edge_attr)
    assert torch.equal(from_neuron_graph(graph)["weight"], model.weight)


def test_residual_addition_is_identity_edges() -> None:
    graph = to_neuron_graph(ResidualCNN(), (1, 3, 8, 8))
    sums = (graph.node_type == NODE_TYPES.index("sum")).nonzero().flatten()
    assert len(sums) == 6
    into_sums = torch.isin(graph.edge_index[1], sums)
    assert (graph.edge_type[into_sums] == EDGE_TYPES.index("identity")).all()
    assert int(into_sums.sum()) == 12  # two addends of 6 channels each


def test_tied_weight_is_written_back_once() -> None:
    graph = to_neuron_graph(_gpt2())
    assert graph.aliases == {"lm_head.weight": "transformer.wte.weight"}
    assert int((graph.edge_type == EDGE_TYPES.index("tied")).sum()) == 20 * 16


def test_meta_model_gives_counts_without_memory() -> None:
    with torch.device("meta"):
        model = _gpt2()
    graph = to_neuron_graph(model)
    assert graph.edge_index.device.type == "meta"
    assert graph.edge_attr.shape[0] == to_neuron_graph(_gpt2()).edge_attr.shape[0]


class LargestCpuTensor(TorchDispatchMode):
    """Records the element count of the largest CPU tensor any torch call returns."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(result) if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
        self.largest = max([self.largest, *sizes])
        return result


def test_meta_structure_is_built_on_meta() -> None:
    """Only per-node bookkeeping lives on the CPU: no tensor as long as the edge list is ever allocated."""
    with torch.device("meta"):
        model = _gpt2(n_embd=64)
    ir = trace(model)
    with LargestCpuTensor() as probe:
        graph = to_neuron_graph(model, ir=ir)
    assert graph.edge_index.shape[1] > 10 * graph.num_nodes
    assert 0 < probe.largest <= graph.num_nodes


def test_unsupported_op_names_the_module() -> None:
    class Exponential(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.fc(x))

    with pytest.raises(UnsupportedModuleError, match=r"'<root>' \(Exponential\): op 'other' \(exp\)"):
        to_neuron_graph(Exponential(), (1, 3, 4))


class MultiheadAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.attn(x, memory, memory)[0]


def test_cross_attention_is_refused_naming_the_module() -> None:
    x = torch.zeros(1, 3, 8)
    message = r"'attn' \(MultiheadAttention\).*part of parameter\(s\) attn.in_proj_weight, attn.in_proj_bias"
    with pytest.raises(UnsupportedModuleError, match=message):
        to_neuron_graph(MultiheadAttention(), (x, torch.zeros(1, 5, 8)))


class StandardizedConv(nn.Conv2d):
    """NFNet's ``ScaledStdConv2d``: the convolution's weight is computed from the parameter on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.weight.reshape(1, self.out_channels, -1)
        weight = F.batch_norm(flat, None, None, training=True).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias)


class ConstantGridEncoding(nn.Module):
    """XCiT's positional encoding: a convolution over a grid made from constants, added to the features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.project = nn.Conv2d(1, 4, 1), nn.Conv2d(2, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"))[None]
        return self.stem(x) + self.project(grid)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            nn.Sequential(StandardizedConv(1, 4, 3, padding=1)),
            r"'0' \(StandardizedConv\).*weight is computed from parameters",
        ),
        (ConstantGridEncoding(), r"'project' \(Conv2d\).*input is computed from constants"),
    ],
)
def test_layers_whose_weight_or_input_the_graph_cannot_place_are_refused_naming_them(model, message) -> None:
    with pytest.raises(UnsupportedModuleError, match=message):
        to_neuron_graph(model, torch.zeros(1, 1, 4, 4))


# -- permutation equivariance -------------------------------------------------------------------


def _nodes_of(graph, name: str) -> torch.Tensor:
    return next(p.nodes for p in graph.placements if isinstance(p, NodePlacement) and p.name == name)


def _assert_permuted(graph, permuted, sigma: torch.Tensor) -> None:
    """``permuted`` is ``graph`` with node n of ``permuted`` being node ``sigma[n]`` of ``graph``."""
    assert torch.equal(permuted.x, graph.x[sigma])
    assert torch.equal(permuted.node_type, graph.node_type[sigma])

    def canonical(edge_index, edge_type, edge_attr):
        n = graph.num_nodes
        key = (edge_index[0] * n + edge_index[1]) * len(EDGE_TYPES) + edge_type
        order = key.argsort()
        return key[order], edge_attr[order]

    keys, attrs = canonical(graph.edge_index, graph.edge_type, graph.edge_attr)
    keys2, attrs2 = canonical(sigma[permuted.edge_index], permuted.edge_type, permuted.edge_attr)
    assert torch.equal(keys, keys2)
    assert torch.equal(attrs, attrs2)


def _check_symmetry(model: nn.Module, permuted: nn.Module, inputs, sigma_of) -> None:
    x = torch.randn(*inputs) if isinstance(inputs, tuple) else None
    model.eval(), permuted.eval()
    if x is not None:
        torch.testing.assert_close(model(x), permuted(x))  # the permutation is a true symmetry
    graph, graph2 = to_neuron_graph(model, inputs), to_neuron_graph(permuted, inputs)
    _assert_permuted(graph, graph2, sigma_of(graph))


def _sigma(graph, moves: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    sigma = torch.arange(graph.num_nodes)
    for nodes, perm in moves:
        sigma[nodes] = nodes[perm]
    return sigma


def test_permuting_cnn_channels_permutes_nodes_only() -> None:
    torch.manual_seed(0)
    model = _randomize_norm_statistics(ResidualCNN())
    p = torch.randperm(6)
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permuted.conv1.weight.copy_(model.conv1.weight[p])
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(permuted.bn1, key).copy_(getattr(model.bn1, key)[p])
        permuted.conv2.weight.copy_(model.conv2.weight[:, p])
    _check_symmetry(model, permuted, (1, 3, 8, 8), lambda g: _sigma(g, [(_nodes_of(g, "bn1.weight"), p)]))


def test_permuting_mlp_hidden_neurons_permutes_nodes_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    p = torch.randperm(7)
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permuted[0].weight.copy_(model[0].weight[p])
        permuted[0].bias.copy_(model[0].bias[p])
        permuted[2].weight.copy_(model[2].weight[:, p])
    _check_symmetry(model, permuted, (3, 5), lambda g: _sigma(g, [(_nodes_of(g, "0.bias"), p)]))


def _attention_permutation(heads: int, head_dim: int):
    """Permute heads, q/k dimensions jointly within heads, and v dimensions within heads."""
    ph, pqk, pv = torch.randperm(heads), torch.randperm(head_dim), torch.randperm(head_dim)
    qk = (ph[:, None] * head_dim + pqk[None, :]).flatten()
    v = (ph[:, None] * head_dim + pv[None, :]).flatten()
    return ph, qk, v


def test_permuting_vit_heads_and_mlp_permutes_nodes_only() -> None:
    torch.manual_seed(0)
    model = _vit(depth=1, num_heads=4)
    dim, heads, head_dim, hidden = 16, 4, 4, 64
    ph, qk, v = _attention_permutation(heads, head_dim)
    rows = torch.cat([qk, dim + qk, 2 * dim + v])
    pm = torch.randperm(hidden)
    permuted = copy.deepcopy(model)
    block, block2 = model.blocks[0], permuted.blocks[0]
    with torch.no_grad():
        block2.attn.qkv.weight.copy_(block.attn.qkv.weight[rows])
        block2.attn.qkv.bias.copy_(block.attn.qkv.bias[rows])
        block2.attn.proj.weight.copy_(block.attn.proj.weight[:, v])
        block2.mlp.fc1.weight.copy_(block.mlp.fc1.weight[pm])
        block2.mlp.fc1.bias.copy_(block.mlp.fc1.bias[pm])
        block2.mlp.fc2.weight.copy_(block.mlp.fc2.weight[:, pm])

    def sigma_of(graph):
        head_nodes = (graph.node_type == NODE_TYPES.index("head")).nonzero().flatten()
        attention_nodes = (graph.node_type == NODE_TYPES.index("attention")).nonzero().flatten()
        return _sigma(
            graph,
            [
                (_nodes_of(graph, "blocks.0.attn.qkv.bias"), rows),
                (head_nodes, ph),
                (attention_nodes, v),
                (_nodes_of(graph, "blocks.0.mlp.fc1.bias"), pm),
            ],
        )

    _check_symmetry(model, permuted, (1, 3, 16, 16), sigma_of)


def test_permuting_gpt2_heads_permutes_nodes_only() -> None:
    torch.manual_seed(0)
    model = _gpt2().eval()
    dim, heads, head_dim = 16, 2, 8
    ph, qk, v = _attention_permutation(heads, head_dim)
    columns = torch.cat([qk, dim + qk, 2 * dim + v])
    permuted = copy.deepcopy(model)
    attn, attn2 = model.transformer.h[0].attn, permuted.transformer.h[0].attn
    with torch.no_grad():  # HF Conv1D stores weights as (in, out)
        attn2.c_attn.weight.copy_(attn.c_attn.weight[:, columns])
        attn2.c_attn.bias.copy_(attn.c_attn.bias[columns])
        attn2.c_proj.weight.copy_(attn.c_proj.weight[v])
    ids = torch.randint(0, 20, (1, 8))
    torch.testing.assert_close(model(ids).logits, permuted(ids).logits)

    def sigma_of(graph):
        head_nodes = (graph.node_type == NODE_TYPES.index("head")).nonzero().flatten()[:heads]
        attention_nodes = (graph.node_type == NODE_TYPES.index("attention")).nonzero().flatten()[:dim]
        return _sigma(
            graph,
            [
                (_nodes_of(graph, "transformer.h.0.attn.c_attn.bias"), columns),
                (head_nodes, ph),
                (attention_nodes, v),
            ],
        )

    _assert_permuted(to_neuron_graph(model), to_neuron_graph(permuted), sigma_of(to_neuron_graph(model)))


def test_permuting_torch_encoder_layer_heads_and_mlp_permutes_nodes_only() -> None:
    torch.manual_seed(0)
    model = _encoder_layer()
    dim, heads, head_dim, hidden = 16, 4, 4, 32
    ph, qk, v = _attention_permutation(heads, head_dim)
    rows = torch.cat([qk, dim + qk, 2 * dim + v])
    pm = torch.randperm(hidden)
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permuted.self_attn.in_proj_weight.copy_(model.self_attn.in_proj_weight[rows])
        permuted.self_attn.in_proj_bias.copy_(model.self_attn.in_proj_bias[rows])
        permuted.self_attn.out_proj.weight.copy_(model.self_attn.out_proj.weight[:, v])
        permuted.linear1.weight.copy_(model.linear1.weight[pm])
        permuted.linear1.bias.copy_(model.linear1.bias[pm])
        permuted.linear2.weight.copy_(model.linear2.weight[:, pm])

    def sigma_of(graph):
        head_nodes = (graph.node_type == NODE_TYPES.index("head")).nonzero().flatten()
        attention_nodes = (graph.node_type == NODE_TYPES.index("attention")).nonzero().flatten()
        return _sigma(
            graph,
            [
                (_nodes_of(graph, "self_attn.in_proj_bias"), rows),
                (head_nodes, ph),
                (attention_nodes, v),
                (_nodes_of(graph, "linear1.bias"), pm),
            ],
        )

    _check_symmetry(model, permuted, (1, 4, 16), sigma_of)
