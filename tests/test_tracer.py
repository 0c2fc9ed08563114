"""Tests for hypernets.graph.trace: op counts worked out from each architecture, parameter coverage,
data flow, meta-device tracing, determinism, and the errors for unsupported modules and bad inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import pytest
import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from hypernets import zoo
from hypernets.graph import (
    GraphConversionError,
    InvalidInputError,
    ModelIR,
    UnsupportedModuleError,
    register_module,
    trace,
)
from hypernets.graph import tracer as tracer_module
from hypernets.graph.inputs import Inputs


def tiny_vit(depth: int = 2, embed_dim: int = 32, num_heads: int = 2, **kwargs) -> VisionTransformer:
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=depth, embed_dim=embed_dim, num_heads=num_heads, **kwargs
    )


def tiny_gpt2(n_layer: int = 2, n_embd: int = 32, n_head: int = 2, device: str = "cpu") -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=96, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    with torch.device(device):
        return GPT2LMHeadModel(config)


class ResidualMLP(nn.Module):
    """A pre-norm residual MLP block and a head, written out by hand: x + fc2(gelu(fc1(norm(x))))."""

    def __init__(self, dim: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.fc2(self.act(self.fc1(self.norm(x)))))


# -- op counts derived from each architecture ------------------------------------------------------


def vit_kinds(depth: int, class_token: bool = True, avg_pool: bool = False) -> Counter:
    """Per block: qkv, proj, fc1, fc2 linears, one fused attention, two norms, two residual adds, one GELU.
    Plus the patch conv, the positional-embedding add, the final norm (``fc_norm`` when pooling by
    average), the head, the class-token concat and the token mean."""
    return Counter(
        input=1,
        conv=1,
        linear=4 * depth + 1,
        attention=depth,
        layer_norm=2 * depth + 1,
        add=2 * depth + 1,
        gelu=depth,
        concat=int(class_token),
        mean=int(avg_pool),
    )


def gpt2_kinds(n_layer: int) -> Counter:
    """Token and position embeddings and their sum, then per block what ViT has (c_attn, c_proj, c_fc,
    mlp.c_proj), then ln_f and the lm_head, which reads the tied token embedding."""
    return Counter(
        input=1,
        embedding=2,
        linear=4 * n_layer + 1,
        attention=n_layer,
        layer_norm=2 * n_layer + 1,
        add=2 * n_layer + 1,
        gelu=n_layer,
    )


def cifar_resnet_kinds(depth: int) -> Counter:
    """3n blocks of two conv-BN pairs, two ReLUs and an add; a stem conv-BN-ReLU; two projection
    shortcuts (conv-BN) where the width doubles; global pooling and the classifier."""
    n = (depth - 2) // 6
    return Counter(input=1, conv=6 * n + 3, batch_norm=6 * n + 3, relu=6 * n + 1, add=3 * n, avg_pool=1, linear=1)


def vgg_kinds(cfg: tuple[int | str, ...], batch_norm: bool) -> Counter:
    convs = sum(item != "M" for item in cfg)
    return Counter(
        input=1,
        conv=convs,
        batch_norm=convs if batch_norm else 0,
        relu=convs,
        max_pool=cfg.count("M"),
        avg_pool=1,
        linear=1,
    )


# torchvision ResNet-18: stem conv-BN-ReLU-maxpool, 8 basic blocks (2 conv-BN, 2 ReLU, 1 add each),
# 3 downsample conv-BN shortcuts, average pool, fc.
RESNET18_KINDS = Counter(input=1, conv=20, batch_norm=20, relu=17, max_pool=1, add=8, avg_pool=1, linear=1)


@dataclass(frozen=True)
class Case:
    """A model, its example inputs and the op count of each kind its architecture implies."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Inputs
    kinds: Counter


SMALL_VGG = (8, "M", 16, 16, "M", 32)

CASES = [
    Case("vit-d2-e64-p8-img32", lambda: tiny_vit(2, 64, 2, patch_size=8, img_size=32), None, vit_kinds(2)),
    Case(
        "vit-d3-e48-h3-p4-avg",
        lambda: tiny_vit(3, 48, 3, patch_size=4, img_size=32, class_token=False, global_pool="avg"),
        None,
        vit_kinds(3, class_token=False, avg_pool=True),
    ),
    Case("vit-d1-e192-p16-img224", lambda: tiny_vit(1, 192, 3), None, vit_kinds(1)),
    Case(
        "vit-class-token-avg",
        lambda: VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=4, global_pool="avg"),
        None,
        vit_kinds(1, class_token=True, avg_pool=True),
    ),
    Case("gpt2-l1-d32", lambda: tiny_gpt2(1, 32, 2), None, gpt2_kinds(1)),
    Case("gpt2-l3-d48-h4", lambda: tiny_gpt2(3, 48, 4), None, gpt2_kinds(3)),
    Case("gpt2-meta-l2", lambda: tiny_gpt2(2, device="meta"), None, gpt2_kinds(2)),
    Case("resnet18", torchvision.models.resnet18, (1, 3, 64, 64), RESNET18_KINDS),
    Case("cifar-resnet20", zoo.resnet20, zoo.input_shape("cifar"), cifar_resnet_kinds(20)),
    Case("cifar-resnet56", zoo.resnet56, zoo.input_shape("cifar"), cifar_resnet_kinds(56)),
    Case("mnist-resnet20", lambda: zoo.resnet20(in_channels=1), zoo.input_shape("mnist"), cifar_resnet_kinds(20)),
    Case("vgg11-bn", zoo.vgg, zoo.input_shape("cifar"), vgg_kinds(zoo.VGG_CONFIGS["vgg11"], True)),
    Case(
        "vgg-small-mnist",
        lambda: zoo.vgg(SMALL_VGG, in_channels=1, batch_norm=False),
        zoo.input_shape("mnist"),
        vgg_kinds(SMALL_VGG, False),
    ),
    Case("mlp", zoo.mlp, zoo.input_shape("mnist"), Counter(input=1, linear=3, relu=2)),
    Case(
        "small-cnn",
        lambda: zoo.small_cnn(in_channels=3, channels=(4, 8, 8)),
        zoo.input_shape("cifar"),
        Counter(input=1, conv=3, relu=3, max_pool=3, avg_pool=1, linear=1),
    ),
    Case("residual-mlp", ResidualMLP, (2, 8), Counter(input=1, layer_norm=1, linear=3, gelu=1, add=1)),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.name)
def traced(request) -> tuple[Case, nn.Module, ModelIR]:
    case = request.param
    model = case.build()
    return case, model, trace(model, case.inputs)


def test_op_counts_match_architecture(traced):
    case, _, ir = traced
    assert Counter(op.kind for op in ir.ops) == case.kinds  # kinds expected zero times must be absent


def test_every_parameter_is_read_by_an_op(traced):
    _, model, ir = traced
    names = [name for name, _ in model.named_parameters()]
    read = {name for op in ir.ops for name in op.params.values()}
    assert list(ir.parameters) == names
    assert read | set(ir.unused) == set(names)
    assert ir.unused == []
    assert all(ir.parameters[name].shape == tuple(p.shape) for name, p in model.named_parameters())


def test_ops_are_in_topological_order(traced):
    _, _, ir = traced
    assert [op.index for op in ir.ops] == list(range(len(ir.ops)))
    assert all(0 <= parent < op.index for op in ir.ops for parent in op.inputs)
    assert ir.outputs == [len(ir.ops) - 1]


def test_tracing_is_deterministic(traced):
    case, model, ir = traced
    assert trace(model, case.inputs) == ir


# -- data flow and model specifics ------------------------------------------------------------------


def test_residual_block_data_flow():
    ir = trace(ResidualMLP(), torch.zeros(2, 8))
    flow = [(op.kind, op.module_path, op.inputs) for op in ir.ops]
    assert flow == [
        ("input", "", []),
        ("layer_norm", "norm", [0]),
        ("linear", "fc1", [1]),
        ("gelu", "act", [2]),
        ("linear", "fc2", [3]),
        ("add", "", [0, 4]),  # x + branch: the skip connection reads the input directly
        ("linear", "head", [5]),
    ]
    assert ir.ops[2].params == {"weight": "fc1.weight", "bias": "fc1.bias"}
    assert ir.ops[2].out_shape == (2, 16)


class WithSpareLayer(nn.Module):
    """Owns a layer its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.spare = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_parameters_the_forward_never_reads_are_reported():
    ir = trace(WithSpareLayer(), (1, 4))
    assert list(ir.parameters) == ["used.weight", "used.bias", "spare.weight", "spare.bias"]
    assert ir.unused == ["spare.weight", "spare.bias"]
    assert "spare" in ir.summary()


@pytest.mark.parametrize("class_token", [True, False], ids=["class-token", "avg-pool"])
def test_vit_embeddings_and_final_norm(class_token):
    pooling = {} if class_token else {"class_token": False, "global_pool": "avg"}
    ir = trace(tiny_vit(img_size=32, patch_size=8, **pooling))
    owner = ir.owner()
    assert ir.ops[owner["pos_embed"]].kind == "add"
    assert ("cls_token" in owner) == class_token
    if class_token:
        assert ir.ops[owner["cls_token"]].kind == "concat"
    final_norm = "norm" if class_token else "fc_norm"  # timm normalizes after pooling when it averages
    assert ir.ops[owner[f"{final_norm}.weight"]].kind == "layer_norm"
    tokens = (32 // 8) ** 2 + class_token
    assert ir.ops[owner["blocks.0.attn.qkv.weight"]].out_shape == (1, tokens, 3 * 32)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_gpt2_lm_head_is_tied_to_token_embedding(device):
    ir = trace(tiny_gpt2(device=device))
    tied = ir.tied()
    assert list(tied) == ["transformer.wte.weight"]
    readers = [(ir.ops[i].kind, ir.ops[i].module_path) for i in tied["transformer.wte.weight"]]
    assert readers == [("embedding", "transformer.wte"), ("linear", "lm_head")]
    assert ir.owner()["transformer.wte.weight"] == tied["transformer.wte.weight"][0]


def test_meta_gpt2_traces_like_cpu_gpt2():
    assert trace(tiny_gpt2(3, device="meta")) == trace(tiny_gpt2(3, device="cpu"))


def test_meta_gpt2_large_allocates_no_parameters():
    """774M parameters would take 3 GB of float32 if tracing materialized them."""
    model = tiny_gpt2(n_layer=36, n_embd=1280, n_head=20, device="meta")
    process = psutil.Process()
    rss_before = process.memory_info().rss
    ir = trace(model)
    assert process.memory_info().rss - rss_before < 256 * 2**20
    assert all(p.is_meta for p in model.parameters())
    assert Counter(op.kind for op in ir.ops) == gpt2_kinds(36)
    assert ir.parameters["transformer.h.35.attn.c_attn.weight"].shape == (1280, 3 * 1280)


class TrainingProbe(nn.Module):
    """Reports the training flag it sees during forward (to a callable: tracing undoes writes to the module)."""

    def __init__(self, report: Callable[[bool], None]) -> None:
        super().__init__()
        self.report = report

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.report(self.training)
        return x


def test_training_flags_and_statistics_are_restored():
    seen: list[bool] = []
    probe = TrainingProbe(seen.append)
    model = nn.Sequential(zoo.resnet20(), probe).train()
    model[0].layer2.eval()  # a mixed state must come back flag by flag, not as one model.train()
    flags = [m.training for m in model.modules()]
    statistics = {name: b.clone() for name, b in model.named_buffers()}

    trace(model, zoo.input_shape("cifar"))

    assert seen == [False]
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(b, statistics[name]) for name, b in model.named_buffers())


# -- example inputs ---------------------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 3)
        self.right = nn.Linear(5, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.left(a) + self.right(b)


@pytest.mark.parametrize(
    "inputs",
    [torch.zeros(2, 4), (2, 4), torch.Size([2, 4]), [2, 4], (torch.zeros(2, 4),), {"input": torch.zeros(2, 4)}],
    ids=["tensor", "shape-tuple", "torch-size", "shape-list", "tuple-of-tensors", "dict"],
)
def test_single_input_forms(inputs):
    ir = trace(nn.Sequential(nn.Linear(4, 3)), inputs)
    assert [(op.kind, op.out_shape) for op in ir.ops] == [("input", (2, 4)), ("linear", (2, 3))]


@pytest.mark.parametrize(
    ("inputs", "arguments"),
    [
        ((torch.zeros(2, 4), torch.zeros(2, 5)), ["arg0", "arg1"]),
        ({"a": torch.zeros(2, 4), "b": torch.zeros(2, 5)}, ["a", "b"]),
    ],
    ids=["tuple", "dict"],
)
def test_several_inputs_become_input_ops(inputs, arguments):
    ir = trace(TwoInputs(), inputs)
    assert [op.attrs["argument"] for op in ir.ops if op.kind == "input"] == arguments
    assert [(op.kind, op.module_path, op.inputs) for op in ir.ops[2:]] == [
        ("linear", "left", [0]),
        ("linear", "right", [1]),
        ("add", "", [2, 3]),
    ]


# -- errors -----------------------------------------------------------------------------------------


class EinsumLinear(nn.Module):
    """A linear layer written with einsum: the tracer cannot tell which operand is the weight."""

    def __init__(self, d_in: int = 4, d_out: int = 5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,oi->bo", x, self.weight)


class WithEinsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = EinsumLinear()
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mix(x))


@pytest.fixture
def registry(monkeypatch) -> dict[type, str]:
    """An empty module registry for the test, so registrations never leak into other tests."""
    registered: dict[type, str] = {}
    monkeypatch.setattr(tracer_module, "_registered_modules", registered)
    return registered


def test_parameter_through_einsum_is_unsupported(registry):
    with pytest.raises(UnsupportedModuleError, match=r"'mix' \(EinsumLinear\).*einsum") as error:
        trace(WithEinsum(), (2, 4))
    assert "register_module(EinsumLinear, kind='linear')" in str(error.value)
    assert isinstance(error.value, GraphConversionError)
    assert isinstance(error.value, ValueError)


def test_registered_module_is_one_op_owning_its_parameters(registry):
    register_module(EinsumLinear, kind="linear")
    ir = trace(WithEinsum(), (2, 4))
    assert registry == {EinsumLinear: "linear"}
    assert [(op.kind, op.module_path, op.inputs) for op in ir.ops] == [
        ("input", "", []),
        ("linear", "mix", [0]),
        ("linear", "out", [1]),
    ]
    assert ir.ops[1].params == {"weight": "mix.weight"}
    assert ir.ops[1].out_shape == (2, 5)
    assert ir.unused == []


def test_register_module_rejects_unknown_kind(registry):
    with pytest.raises(ValueError, match="unknown op kind 'einsum'"):
        register_module(EinsumLinear, kind="einsum")
    assert registry == {}


class GatedPair(nn.Module):
    """Two linears combined by einsum: registered whole, both children have a 'weight' and a 'bias'."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,bi->bi", self.a(x), self.b(x))


def test_registered_module_owns_parameters_with_the_same_leaf_name(registry):
    register_module(GatedPair, kind="mul")
    ir = trace(nn.Sequential(GatedPair()), (2, 4))
    assert ir.ops[-1].params == {
        "a.weight": "0.a.weight",
        "a.bias": "0.a.bias",
        "b.weight": "0.b.weight",
        "b.bias": "0.b.bias",
    }
    assert ir.unused == []


# TransformerEncoderLayer (post-norm): self-attention as in_proj linear -> attention -> out_proj linear, then
# add & norm, linear1 -> relu -> linear2, add & norm. out_proj's forward is never called: its op is placed
# in it because it reads out_proj's parameters.
ENCODER_LAYER_FLOW = [
    ("input", "", [], {}),
    ("linear", "self_attn", [0], {"weight": "self_attn.in_proj_weight", "bias": "self_attn.in_proj_bias"}),
    ("attention", "self_attn", [1], {}),
    ("linear", "self_attn.out_proj", [2], {"weight": "self_attn.out_proj.weight", "bias": "self_attn.out_proj.bias"}),
    ("add", "", [0, 3], {}),
    ("layer_norm", "norm1", [4], {"weight": "norm1.weight", "bias": "norm1.bias"}),
    ("linear", "linear1", [5], {"weight": "linear1.weight", "bias": "linear1.bias"}),
    ("relu", "", [6], {}),
    ("linear", "linear2", [7], {"weight": "linear2.weight", "bias": "linear2.bias"}),
    ("add", "", [5, 8], {}),
    ("layer_norm", "norm2", [9], {"weight": "norm2.weight", "bias": "norm2.bias"}),
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_torch_transformer_encoder_layer_converts(device):
    with torch.device(device):
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    ir = trace(layer, (1, 4, 16))
    assert [(op.kind, op.module_path, op.inputs, op.params) for op in ir.ops] == ENCODER_LAYER_FLOW
    assert ir.ops[1].out_shape == (4, 1, 48)  # sequence first inside F.multi_head_attention_forward
    assert ir.ops[2].in_shapes == [(1, 2, 4, 8)] * 3  # q, k, v as (batch, heads, tokens, head_dim)
    assert ir.unused == []


class SelfAttention(nn.Module):
    """nn.MultiheadAttention called directly, returning attention weights by default."""

    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


@pytest.mark.parametrize(
    ("need_weights", "middle"),
    [(False, ["attention"]), (True, ["mul", "matmul", "softmax", "matmul"])],
    ids=["fused", "eager-with-weights"],
)
def test_multihead_attention_is_decomposed(need_weights, middle):
    ir = trace(SelfAttention(need_weights), (2, 5, 16))
    assert [op.kind for op in ir.ops] == ["input", "linear", *middle, "linear"]
    assert [op.module_path for op in ir.ops[1:]] == ["attn"] * (len(middle) + 1) + ["attn.out_proj"]
    assert ir.ops[1].params["weight"] == "attn.in_proj_weight"
    assert ir.ops[-1].params["weight"] == "attn.out_proj.weight"
    assert ir.unused == []


class CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.attn(x, memory, memory, need_weights=False)[0]


def test_reading_part_of_a_fused_projection_is_marked():
    """Cross-attention splits in_proj_weight into a q part and a k/v part: both linears read a slice."""
    ir = trace(CrossAttention(), (torch.zeros(1, 3, 16), torch.zeros(1, 5, 16)))
    q, kv = (op for op in ir.ops if op.kind == "linear" and op.params["weight"] == "attn.in_proj_weight")
    assert (q.out_shape, kv.out_shape) == ((3, 1, 16), (5, 1, 32))
    assert q.attrs["sliced"] == kv.attrs["sliced"] == ["attn.in_proj_weight", "attn.in_proj_bias"]
    assert "sliced" not in ir.ops[-1].attrs  # out_proj reads its whole weight


class Affine(nn.Module):
    """timm ResMLP's norm: ``beta + alpha * x`` in one fused call, optionally scaled."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.alpha, self.beta, self.value = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4)), value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, self.alpha, x, value=self.value)


@pytest.mark.parametrize("value", [1.0, 0.5])
def test_addcmul_of_parameters_is_a_product_then_a_sum(value):
    ir = trace(nn.Sequential(nn.Linear(3, 4), Affine(value)), (2, 3))
    expected = [("input", {}), ("linear", {"weight": "0.weight", "bias": "0.bias"}), ("mul", {"operand": "1.alpha"})]
    expected += [("mul", {})] if value != 1 else []  # times the constant
    assert [(op.kind, op.params) for op in ir.ops] == [*expected, ("add", {"operand": "1.beta"})]
    assert [op.inputs for op in ir.ops[1:]] == [[0], *[[i] for i in range(1, len(ir.ops) - 1)]]


@pytest.mark.parametrize(
    ("build", "inputs", "where"),
    [
        (zoo.resnet20, zoo.input_shape("mnist"), r"CifarResNet failed .* in module 'conv1' \(Conv2d\)"),
        (zoo.mlp, zoo.input_shape("cifar"), r"Sequential failed .* in module '1' \(Linear\)"),
    ],
    ids=["mnist-into-cifar-resnet", "cifar-into-mnist-mlp"],
)
def test_wrong_example_input_names_model_and_module(build, inputs, where):
    with pytest.raises(InvalidInputError, match=where):
        trace(build(), inputs)


@pytest.mark.parametrize(
    "build",
    [
        lambda: tiny_vit(1, 16, 2, patch_size=8, img_size=32),
        lambda: timm.models.mlp_mixer.MlpMixer(img_size=32, patch_size=8, num_blocks=1, embed_dim=16),
    ],
    ids=["vit-patch_embed", "mixer-stem"],
)
def test_image_size_is_guessed_from_the_patch_embedding(build):
    assert trace(build()).ops[0].out_shape == (1, 3, 32, 32)  # not the 224 of the pretrained config


def test_inputs_that_cannot_be_guessed_must_be_passed():
    with pytest.raises(InvalidInputError, match=r"cannot guess example inputs for Sequential: pass inputs="):
        trace(zoo.mlp())


@pytest.mark.parametrize("inputs", ["image", 3], ids=["str", "int"])
def test_malformed_inputs_are_rejected(inputs):
    with pytest.raises(InvalidInputError, match="must be a tensor, a shape"):
        trace(zoo.mlp(), inputs)
