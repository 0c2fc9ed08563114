"""The converter on today's model families: tracing leaves every model as it was, RMSNorm in every
spelling is one op, and gated MLPs, rotary embeddings and grouped-query attention have an exact neuron
graph whose node permutations are exactly the network's symmetries."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from test_neuron_graph import _assert_permuted, _nodes_of, _sigma
from timm.models.metaformer import StarReLU
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor
from torchvision.models.shufflenetv2 import ShuffleNetV2
from transformers import (
    BertConfig,
    BertModel,
    BloomConfig,
    BloomForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTBigCodeConfig,
    GPTBigCodeForCausalLM,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    T5Config,
    T5EncoderModel,
)
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from transformers.models.t5.modeling_t5 import T5LayerNorm

from hypernets.graph import (
    EDGE_TYPES,
    NODE_SLOTS,
    NODE_TYPES,
    OP_KINDS,
    GraphConversionError,
    UnsupportedModuleError,
    from_neuron_graph,
    to_neuron_graph,
    to_op_graph,
    trace,
)
from hypernets.graph.tracer import ROTARY
from metaprune.metanet import Metanet, MetanetConfig
from metaprune.objective import ChannelGroups

VOCAB = 100


def _ids(length: int = 8) -> Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(0))


def _decoder(model_class: type[nn.Module], config_class: type, **options: Any) -> nn.Module:
    """A one-layer decoder with 4 query heads sharing 2 key/value heads of 8 features."""
    config = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return model_class(config_class(**{**config, **options})).eval()


def _llama(**options: Any) -> nn.Module:
    return _decoder(LlamaForCausalLM, LlamaConfig, **options)


def _assert_round_trip(model: nn.Module, inputs: Any = None) -> Any:
    graph = to_neuron_graph(model, inputs)
    tensors = from_neuron_graph(graph)
    expected = model.state_dict()
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(tensors[name], value), name
    return graph


# -- tracing never changes the model -------------------------------------------------------------------

ZOO: dict[str, tuple[Callable[[], nn.Module], Any]] = {
    "timm-vit": (
        lambda: timm.models.vision_transformer.VisionTransformer(
            img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3
        ),
        torch.randn(1, 3, 16, 16),
    ),
    "timm-levit": (  # caches its attention biases in eval mode
        lambda: timm.models.levit.Levit(
            img_size=32, num_classes=3, embed_dim=(16, 32), key_dim=8, depth=(1, 1), num_heads=(2, 2)
        ),
        torch.randn(1, 3, 32, 32),
    ),
    "torchvision-resnet18": (lambda: torchvision.models.resnet18(num_classes=3), torch.randn(1, 3, 32, 32)),
    "hf-gpt2": (
        lambda: GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=16)),
        {"input_ids": _ids()},
    ),
    "hf-llama": (_llama, {"input_ids": _ids()}),
    "hf-bert": (
        lambda: BertModel(
            BertConfig(
                vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=16,
            )
        ),
        {"input_ids": _ids()},
    ),
}  # fmt: skip


def _forward(model: nn.Module, inputs: Any) -> Tensor:
    with torch.no_grad():
        output = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return output if isinstance(output, Tensor) else output[0]


def _fake_tensors(model: nn.Module) -> list[str]:
    """Where a FakeTensor is reachable from any module's attributes."""
    found: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, FakeTensor):
            found.append(where)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}[{key!r}]")
        elif isinstance(value, list | tuple | set):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    for name, module in model.named_modules():
        for key, value in vars(module).items():
            walk(value, f"{name or '<root>'}.{key}")
    return found


@pytest.mark.parametrize("forward_first", [True, False], ids=["after-a-forward", "fresh"])
@pytest.mark.parametrize("name", ZOO)
def test_conversion_leaves_the_model_unchanged(name: str, forward_first: bool) -> None:
    torch.manual_seed(0)
    build, inputs = ZOO[name]
    model = build().eval()
    reference = copy.deepcopy(model)
    before = _forward(model, inputs) if forward_first else None  # fills eval-mode caches (LeViT) with real tensors
    trace(model, inputs)
    to_op_graph(model, inputs)
    with contextlib.suppress(GraphConversionError):  # LeViT's matmul attention has no neuron graph yet
        to_neuron_graph(model, inputs)
    assert _fake_tensors(model) == []
    after = _forward(model, inputs)
    assert type(after) is Tensor
    assert torch.equal(after, before if forward_first else _forward(reference, inputs))


class Stateful(nn.Module):
    """Writes to itself in forward the ways real modules do: an attribute, a list, a nested cache, a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls: list[int] = []
        self.cache: dict[str, dict[str, Tensor]] = {"cpu": {}}
        self.last: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(len(self.calls))
        self.last = x
        bias = self.cache["cpu"].setdefault("bias", self.linear.bias * 2)
        self.register_buffer("seen", x.sum(0))
        return self.linear(x) + bias


def test_every_write_of_the_traced_forward_is_undone() -> None:
    model = Stateful()
    reference = copy.deepcopy(model)
    inner_cache = model.cache["cpu"]
    trace(model, (2, 4))
    assert model.calls == [] and model.last is None and model.cache == {"cpu": {}}
    assert model.cache["cpu"] is inner_cache  # emptied in place, not replaced
    assert "seen" not in dict(model.named_buffers())
    assert _fake_tensors(model) == []
    x = torch.randn(2, 4)
    assert torch.equal(model(x), reference(x))


# -- RMSNorm in every spelling ---------------------------------------------------------------------------

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "LlamaRMSNorm": LlamaRMSNorm,
    "MistralRMSNorm": MistralRMSNorm,
    "Qwen2RMSNorm": Qwen2RMSNorm,
    "GemmaRMSNorm": GemmaRMSNorm,  # scales by (1 + weight)
    "T5LayerNorm": T5LayerNorm,
    "torch.nn.RMSNorm": nn.RMSNorm,
}


class Normed(nn.Module):
    def __init__(self, norm: nn.Module, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.norm = norm
        self.fc2 = nn.Linear(hidden, 4)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 2.0)  # GemmaRMSNorm starts at zeros

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(self.fc1(x)))


@pytest.mark.parametrize("name", NORMS)
def test_rms_norm_is_one_op_in_every_spelling(name: str) -> None:
    model = Normed(NORMS[name](16))
    ir = trace(model, (2, 8))
    assert [op.kind for op in ir.ops] == ["input", "linear", "rms_norm", "linear"]
    assert ir.ops[2].params == {"weight": "norm.weight"}
    assert ir.ops[2].attrs.get("weight_offset", False) == (name == "GemmaRMSNorm")
    graph = to_op_graph(model, (2, 8))
    assert [OP_KINDS[i] for i in graph.op] == ["input", "linear", "rms_norm", "linear"]
    assert graph.params[2] == [("norm.weight", (16,))]


@pytest.mark.parametrize("name", NORMS)
def test_rms_norm_weight_is_a_norm_node_feature_with_an_exact_inverse(name: str) -> None:
    torch.manual_seed(0)
    model = Normed(NORMS[name](16))
    graph = _assert_round_trip(model, (2, 8))
    nodes = _nodes_of(graph, "norm.weight")
    assert (graph.node_type[nodes] == NODE_TYPES.index("norm")).all()
    assert torch.equal(graph.x[nodes, NODE_SLOTS.index("weight")], model.norm.weight.detach())  # raw, even Gemma's


@pytest.mark.parametrize("name", NORMS)
def test_permuting_neurons_around_an_rms_norm_permutes_nodes_only(name: str) -> None:
    torch.manual_seed(0)
    model = Normed(NORMS[name](16))
    p = torch.randperm(16)
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permuted.fc1.weight.copy_(model.fc1.weight[p])
        permuted.fc1.bias.copy_(model.fc1.bias[p])
        permuted.norm.weight.copy_(model.norm.weight[p])
        permuted.fc2.weight.copy_(model.fc2.weight[:, p])
    x = torch.randn(2, 8)
    torch.testing.assert_close(model(x), permuted(x))
    graph = to_neuron_graph(model, (2, 8))
    moves = [(_nodes_of(graph, "fc1.bias"), p), (_nodes_of(graph, "norm.weight"), p)]
    _assert_permuted(graph, to_neuron_graph(permuted, (2, 8)), _sigma(graph, moves))


class BiasFreeLayerNorm(nn.Module):
    """A hand-written LayerNorm with one vector parameter: it centres, so it is not an RMS norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(-1, keepdim=True)
        return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def test_a_norm_that_centres_is_not_taken_for_rms_norm() -> None:
    kinds = [op.kind for op in trace(Normed(BiasFreeLayerNorm(16)), (2, 8)).ops]
    assert "rms_norm" not in kinds and "add" in kinds  # the subtraction is recorded as it is


# -- gated MLPs ----------------------------------------------------------------------------------------


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with SiLU, GeGLU with GELU."""

    def __init__(self, act: Callable[[Tensor], Tensor], dim: int = 8, hidden: int = 12) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


GATED = {
    "swiglu": lambda: GatedMLP(F.silu),
    "geglu": lambda: GatedMLP(F.gelu),
    "hf-LlamaMLP": lambda: LlamaMLP(
        LlamaConfig(hidden_size=8, intermediate_size=12, num_attention_heads=2, mlp_bias=True)
    ),
}


@pytest.mark.parametrize("name", GATED)
def test_gated_mlp_joins_gate_and_up_neurons_in_a_product(name: str) -> None:
    torch.manual_seed(0)
    graph = _assert_round_trip(GATED[name](), (3, 8))
    products = (graph.node_type == NODE_TYPES.index("scale")).nonzero().flatten()
    into = torch.isin(graph.edge_index[1], products)
    assert len(products) == 12 and int(into.sum()) == 24
    assert (graph.edge_type[into] == EDGE_TYPES.index("identity")).all()
    src, dst = graph.edge_index[:, into]
    factors = src[(dst * graph.num_nodes + src).argsort()].view(12, 2)  # product i's two factors
    expected = torch.stack([_nodes_of(graph, "gate_proj.bias"), _nodes_of(graph, "up_proj.bias")], dim=1)
    assert torch.equal(factors, expected)


@pytest.mark.parametrize("name", GATED)
def test_permuting_gated_mlp_hidden_neurons_permutes_nodes_only(name: str) -> None:
    torch.manual_seed(0)
    model = GATED[name]()
    p = torch.randperm(12)
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        for layer in ("gate_proj", "up_proj"):
            for key in ("weight", "bias"):
                getattr(getattr(permuted, layer), key).copy_(getattr(getattr(model, layer), key)[p])
        permuted.down_proj.weight.copy_(model.down_proj.weight[:, p])
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x), permuted(x))
    graph = to_neuron_graph(model, (3, 8))
    products = (graph.node_type == NODE_TYPES.index("scale")).nonzero().flatten()
    moves = [(_nodes_of(graph, "gate_proj.bias"), p), (_nodes_of(graph, "up_proj.bias"), p), (products, p)]
    _assert_permuted(graph, to_neuron_graph(permuted, (3, 8)), _sigma(graph, moves))


# -- rotary embeddings and grouped-query attention -------------------------------------------------------

DECODERS = {
    "llama": _llama,
    "mistral": lambda: _decoder(MistralForCausalLM, MistralConfig),
    "qwen2": lambda: _decoder(Qwen2ForCausalLM, Qwen2Config),
    "gemma": lambda: _decoder(GemmaForCausalLM, GemmaConfig, head_dim=8),
}


@pytest.mark.parametrize("name", DECODERS)
def test_rotary_gqa_decoder_round_trip_is_exact(name: str) -> None:
    torch.manual_seed(0)
    model = DECODERS[name]()
    ir = trace(model)
    assert sum(op.function == ROTARY for op in ir.ops) == 2  # q and k, nothing of neg/cat left
    assert not {"concat", "other"} & {op.kind for op in ir.ops if op.function != ROTARY}
    assert sum(op.kind == "rms_norm" for op in ir.ops) == 3
    _assert_round_trip(model)


def test_rotary_pairs_and_kv_groups_are_wired() -> None:
    """q/k features i and i + 4 of each 8-feature head are bound, with the pair's frequency exponent;
    each of the 2 k/v heads feeds the 2 query heads of its group."""
    graph = to_neuron_graph(_llama(attention_bias=True))
    q, k, v = (_nodes_of(graph, f"model.layers.0.self_attn.{n}_proj.bias") for n in "qkv")
    pair = graph.edge_type == EDGE_TYPES.index("qk_pair")
    for features, heads in ((q, 4), (k, 2)):
        bound = pair & torch.isin(graph.edge_index[0], features) & torch.isin(graph.edge_index[1], features)
        halves = features.view(heads, 2, 4)
        assert torch.equal(graph.edge_index[:, bound], torch.stack([halves[:, 0].flatten(), halves[:, 1].flatten()]))
        assert torch.equal(graph.edge_attr[bound, 0], (torch.arange(4) / 4).repeat(heads))
    head_nodes = (graph.node_type == NODE_TYPES.index("head")).nonzero().flatten()
    to_head = (graph.edge_type == EDGE_TYPES.index("head")) & torch.isin(graph.edge_index[0], k)
    assert torch.equal(graph.edge_index[1, to_head].view(2, 2, 8)[:, :, 0], head_nodes.view(2, 2))
    shared = (graph.edge_type == EDGE_TYPES.index("identity")) & torch.isin(graph.edge_index[0], v)
    assert int(shared.sum()) == 2 * len(v)  # one value feature for each of the two heads of its group


def _permute_llama(model: nn.Module, kv_order: Tensor, q_order: Tensor, v_dims: Tensor, hidden: Tensor):
    """Apply a permutation of k/v heads, of query heads (within their groups), of value features (within
    heads) and of MLP hidden neurons to a copy of a one-layer ``_llama``; returns it with the row orders."""
    head_dim = 8
    features = torch.arange(head_dim)
    q_rows = (q_order[:, None] * head_dim + features).flatten()  # rotary: no permutation inside q/k heads
    k_rows = (kv_order[:, None] * head_dim + features).flatten()
    v_rows = (kv_order[:, None] * head_dim + v_dims).flatten()
    o_cols = (q_order[:, None] * head_dim + v_dims).flatten()
    permuted = copy.deepcopy(model)
    attn, attn2 = model.model.layers[0].self_attn, permuted.model.layers[0].self_attn
    mlp, mlp2 = model.model.layers[0].mlp, permuted.model.layers[0].mlp
    with torch.no_grad():
        for name, rows in (("q_proj", q_rows), ("k_proj", k_rows), ("v_proj", v_rows)):
            for key in ("weight", "bias"):
                getattr(getattr(attn2, name), key).copy_(getattr(getattr(attn, name), key)[rows])
        attn2.o_proj.weight.copy_(attn.o_proj.weight[:, o_cols])
        for name in ("gate_proj", "up_proj"):
            for key in ("weight", "bias"):
                getattr(getattr(mlp2, name), key).copy_(getattr(getattr(mlp, name), key)[hidden])
        mlp2.down_proj.weight.copy_(mlp.down_proj.weight[:, hidden])
    return permuted, (q_rows, k_rows, v_rows, o_cols)


def test_permuting_heads_groups_values_and_gated_mlp_of_llama_permutes_nodes_only() -> None:
    torch.manual_seed(0)
    model = _llama(attention_bias=True, mlp_bias=True)
    kv_order = torch.tensor([1, 0])
    q_order = torch.tensor([3, 2, 0, 1])  # group 1's heads first, each group's two heads in some order
    v_dims, hidden = torch.randperm(8), torch.randperm(48)
    permuted, (q_rows, k_rows, v_rows, o_cols) = _permute_llama(model, kv_order, q_order, v_dims, hidden)
    ids = _ids()
    torch.testing.assert_close(model(ids).logits, permuted(ids).logits)  # a true symmetry

    graph = to_neuron_graph(model)
    prefix = "model.layers.0"
    moves = [
        (_nodes_of(graph, f"{prefix}.self_attn.q_proj.bias"), q_rows),
        (_nodes_of(graph, f"{prefix}.self_attn.k_proj.bias"), k_rows),
        (_nodes_of(graph, f"{prefix}.self_attn.v_proj.bias"), v_rows),
        ((graph.node_type == NODE_TYPES.index("head")).nonzero().flatten(), q_order),
        ((graph.node_type == NODE_TYPES.index("attention")).nonzero().flatten(), o_cols),
        (_nodes_of(graph, f"{prefix}.mlp.gate_proj.bias"), hidden),
        (_nodes_of(graph, f"{prefix}.mlp.up_proj.bias"), hidden),
        ((graph.node_type == NODE_TYPES.index("scale")).nonzero().flatten(), hidden),
    ]
    _assert_permuted(graph, to_neuron_graph(permuted), _sigma(graph, moves))


def test_permuting_rotary_pairs_is_no_symmetry_and_no_node_permutation() -> None:
    """Moving q/k pair i to pair j (in both halves of every head) changes the rotation frequencies and
    so the function: the graph must tell, through the frequency exponents on its pair edges."""
    torch.manual_seed(0)
    model = _llama(attention_bias=True)
    pairs = torch.tensor([1, 0, 3, 2])
    within = torch.cat([pairs, pairs + 4])
    permuted = copy.deepcopy(model)
    attn, attn2 = model.model.layers[0].self_attn, permuted.model.layers[0].self_attn
    with torch.no_grad():
        for name, heads in (("q_proj", 4), ("k_proj", 2)):
            rows = (torch.arange(heads)[:, None] * 8 + within).flatten()
            for key in ("weight", "bias"):
                getattr(getattr(attn2, name), key).copy_(getattr(getattr(attn, name), key)[rows])
    ids = _ids()
    assert not torch.allclose(model(ids).logits, permuted(ids).logits, atol=1e-4)
    graph = to_neuron_graph(model)
    q, k = (_nodes_of(graph, f"model.layers.0.self_attn.{n}_proj.bias") for n in "qk")
    moves = [
        (q, (torch.arange(4)[:, None] * 8 + within).flatten()),
        (k, (torch.arange(2)[:, None] * 8 + within).flatten()),
    ]
    with pytest.raises(AssertionError):  # with every pair edge valued 1 it would be a node permutation
        _assert_permuted(graph, to_neuron_graph(permuted), _sigma(graph, moves))


def _qwen3() -> nn.Module:
    return _randomized(_decoder(Qwen3ForCausalLM, Qwen3Config, head_dim=8))


def test_per_head_qk_norm_shares_its_weight_across_heads() -> None:
    """Qwen3 normalizes each of the 4 q heads (2 k heads) of 8 features on its own, with one 8-entry weight:
    each entry is one node, feeding feature i of every head's norm."""
    graph = _assert_round_trip(_qwen3())
    identity = graph.edge_type == EDGE_TYPES.index("identity")
    for name, heads in (("q", 4), ("k", 2)):
        shared = _nodes_of(graph, f"model.layers.0.self_attn.{name}_norm.weight")
        edges = graph.edge_index[:, identity & torch.isin(graph.edge_index[0], shared)]
        assert torch.equal(edges[0], shared.repeat(heads))
        normed = edges[1].view(heads, 8)
        assert len(normed.unique()) == heads * 8
        assert (graph.node_type[normed] == NODE_TYPES.index("norm")).all()


def test_permuting_heads_around_a_per_head_qk_norm_permutes_nodes_only() -> None:
    kv_order, q_order = torch.tensor([1, 0]), torch.tensor([3, 2, 0, 1])  # query heads stay in their groups

    def permute(model: nn.Module) -> None:
        attn = model.model.layers[0].self_attn
        _take(attn.q_proj.weight, _blocks(q_order, 8))
        _take(attn.k_proj.weight, _blocks(kv_order, 8))
        _take(attn.v_proj.weight, _blocks(kv_order, 8))
        _take(attn.o_proj.weight, _blocks(q_order, 8), dim=1)

    _assert_symmetry(_qwen3(), permute, {"input_ids": _ids()})


def test_multi_query_attention_counts_q_k_v_of_a_fused_projection() -> None:
    """GPTBigCode MQA: c_attn is 64 + 16 + 16 wide (4 query heads, one k/v head of 16)."""
    torch.manual_seed(0)
    config = GPTBigCodeConfig(vocab_size=VOCAB, n_embd=64, n_layer=1, n_head=4, n_positions=16, multi_query=True)
    graph = _assert_round_trip(GPTBigCodeForCausalLM(config).eval())
    qkv = _nodes_of(graph, "transformer.h.0.attn.c_attn.bias")
    q, k = qkv[:64], qkv[64:80]
    pair = graph.edge_type == EDGE_TYPES.index("qk_pair")
    assert torch.equal(graph.edge_index[0, pair], q)
    assert torch.equal(graph.edge_index[1, pair], k.repeat(4))
    assert int((graph.node_type == NODE_TYPES.index("head")).sum()) == 4


# -- errors name the real module --------------------------------------------------------------------------


class Exp(nn.Module):
    """A wrapper that is not part of the model (as transformers' ``kernels`` hub ``Func`` is)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)


_OUTSIDE = Exp()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return _OUTSIDE(self.fc(x))


def test_ops_of_a_wrapper_outside_the_model_belong_to_its_caller() -> None:
    model = nn.Sequential(Block())
    ir = trace(model, (2, 4))
    assert (ir.ops[-1].function, ir.ops[-1].module_path, ir.ops[-1].module_type) == ("exp", "0", "Block")
    with pytest.raises(UnsupportedModuleError, match=r"module '0' \(Block\): op 'other' \(exp\)"):
        to_neuron_graph(model, (2, 4))


def test_every_op_of_llama_names_a_module_of_the_model() -> None:
    """With ``kernels`` installed apply_rotary_pos_emb runs in a ``Func`` wrapper outside the model."""
    ir = trace(_llama())
    assert all(op.module_path for op in ir.ops if op.kind != "input")
    rotary = [op for op in ir.ops if op.function == ROTARY]
    assert {(op.module_path, op.module_type) for op in rotary} == {("model.layers.0.self_attn", "LlamaAttention")}


# -- the matched graph of a permuted network ----------------------------------------------------------------


def _randomized(model: nn.Module) -> nn.Module:
    """Every parameter and batch-norm statistic drawn at random, so that no two neurons look alike."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) / 4)
    return model.eval()


def _match(graph: Any, other: Any, rounds: int = 12) -> Tensor:
    """``sigma`` with node n of ``other`` being node ``sigma[n]`` of ``graph``, found by colour refinement
    on exact node and edge values (random weights leave no two nodes alike); ``_assert_permuted`` checks it."""
    names: dict[Any, int] = {}

    def colour(key: Any) -> int:
        return names.setdefault(key, len(names))

    states = []
    for g in (graph, other):
        rows = [tuple(row) for row in g.x.tolist()]
        nodes = [colour((t, row)) for t, row in zip(g.node_type.tolist(), rows, strict=True)]
        edges = [colour(("edge", t, tuple(a))) for t, a in zip(g.edge_type.tolist(), g.edge_attr.tolist(), strict=True)]
        states.append((nodes, *g.edge_index.tolist(), edges))
    for _ in range(rounds):
        refined = []
        for nodes, src, dst, edges in states:
            seen: list[list[tuple[str, int, int]]] = [[] for _ in nodes]
            for a, b, e in zip(src, dst, edges, strict=True):
                seen[b].append(("in", e, nodes[a]))
                seen[a].append(("out", e, nodes[b]))
            refined.append(([colour((nodes[n], tuple(sorted(seen[n])))) for n in range(len(nodes))], src, dst, edges))
        states = refined
    where: dict[int, list[int]] = {}
    for n, c in enumerate(states[0][0]):
        where.setdefault(c, []).append(n)
    return torch.tensor([where[c].pop(0) for c in states[1][0]])


def _assert_symmetry(model: nn.Module, permute: Callable[[nn.Module], None], inputs: Any) -> None:
    """``permute`` (acting in place on a copy) leaves the function unchanged and only relabels the graph's nodes."""
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permute(permuted)
    torch.testing.assert_close(_forward(model, inputs), _forward(permuted, inputs))
    graph, graph2 = to_neuron_graph(model, inputs), to_neuron_graph(permuted, inputs)
    _assert_permuted(graph, graph2, _match(graph, graph2))


def _take(tensor: Tensor, index: Tensor, dim: int = 0) -> None:
    tensor.copy_(tensor.index_select(dim, index))


def _blocks(order: Tensor, size: int) -> Tensor:
    """Row indices moving blocks of ``size`` rows to ``order``."""
    return (order[:, None] * size + torch.arange(size)).flatten()


# -- attention written as matmuls, relative position biases -----------------------------------------------


class EagerAttention(nn.Module):
    """Attention by hand (matmul, softmax, matmul) or by SDPA, on the same fused projection."""

    def __init__(self, eager: bool, heads: int = 2, dim: int = 8) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads, self.eager = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads, eager

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        if self.eager:
            out = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))


def test_attention_written_as_matmuls_has_the_graph_of_sdpa() -> None:
    torch.manual_seed(0)
    eager, sdpa = EagerAttention(eager=True), EagerAttention(eager=False)
    sdpa.load_state_dict(eager.state_dict())
    x = torch.randn(1, 5, 8)
    torch.testing.assert_close(eager(x), sdpa(x))
    graph, expected = to_neuron_graph(eager, x), to_neuron_graph(sdpa, x)
    for key in ("x", "node_type", "edge_index", "edge_attr", "edge_type"):
        assert torch.equal(graph[key], expected[key]), key


def test_multihead_attention_returning_its_weights_has_the_graph_of_sdpa() -> None:
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 3, 8)

    class Weights(nn.Module):
        def __init__(self, need_weights: bool) -> None:
            super().__init__()
            self.attn, self.need_weights = attn, need_weights

        def forward(self, x: Tensor) -> Tensor:
            return self.attn(x, x, x, need_weights=self.need_weights)[0]

    graph, expected = to_neuron_graph(Weights(True), x), to_neuron_graph(Weights(False), x)
    assert torch.equal(graph.edge_index, expected.edge_index) and torch.equal(graph.edge_attr, expected.edge_attr)


def _swin() -> nn.Module:
    return _randomized(
        timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, img_size=16, embed_dim=8, depths=(1,),
            num_heads=(2,), window_size=2, num_classes=3,
        )
    )  # fmt: skip


def test_permuting_swin_window_attention_heads_with_their_bias_table_permutes_nodes_only() -> None:
    """Swin's heads, each with its column of the relative position bias table (a parameter of the graph)."""
    order, dim, head_dim = torch.tensor([1, 0]), 8, 4

    def permute(model: nn.Module) -> None:
        attn = model.layers[0].blocks[0].attn
        rows = torch.cat([part * dim + _blocks(order, head_dim) for part in range(3)])
        _take(attn.qkv.weight, rows)
        _take(attn.qkv.bias, rows)
        _take(attn.proj.weight, _blocks(order, head_dim), dim=1)
        _take(attn.relative_position_bias_table, order, dim=1)

    model = _swin()
    graph = _assert_round_trip(model, torch.randn(1, 3, 16, 16))
    assert (graph.node_type == NODE_TYPES.index("head")).sum() == 2
    _assert_symmetry(model, permute, torch.randn(1, 3, 16, 16))


def test_permuting_levit_heads_with_their_attention_biases_permutes_nodes_only() -> None:
    """LeViT: per-head [q | k | v] blocks of 4 + 4 + 8 features behind one linear and batch norm, and an
    attention bias table of (heads, offsets)."""
    model = _randomized(
        timm.models.levit.Levit(img_size=64, num_classes=3, embed_dim=(16,), key_dim=4, depth=(1,), num_heads=(2,))
    )
    order, block = torch.tensor([1, 0]), 4 + 4 + 8

    def permute(model: nn.Module) -> None:
        attn = model.stages[0].blocks[0].attn
        rows = _blocks(order, block)
        _take(attn.qkv.linear.weight, rows)
        for key in ("weight", "bias", "running_mean", "running_var"):
            _take(getattr(attn.qkv.bn, key), rows)
        _take(attn.attention_biases, order)
        _take(attn.proj.ln.linear.weight, _blocks(order, 8), dim=1)

    _assert_parameters_round_trip(model, (1, 3, 64, 64))
    _assert_symmetry(model, permute, torch.randn(1, 3, 64, 64))


def _bloom() -> nn.Module:
    config = BloomConfig(vocab_size=VOCAB, hidden_size=16, n_layer=1, n_head=2)
    return _randomized(BloomForCausalLM(config))


def test_permuting_features_within_bloom_heads_permutes_nodes_only() -> None:
    """Bloom's fused projection interleaves heads, [q_h | k_h | v_h] for each head h, and scores are a
    ``baddbmm`` plus ALiBi: permuting q/k features (together) and value features within a head is a
    symmetry. (Head order is not, through ALiBi's per-head slopes, which are constants, not parameters.)"""
    qk, v = torch.tensor([3, 0, 7, 1, 2, 6, 5, 4]), torch.tensor([5, 1, 0, 7, 6, 2, 3, 4])

    def permute(model: nn.Module) -> None:
        attn = model.transformer.h[0].self_attention
        rows = torch.cat([torch.cat([h * 24 + qk, h * 24 + 8 + qk, h * 24 + 16 + v]) for h in range(2)])
        _take(attn.query_key_value.weight, rows)
        _take(attn.query_key_value.bias, rows)
        _take(attn.dense.weight, torch.cat([v, v + 8]), dim=1)

    model = _bloom()
    _assert_round_trip(model, {"input_ids": _ids()})
    _assert_symmetry(model, permute, {"input_ids": _ids()})


def _t5() -> nn.Module:
    config = T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    return _randomized(T5EncoderModel(config))


def test_permuting_t5_heads_with_their_relative_attention_bias_permutes_nodes_only() -> None:
    """T5's relative position bias is an embedding of (buckets, heads) added to the scores as SDPA's mask."""
    order = torch.tensor([1, 0])

    def permute(model: nn.Module) -> None:
        attn = model.encoder.block[0].layer[0].SelfAttention
        for name in ("q", "k", "v"):
            _take(getattr(attn, name).weight, _blocks(order, 4))
        _take(attn.o.weight, _blocks(order, 4), dim=1)
        _take(attn.relative_attention_bias.weight, order, dim=1)

    model = _t5()
    _assert_round_trip(model, {"input_ids": _ids()})
    _assert_symmetry(model, permute, {"input_ids": _ids()})


def _beit() -> nn.Module:
    return _randomized(
        timm.create_model(
            "beit_base_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2,
            num_classes=3,
        )
    )  # fmt: skip


def test_beit_relative_position_bias_reaches_both_graphs() -> None:
    """BEiT hands its bias table to SDPA as the mask: the op graph's attention node owns it, and the neuron
    graph gives it token nodes; its q and v biases are concatenated around a zero k bias."""
    model = _beit()
    ir = trace(model, (1, 3, 16, 16))
    attention = next(op for op in ir.ops if op.kind == "attention")
    assert attention.params == {"attn_mask": "blocks.0.attn.relative_position_bias_table"}
    graph = _assert_parameters_round_trip(model, (1, 3, 16, 16))
    qkv = _nodes_of(graph, "blocks.0.attn.q_bias").tolist() + _nodes_of(graph, "blocks.0.attn.v_bias").tolist()
    assert len(set(qkv)) == 16  # q and v biases on different neurons


def test_permuting_beit_heads_with_their_bias_table_permutes_nodes_only() -> None:
    order = torch.tensor([1, 0])

    def permute(model: nn.Module) -> None:
        attn = model.blocks[0].attn
        _take(attn.qkv.weight, torch.cat([part * 8 + _blocks(order, 4) for part in range(3)]))
        _take(attn.q_bias, _blocks(order, 4))
        _take(attn.v_bias, _blocks(order, 4))
        _take(attn.proj.weight, _blocks(order, 4), dim=1)
        _take(attn.relative_position_bias_table, order, dim=1)

    _assert_symmetry(_beit(), permute, torch.randn(1, 3, 16, 16))


def _assert_parameters_round_trip(model: nn.Module, inputs: Any = None) -> Any:
    """Every parameter comes back exactly (a model with non-persistent buffers, such as EVA's zero k bias)."""
    graph = to_neuron_graph(model, inputs)
    tensors = from_neuron_graph(graph)
    for name, value in model.named_parameters():
        assert torch.equal(tensors[name], value), name
    return graph


def test_eva_q_and_v_biases_around_a_zero_k_bias_sit_on_their_neurons() -> None:
    model = _randomized(
        timm.create_model(
            "eva02_tiny_patch14_224", pretrained=False, img_size=16, patch_size=8, embed_dim=16, depth=1,
            num_heads=2, num_classes=3, ref_feat_shape=(2, 2),
        )
    )  # fmt: skip
    graph = _assert_parameters_round_trip(model, (1, 3, 16, 16))
    q, v = (_nodes_of(graph, f"blocks.0.attn.{n}_bias") for n in "qv")
    assert torch.equal(v - q, torch.full((16,), 32))  # [q | k | v] neurons of one projection
    k = q + 16
    assert (graph.x[k, NODE_SLOTS.index("bias")] == 0).all()
    pair = graph.edge_type == EDGE_TYPES.index("qk_pair")
    rotary = pair & torch.isin(graph.edge_index[0], q) & torch.isin(graph.edge_index[1], q)
    assert torch.equal(graph.edge_index[:, rotary], q.view(-1, 2).T)  # interleaved: 2i with 2i + 1


def test_deit_class_and_distillation_tokens_each_have_their_nodes() -> None:
    model = _randomized(
        timm.create_model(
            "deit_tiny_distilled_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=8, depth=1,
            num_heads=2, num_classes=3,
        )
    )  # fmt: skip
    graph = _assert_round_trip(model, (1, 3, 16, 16))
    assert set(_nodes_of(graph, "cls_token").tolist()).isdisjoint(_nodes_of(graph, "dist_token").tolist())


# -- partial and interleaved rotary embeddings --------------------------------------------------------------


def _neox() -> nn.Module:
    config = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, rotary_pct=0.5,
    )  # fmt: skip
    return _randomized(GPTNeoXForCausalLM(config))


def test_partial_rotary_binds_only_the_rotated_features_of_a_fused_per_head_projection() -> None:
    """GPT-NeoX: [q_h | k_h | v_h] per head of 8, the first 4 of q and k rotated: pairs (0, 2), (1, 3)."""
    graph = to_neuron_graph(_neox())
    qkv = _nodes_of(graph, "gpt_neox.layers.0.attention.query_key_value.bias").reshape(2, 3, 8)
    pair = graph.edge_type == EDGE_TYPES.index("qk_pair")
    for part in (0, 1):  # q, k
        rows = qkv[:, part].contiguous()
        bound = pair & torch.isin(graph.edge_index[0], rows) & torch.isin(graph.edge_index[1], rows)
        expected = torch.stack([rows[:, [0, 1]].flatten(), rows[:, [2, 3]].flatten()])
        assert torch.equal(graph.edge_index[:, bound], expected)


def test_permuting_neox_heads_and_unrotated_features_permutes_nodes_only() -> None:
    order, passed = torch.tensor([1, 0]), torch.tensor([0, 1, 2, 3, 6, 4, 7, 5])  # rotated features stay

    def permute(model: nn.Module) -> None:
        attn = model.gpt_neox.layers[0].attention
        within = torch.cat([passed, 8 + passed, 16 + torch.arange(8)])
        rows = (order[:, None] * 24 + within).flatten()
        _take(attn.query_key_value.weight, rows)
        _take(attn.query_key_value.bias, rows)
        _take(attn.dense.weight, _blocks(order, 8), dim=1)

    _assert_symmetry(_neox(), permute, {"input_ids": _ids()})


def _neurons(graph: Any, weight: str) -> Tensor:
    """The output neurons of weight placement ``weight``, row by row."""
    p = next(p for p in graph.placements if p.name == weight)
    return graph.edge_index[1, p.start : p.start + p.rows * p.cols].view(p.rows, p.cols)[:, 0]


def test_gpt_j_rotates_interleaved_pairs_of_its_first_features() -> None:
    """GPT-J rotates features 2i and 2i + 1 of the first ``rotary_dim`` = 4 of each 8-feature head."""
    model = GPTJForCausalLM(GPTJConfig(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16, rotary_dim=4))
    ir = trace(model, {"input_ids": _ids()})
    assert {op.attrs["pairs"] for op in ir.ops if op.function == ROTARY} == {"interleaved"}
    graph = _assert_round_trip(_randomized(model), {"input_ids": _ids()})
    pair = graph.edge_type == EDGE_TYPES.index("qk_pair")
    for name in ("q_proj", "k_proj"):
        heads = _neurons(graph, f"transformer.h.0.attn.{name}.weight").view(2, 8)
        bound = pair & torch.isin(graph.edge_index[0], heads) & torch.isin(graph.edge_index[1], heads)
        assert torch.equal(
            graph.edge_index[:, bound], torch.stack([heads[:, [0, 2]].flatten(), heads[:, [1, 3]].flatten()])
        )
        assert torch.equal(graph.edge_attr[bound, 0], torch.tensor([0, 0.5, 0, 0.5]))


# -- channel split and shuffle; token mixing ---------------------------------------------------------------


class SplitShuffle(nn.Module):
    """ShuffleNetV2's unit in small: split the channels, transform one half, concatenate, shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.branch, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.stem(x).chunk(2, dim=1)
        y = torch.cat([x1, self.branch(x2)], dim=1)
        y = y.view(1, 2, 2, *y.shape[2:]).transpose(1, 2).reshape(y.shape)  # channel shuffle, 2 groups
        return self.head(y)


def _reads(graph: Any, weight: str) -> Tensor:
    """The input nodes weight placement ``weight`` reads, in column order."""
    p = next(p for p in graph.placements if p.name == weight)
    return graph.edge_index[0, p.start : p.start + p.rows * p.cols].view(p.rows, p.cols)[0]


def test_channel_split_and_shuffle_wire_each_channel_to_where_it_lands() -> None:
    graph = _assert_round_trip(SplitShuffle(), (1, 3, 4, 4))
    stem, branch = _nodes_of(graph, "stem.bias"), _nodes_of(graph, "branch.bias")
    assert torch.equal(_reads(graph, "branch.weight"), stem[2:])  # the second half of the split
    assert torch.equal(_reads(graph, "head.weight"), torch.stack([stem[:2], branch]).T.flatten())  # shuffled


def test_permuting_shufflenet_branch_channels_permutes_nodes_only() -> None:
    model = _randomized(ShuffleNetV2([2, 1, 1], [4, 8, 16, 32, 64], num_classes=3))
    p = torch.randperm(4, generator=torch.Generator().manual_seed(1))

    def permute(model: nn.Module) -> None:
        branch = model.stage2[1].branch2
        _take(branch[0].weight, p)
        _take(branch[3].weight, p)
        _take(branch[5].weight, p, dim=1)
        for bn in (branch[1], branch[4]):
            for key in ("weight", "bias", "running_mean", "running_var"):
                _take(getattr(bn, key), p)

    _assert_symmetry(model, permute, torch.randn(1, 3, 32, 32))


class TokenMLP(nn.Module):
    """Features embedded, an MLP along the 5 tokens (2 hidden units) added back, a head; the token linears
    written as a linear on the transposed activation, or as ``W @ x``."""

    def __init__(self, matmul: bool = False) -> None:
        super().__init__()
        self.embed, self.fc1, self.fc2, self.head = nn.Linear(3, 4), nn.Linear(5, 2), nn.Linear(2, 5), nn.Linear(4, 2)
        self.matmul = matmul

    def along_tokens(self, layer: nn.Linear, x: Tensor) -> Tensor:
        if self.matmul:
            return layer.weight @ x + layer.bias[:, None]
        return layer(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:  # (batch, 5 tokens, 3 features)
        h = self.embed(x)
        return self.head(h + self.along_tokens(self.fc2, torch.relu(self.along_tokens(self.fc1, h))))


@pytest.mark.parametrize("matmul", [False, True], ids=["transposed", "W@x"])
def test_token_mlp_worked_by_hand(matmul: bool) -> None:
    """Nodes in creation order: 3 inputs, 4 embedding neurons, fc1's 5 fixed positions, its 2 hidden units,
    fc2's 5 output positions, 4 sums (embedding feature i + token-mixed feature i), 2 outputs."""
    torch.manual_seed(0)
    graph = _assert_round_trip(TokenMLP(matmul), (1, 5, 3))
    types = (
        ["input"] * 3 + ["neuron"] * 4 + ["token"] * 5 + ["neuron"] * 2 + ["token"] * 5 + ["sum"] * 4 + ["output"] * 2
    )
    assert graph.node_type.tolist() == [NODE_TYPES.index(t) for t in types]
    assert _reads(graph, "fc1.weight").tolist() == [7, 8, 9, 10, 11]
    assert _neurons(graph, "fc1.weight").tolist() == _reads(graph, "fc2.weight").tolist() == [12, 13]
    assert _neurons(graph, "fc2.weight").tolist() == _nodes_of(graph, "fc2.bias").tolist() == [14, 15, 16, 17, 18]
    assert _reads(graph, "head.weight").tolist() == [19, 20, 21, 22]
    identity = graph.edge_index[:, graph.edge_type == EDGE_TYPES.index("identity")]
    assert identity.T.tolist() == [[3 + i, 19 + i] for i in range(4)] * 2  # the token MLP keeps the features


def test_token_linear_written_as_w_at_x_has_the_graph_of_a_transposed_linear() -> None:
    torch.manual_seed(0)
    model, matmul = TokenMLP(), TokenMLP(matmul=True)
    matmul.load_state_dict(model.state_dict())
    x = torch.randn(1, 5, 3)
    torch.testing.assert_close(model(x), matmul(x))
    graph, expected = to_neuron_graph(model, x), to_neuron_graph(matmul, x)
    for key in ("x", "node_type", "edge_index", "edge_attr", "edge_type"):
        assert torch.equal(graph[key], expected[key]), key


def _mixer(block: str = "mixer") -> nn.Module:
    """MLP-Mixer on 16 tokens of 8 features (token MLP of 4 hidden units, channel MLP of 32), ResMLP (Affine
    norms, one linear along tokens, layer scale) or gMLP (a spatial gating unit)."""
    blocks = {
        "mixer": {},
        "resmlp": dict(
            block_layer=timm.models.mlp_mixer.ResBlock, norm_layer=timm.models.mlp_mixer.Affine, mlp_ratio=4
        ),
        "gmlp": dict(block_layer=timm.models.mlp_mixer.SpatialGatingBlock, mlp_layer=timm.layers.GatedMlp, mlp_ratio=6),
    }
    return _randomized(
        timm.models.mlp_mixer.MlpMixer(
            num_classes=3, img_size=16, patch_size=4, num_blocks=2, embed_dim=8, **blocks[block]
        )
    )


MIXER_INPUT = (1, 3, 16, 16)


@pytest.mark.parametrize("block", ["mixer", "resmlp", "gmlp"])
def test_token_mixing_round_trip_is_exact(block: str) -> None:
    _assert_round_trip(_mixer(block), MIXER_INPUT)


class _StarMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.act = StarReLU(scale_value=0.8, bias_value=-0.3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_a_scalar_scale_or_shift_of_every_feature_is_one_node_feeding_them_all() -> None:
    """CAFormer's StarReLU, ``s * relu(x) ** 2 + b`` with scalars ``s`` and ``b``: the power is an activation, and
    each scalar sits on a node of its own with an identity edge to each of the 6 features it scales or shifts."""
    graph = _assert_round_trip(_StarMLP(), (1, 4))
    features = _neurons(graph, "fc1.weight")  # relu and the power pass them through
    src, dst = graph.edge_index
    for name, value in (("act.scale", 0.8), ("act.bias", -0.3)):
        (node,) = _nodes_of(graph, name)
        assert graph.node_type[node] == NODE_TYPES.index("token")
        assert graph.x[node].abs().max().item() == pytest.approx(abs(value)), name
        fed = dst[src == node]  # the scaled (shifted) features, each also fed by the feature it comes from
        assert len(fed.unique()) == 6
        assert set(src[torch.isin(dst, fed) & (src != node)].tolist()) == set(features.tolist()), name
        features = fed


def test_mixer_token_mlp_lives_in_a_token_space_of_its_own() -> None:
    """Each token MLP reads 16 fixed positions and writes 16, through 4 hidden units: the hidden units are
    neurons (one prunable channel group each), the positions tokens (in no group)."""
    graph = _assert_round_trip(_mixer(), MIXER_INPUT)
    groups = ChannelGroups.of(graph)
    for block in range(2):
        prefix = f"blocks.{block}.mlp_tokens"
        positions, hidden = _reads(graph, f"{prefix}.fc1.weight"), _neurons(graph, f"{prefix}.fc1.weight")
        assert torch.equal(_reads(graph, f"{prefix}.fc2.weight"), hidden)
        outputs = _neurons(graph, f"{prefix}.fc2.weight")
        assert (len(positions), len(hidden), len(outputs)) == (16, 4, 16)
        assert (graph.node_type[torch.cat([positions, outputs])] == NODE_TYPES.index("token")).all()
        assert (graph.node_type[hidden] == NODE_TYPES.index("neuron")).all()
        assert len(groups.node_group[hidden].unique()) == 4
        assert (groups.node_group[torch.cat([positions, outputs])] == -1).all()


def test_metanet_rewrites_every_parameter_of_a_mixer() -> None:
    model = _mixer()
    state = Metanet(MetanetConfig(node_dim=8, edge_dim=8, layers=1)).transform(model, MIXER_INPUT)
    for name, value in model.named_parameters():
        assert state[name].shape == value.shape and state[name].isfinite().all(), name


def test_permuting_mixer_token_and_channel_neurons_permutes_nodes_only() -> None:
    """Hidden units of the token MLPs, of the channel MLPs and the residual stream's features, all at once:
    the function stays, the graph's nodes move, and the token positions stay where they are."""
    tokens, hidden, stream = (torch.randperm(n, generator=torch.Generator().manual_seed(n)) for n in (4, 32, 8))

    def permute(model: nn.Module) -> None:
        pairs = [(model.stem.proj, 0), (model.norm, 0), (model.head, 1)]
        for block in model.blocks:
            pairs += [(block.norm1, 0), (block.norm2, 0), (block.mlp_channels.fc1, 1), (block.mlp_channels.fc2, 0)]
            for mlp, order in ((block.mlp_tokens, tokens), (block.mlp_channels, hidden)):
                _take(mlp.fc1.weight, order)
                _take(mlp.fc1.bias, order)
                _take(mlp.fc2.weight, order, dim=1)
        for layer, dim in pairs:
            _take(layer.weight, stream, dim)
            if dim == 0:
                _take(layer.bias, stream)

    model = _mixer()
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permute(permuted)
    x = torch.randn(MIXER_INPUT)
    torch.testing.assert_close(model(x), permuted(x))
    graph, graph2 = to_neuron_graph(model, MIXER_INPUT), to_neuron_graph(permuted, MIXER_INPUT)
    sigma = _match(graph, graph2)
    _assert_permuted(graph, graph2, sigma)
    fixed = (graph.node_type != NODE_TYPES.index("neuron")) & (graph.node_type != NODE_TYPES.index("norm"))
    fixed &= graph.node_type != NODE_TYPES.index("sum")
    assert torch.equal(sigma[fixed], fixed.nonzero().flatten())
    for block in range(2):
        units = _neurons(graph, f"blocks.{block}.mlp_tokens.fc1.weight")
        assert torch.equal(sigma[units], units[tokens])


class Upsampling(nn.Module):
    """A decoder's resize between two convs (MobileViT resizes its feature maps the same way)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.interpolate(self.conv1(x), scale_factor=2.0, mode="bilinear"))


def test_resizing_feature_maps_keeps_their_channels() -> None:
    graph = _assert_round_trip(Upsampling(), (1, 3, 6, 6))
    assert torch.equal(_reads(graph, "conv2.weight"), _nodes_of(graph, "conv1.bias"))


class TokenNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(3, 4), nn.LayerNorm(5)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.embed(x).transpose(1, 2))


def test_a_norm_along_tokens_is_refused_naming_the_module_and_cause() -> None:
    message = r"'norm' \(LayerNorm\).*'layer_norm' along tokens: axis 2 of its input \(1, 4, 5\) does not hold features"
    with pytest.raises(UnsupportedModuleError, match=message):
        to_neuron_graph(TokenNorm(), (1, 5, 3))
