"""Tests for hypernets.graph.op_graph: node and edge fields, shape codes of known layers, shortest-path
pairs against hand-worked and networkx distances, and batching with PyG."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

import networkx as nx
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from hypernets import zoo
from hypernets.graph import OP_KINDS, ModelIR, Op, ParamInfo, trace
from hypernets.graph.inputs import Inputs
from hypernets.graph.op_graph import to_op_graph

GPT2_WIDTH, GPT2_VOCAB, GPT2_POSITIONS = 32, 96, 16

MODELS: dict[str, tuple[Callable[[], nn.Module], Inputs]] = {
    "resnet20": (zoo.resnet20, zoo.input_shape("cifar")),
    "gpt2": (
        lambda: GPT2LMHeadModel(
            GPT2Config(
                n_layer=2,
                n_embd=GPT2_WIDTH,
                n_head=2,
                vocab_size=GPT2_VOCAB,
                n_positions=GPT2_POSITIONS,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
        None,
    ),
    # 32x32 images in 8x8 patches: 16 patch tokens and a class token.
    "vit": (
        lambda: timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            depth=1,
            embed_dim=32,
            num_heads=2,
            img_size=32,
            patch_size=8,
            num_classes=10,
        ),
        None,
    ),
    "encoder": (lambda: nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), (1, 4, 16)),
}


@functools.cache
def converted(name: str) -> tuple[ModelIR, Data]:
    """The IR and op graph of one of ``MODELS``, built once per test session (tests only read them)."""
    build, inputs = MODELS[name]
    ir = trace(build(), inputs)
    return ir, to_op_graph(ir)


def distances(graph: Data) -> dict[tuple[int, int], int]:
    pairs = {(int(i), int(j)): int(d) for (i, j), d in zip(graph.spd_index.t(), graph.spd, strict=True)}
    assert len(pairs) == graph.spd.numel(), "a pair of nodes is listed twice"
    return pairs


def chain_ir(length: int) -> ModelIR:
    """input -> relu -> relu -> ...: a hand-built IR whose distances are index differences."""
    ops = [Op(index=0, kind="input", function="input", module_path="", module_type="Chain")]
    ops += [
        Op(index=i, kind="relu", function="relu", module_path=f"act{i}", module_type="ReLU", inputs=[i - 1])
        for i in range(1, length)
    ]
    return ModelIR("Chain", ops, parameters={}, outputs=[length - 1], unused=[])


class Diamond(nn.Module):
    """x -> a(x), b(x) -> a + b -> relu -> c: two parallel branches that join, then a tail."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.a(x) + self.b(x)))


# Undirected hop distances between the ops of Diamond, worked out by hand: a and b meet through x or a + b.
DIAMOND_DISTANCES = [
    # x  a  b  +  relu c
    [0, 1, 1, 2, 3, 4],  # x
    [1, 0, 2, 1, 2, 3],  # a(x)
    [1, 2, 0, 1, 2, 3],  # b(x)
    [2, 1, 1, 0, 1, 2],  # a + b
    [3, 2, 2, 1, 0, 1],  # relu
    [4, 3, 3, 2, 1, 0],  # c
]


def capped(matrix: list[list[int]], max_distance: int) -> dict[tuple[int, int], int]:
    return {(i, j): d for i, row in enumerate(matrix) for j, d in enumerate(row) if i != j and d <= max_distance}


# -- nodes and edges --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_nodes_and_edges_mirror_the_ir(model):
    ir, graph = converted(model)
    assert graph.num_nodes == len(ir.ops)
    assert [OP_KINDS[i] for i in graph.op.tolist()] == [op.kind for op in ir.ops]
    assert graph.shape.shape == (len(ir.ops), 4)
    assert graph.names == [op.module_path for op in ir.ops]
    edges = sorted(zip(*graph.edge_index.tolist(), strict=True))
    assert edges == sorted((parent, op.index) for op in ir.ops for parent in op.inputs)


@pytest.mark.parametrize("model", list(MODELS))
def test_edges_are_acyclic_and_topological(model):
    _, graph = converted(model)
    src, dst = graph.edge_index
    assert graph.edge_index.shape[1] > 0
    assert bool((src < dst).all())  # every edge points forward: no cycle is possible


@pytest.mark.parametrize("model", list(MODELS))
def test_each_parameter_is_listed_once_by_its_owner(model):
    ir, graph = converted(model)
    listed = [entry for node in graph.params for entry in node]
    assert sorted(listed) == sorted((name, info.shape) for name, info in ir.parameters.items())


def test_unused_parameters_belong_to_no_node():
    spare = ParamInfo("spare", (2,), torch.float32)
    graph = to_op_graph(replace(chain_ir(3), parameters={"spare": spare}, unused=["spare"]))
    assert graph.unused == ["spare"]
    assert graph.params == [[], [], []]


def test_tied_lm_head_lists_no_parameters():
    ir, graph = converted("gpt2")
    [lm_head] = [op.index for op in ir.ops if op.module_path == "lm_head"]
    [wte] = [op.index for op in ir.ops if op.module_path == "transformer.wte"]
    assert graph.params[lm_head] == []
    assert graph.params[wte] == [("transformer.wte.weight", (GPT2_VOCAB, GPT2_WIDTH))]


# -- shape codes ------------------------------------------------------------------------------------

D = GPT2_WIDTH
SHAPE_CODES = [
    ("resnet20", "conv1", "conv", (16, 3, 3, 3)),
    ("resnet20", "layer2.0.shortcut.0", "conv", (32, 16, 1, 1)),
    ("resnet20", "layer3.2.bn2", "batch_norm", (64, 1, 1, 1)),
    ("resnet20", "relu", "relu", (0, 0, 0, 0)),
    ("resnet20", "fc", "linear", (10, 64, 1, 1)),
    ("gpt2", "transformer.wte", "embedding", (D, GPT2_VOCAB, 1, 1)),
    ("gpt2", "transformer.wpe", "embedding", (D, GPT2_POSITIONS, 1, 1)),
    ("gpt2", "transformer.h.0.attn.c_attn", "linear", (3 * D, D, 1, 1)),  # Conv1D stores (d, 3d)
    ("gpt2", "transformer.h.1.mlp.c_fc", "linear", (4 * D, D, 1, 1)),
    ("gpt2", "transformer.h.1.mlp.c_proj", "linear", (D, 4 * D, 1, 1)),
    ("gpt2", "transformer.ln_f", "layer_norm", (D, 1, 1, 1)),
    ("gpt2", "lm_head", "linear", (GPT2_VOCAB, D, 1, 1)),
    ("vit", "patch_embed.proj", "conv", (32, 3, 8, 8)),
    ("vit", "", "concat", (32, 1, 1, 1)),  # class token (1, 1, D)
    ("vit", "", "add", (32, 17, 1, 1)),  # positional embedding (1, 17, D)
    ("vit", "blocks.0.attn.qkv", "linear", (96, 32, 1, 1)),
    ("vit", "blocks.0.attn", "attention", (0, 0, 0, 0)),
    ("vit", "head", "linear", (10, 32, 1, 1)),
    ("encoder", "self_attn", "linear", (48, 16, 1, 1)),  # in_proj_weight, read by F.multi_head_attention_forward
    ("encoder", "self_attn", "attention", (0, 0, 0, 0)),
    ("encoder", "self_attn.out_proj", "linear", (16, 16, 1, 1)),
    ("encoder", "linear2", "linear", (16, 32, 1, 1)),
]


@pytest.mark.parametrize(
    ("model", "path", "kind", "code"), SHAPE_CODES, ids=[f"{m}:{p or '<root>'}:{k}" for m, p, k, _ in SHAPE_CODES]
)
def test_shape_code_of_known_node(model, path, kind, code):
    ir, graph = converted(model)
    [node] = [op.index for op in ir.ops if op.module_path == path and op.kind == kind]
    assert tuple(graph.shape[node].tolist()) == code


@pytest.mark.parametrize(
    ("layer", "input_shape", "code"),
    [
        (nn.Conv1d(2, 4, 3), (1, 2, 8), (4, 2, 3, 1)),
        (nn.Conv3d(2, 4, (2, 3, 5)), (1, 2, 4, 6, 8), (4, 2, 6, 5)),
    ],
    ids=["conv1d", "conv3d"],
)
def test_kernel_dimensions_fold_into_two(layer, input_shape, code):
    graph = to_op_graph(nn.Sequential(layer), input_shape)
    assert tuple(graph.shape[1].tolist()) == code


class FunctionalLinear(nn.Module):
    """A 4 -> 6 linear map written as ``function(x, weight)`` with the weight stored as given."""

    def __init__(self, weight_shape: tuple[int, int], function: Callable) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, self.weight)


@pytest.mark.parametrize(
    ("layer", "input_shape"),
    [
        pytest.param(nn.Linear(4, 6), (3, 4), id="nn.Linear"),
        pytest.param(Conv1D(6, 4), (3, 4), id="hf-Conv1D"),
        pytest.param(FunctionalLinear((4, 6), lambda x, w: x @ w), (3, 4), id="x@W"),
        pytest.param(FunctionalLinear((6, 4), F.linear), (3, 4), id="F.linear"),
        pytest.param(FunctionalLinear((6, 4), lambda x, w: x @ w.T), (3, 4), id="x@W.T"),
        pytest.param(FunctionalLinear((6, 4), lambda x, w: w @ x), (4, 3), id="W@x"),
        pytest.param(FunctionalLinear((4, 6), lambda x, w: w.T @ x), (4, 3), id="W.T@x"),
        pytest.param(FunctionalLinear((4, 6), lambda x, w: F.linear(x, w.t())), (3, 4), id="F.linear(W.t())"),
        pytest.param(FunctionalLinear((6, 4), lambda x, w: x @ w.transpose(-1, -2)), (3, 4), id="x@W.transpose"),
        pytest.param(FunctionalLinear((6, 4), lambda x, w: torch.mm(x, w.permute(1, 0))), (3, 4), id="mm(x,W.permute)"),
        pytest.param(FunctionalLinear((4, 6), lambda x, w: x @ w.T.contiguous().T), (3, 4), id="x@W.T.T"),
        pytest.param(
            FunctionalLinear((6, 4), lambda x, w: torch.addmm(torch.ones(6), x, w.mT)), (3, 4), id="addmm(W.mT)"
        ),
    ],
)
def test_linear_shape_code_is_out_in_whatever_the_storage(layer, input_shape):
    graph = to_op_graph(nn.Sequential(layer), input_shape)
    assert OP_KINDS[int(graph.op[1])] == "linear"
    assert tuple(graph.shape[1].tolist()) == (6, 4, 1, 1)


# -- shortest-path pairs ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_distance", [1, 2, 4, 8])
def test_chain_distances_are_capped(max_distance):
    length = 6
    graph = to_op_graph(chain_ir(length), max_distance=max_distance)
    matrix = [[abs(i - j) for j in range(length)] for i in range(length)]
    assert distances(graph) == capped(matrix, max_distance)


@pytest.mark.parametrize("max_distance", [2, 3, 8])
def test_diamond_distances(max_distance):
    ir = trace(Diamond(), (2, 4))
    assert [(op.kind, op.module_path) for op in ir.ops] == [
        ("input", ""),
        ("linear", "a"),
        ("linear", "b"),
        ("add", ""),
        ("relu", ""),
        ("linear", "c"),
    ]
    graph = to_op_graph(ir, max_distance=max_distance)
    assert graph.edge_index.tolist() == [[0, 0, 1, 2, 3, 4], [1, 2, 3, 3, 4, 5]]
    assert distances(graph) == capped(DIAMOND_DISTANCES, max_distance)


@pytest.mark.parametrize("max_distance", [3, 8])
@pytest.mark.parametrize("model", ["resnet20", "gpt2"])
def test_distances_match_networkx(model, max_distance):
    ir, _ = converted(model)
    graph = to_op_graph(ir, max_distance=max_distance)
    undirected = nx.Graph()
    undirected.add_nodes_from(range(graph.num_nodes))
    undirected.add_edges_from(graph.edge_index.t().tolist())
    expected = {
        (i, j): d
        for i, lengths in nx.all_pairs_shortest_path_length(undirected, cutoff=max_distance)
        for j, d in lengths.items()
        if i != j
    }
    pairs = distances(graph)
    assert pairs == expected
    assert all(pairs[j, i] == d for (i, j), d in pairs.items())  # symmetric
    assert max(pairs.values()) == min(max_distance, nx.diameter(undirected))


def test_max_distance_must_be_positive():
    with pytest.raises(ValueError, match="max_distance must be at least 1"):
        to_op_graph(chain_ir(3), max_distance=0)


# -- conversion entry points and batching -----------------------------------------------------------


def test_module_and_ir_give_the_same_graph():
    model = Diamond()
    from_module = to_op_graph(model, (2, 4))
    from_ir = to_op_graph(trace(model, (2, 4)))
    assert from_module.keys() == from_ir.keys()
    for key in ("op", "shape", "edge_index", "spd_index", "spd"):
        assert torch.equal(from_module[key], from_ir[key]), key
    assert from_module.params == from_ir.params
    assert from_module.names == from_ir.names


def test_batching_offsets_node_indices():
    first = to_op_graph(Diamond(), (2, 4))
    second = to_op_graph(chain_ir(4))
    batch = Batch.from_data_list([first, second])
    offset = first.num_nodes
    for key in ("edge_index", "spd_index"):
        assert torch.equal(batch[key], torch.cat([first[key], second[key] + offset], dim=1)), key
    for key in ("op", "shape", "spd"):
        assert torch.equal(batch[key], torch.cat([first[key], second[key]])), key
    assert batch.batch.tolist() == [0] * offset + [1] * second.num_nodes
    assert batch.names == [first.names, second.names]
