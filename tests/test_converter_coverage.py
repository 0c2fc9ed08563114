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
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor
from transformers import (
    BertConfig,
    BertModel,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTBigCodeConfig,
    GPTBigCodeForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
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


def test_rotary_on_part_of_a_fused_projection_is_refused_with_its_cause() -> None:
    """GPT-NeoX rotates a quarter of each head of its fused per-head q/k/v: not yet followed, and said so."""
    config = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=16,
    )  # fmt: skip
    with pytest.raises(UnsupportedModuleError, match=r"'gpt_neox.layers.0.attention' .*rotary .*part of a projection"):
        to_neuron_graph(GPTNeoXForCausalLM(config))


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


@pytest.mark.parametrize(
    ("build", "inputs", "message"),
    [
        (
            lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=3),
            (1, 3, 32, 32),
            r"'stage2.1.branch2.0' \(Conv2d\).*it reads 24 features where the op before it made 48.*split",
        ),
        (
            lambda: timm.models.mlp_mixer.MlpMixer(
                num_classes=3, img_size=16, patch_size=8, num_blocks=1, embed_dim=16
            ),
            (1, 3, 16, 16),
            r"'blocks.0.mlp_tokens.fc1' \(Linear\).*it reads 4 features where the op before it made 16.*axes swapped",
        ),
    ],
    ids=["shufflenet-channel-split", "mixer-token-mixing"],
)
def test_a_layer_reading_other_features_than_were_made_says_why(build, inputs, message) -> None:
    with pytest.raises(UnsupportedModuleError, match=message):
        to_neuron_graph(build(), inputs)
