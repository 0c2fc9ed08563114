"""FLOPs as users count them (metaprune.flops) and ONNX export checked by onnxruntime (metaprune.export)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import timm
import torch
import torch_pruning as tp
import torchvision
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel

from metaprune import export as export_module
from metaprune.export import ExportError, export_onnx
from metaprune.flops import count_flops

HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='needs pip install "hypernets[onnx]"')

IMAGE = (1, 28, 28)


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, in_chans=1, num_classes=10, depth=2
    ).eval()


def tiny_gpt2(*, use_cache: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    config.use_cache = use_cache
    return GPT2LMHeadModel(config).eval()


def pruned_vit() -> nn.Module:
    """Half the embedding and MLP channels removed; heads keep their width so attention stays valid."""
    model = tiny_vit()
    example = torch.randn(2, *IMAGE)
    heads = {block.attn.qkv: block.attn.num_heads for block in model.blocks}
    tp.pruner.BasePruner(
        model,
        example,
        tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.head],
        num_heads=heads,
        prune_num_heads=False,
        prune_head_dims=False,
        unwrapped_parameters=[(model.cls_token, 2), (model.pos_embed, 2)],  # embedding channels are the last dim
    ).step()
    return model


def pruned_resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    example = torch.randn(2, *IMAGE)
    tp.pruner.BasePruner(
        model, example, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[model.fc]
    ).step()
    return model.eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 10),
    )
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BatchNorm is really exercised
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model


def vit_flops_by_hand(model: nn.Module, batch: int) -> tuple[int, int]:
    """(total, attention) forward FLOPs of a timm ViT from its layer shapes: 2 * MACs of every matmul and conv."""
    patch = model.patch_embed.proj
    grid = model.patch_embed.grid_size[0] * model.patch_embed.grid_size[1]
    tokens = grid + model.num_prefix_tokens
    total = 2 * batch * grid * patch.out_channels * patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1]
    attention = 0
    for block in model.blocks:
        for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            total += 2 * batch * tokens * linear.in_features * linear.out_features
        # QK^T and AV, each 2 * B * heads * N^2 * head_dim
        attention += 2 * 2 * batch * block.attn.num_heads * tokens**2 * block.attn.head_dim
    total += 2 * batch * model.head.in_features * model.head.out_features  # on the class token only
    return total + attention, attention


# ----------------------------------------------------------------------------------------------- count_flops


def test_linear_counts_two_flops_per_mac_and_not_the_bias():
    inputs = torch.randn(3, 8)
    assert count_flops(nn.Linear(8, 4), inputs) == 2 * 3 * 8 * 4
    assert count_flops(nn.Linear(8, 4, bias=False), inputs) == 2 * 3 * 8 * 4


def test_conv_worked_by_hand():
    conv = nn.Conv2d(3, 5, kernel_size=3, stride=2, padding=1)
    # 9x9 input, stride 2, padding 1 -> 5x5 outputs; each output is 3 * 3 * 3 MACs, for 5 channels and 2 images
    assert count_flops(conv, torch.randn(2, 3, 9, 9)) == 2 * (2 * 5 * 5 * 5) * (3 * 3 * 3)


def test_tuple_and_dict_inputs_and_mode_restored():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 4), nn.Linear(6, 4)

        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            return self.a(x) + self.b(y)

    model = TwoInputs().train()
    x, y = torch.randn(3, 8), torch.randn(3, 6)
    expected = 2 * 3 * 4 * (8 + 6)
    assert count_flops(model, (x, y)) == expected
    assert count_flops(model, {"x": x, "y": y}) == expected
    assert model.training


def test_vit_counts_attention_matmuls():
    model = tiny_vit()
    total, attention = vit_flops_by_hand(model, batch=2)
    # N = 7 * 7 patches + 1 class token = 50, 3 heads of 64 channels, 2 blocks
    assert attention == 2 * (2 * 2 * 2 * 3 * 50**2 * 64)
    flops = count_flops(model, torch.randn(2, *IMAGE))
    assert flops == total
    # Torch-Pruning's MACs come from module hooks (its own formula for timm's Attention included); both counts
    # see the same matmuls up to the elementwise work (biases, softmax, GELU) that only Torch-Pruning adds.
    macs, _ = tp.utils.count_ops_and_params(model, torch.randn(1, *IMAGE))
    assert abs(flops / 2 - 2 * macs) / flops < 0.01


def test_vit_fused_and_explicit_attention_count_the_same():
    """On CPU, F.scaled_dot_product_attention runs a kernel FlopCounterMode has no formula for; the explicit
    ``q @ k.T`` path is counted as plain matmuls. Both must agree."""
    model = tiny_vit()
    inputs = torch.randn(2, *IMAGE)
    fused = count_flops(model, inputs)
    for block in model.blocks:
        block.attn.fused_attn = False
    assert count_flops(model, inputs) == fused


def test_pruned_vit_by_hand():
    model = pruned_vit()
    assert model.blocks[0].mlp.fc1.in_features < 192  # the embedding really is narrower
    total, attention = vit_flops_by_hand(model, batch=1)
    assert count_flops(model, torch.randn(1, *IMAGE)) == total
    assert attention > 0


def test_gpt2_with_input_ids_kwargs():
    model = tiny_gpt2()
    batch, tokens, width, heads, vocab, layers = 2, 16, 64, 4, 100, 2
    ids = torch.randint(0, vocab, (batch, tokens))
    per_layer = (
        2 * batch * tokens * width * 3 * width  # c_attn
        + 2 * batch * tokens * width * width  # c_proj
        + 2 * 2 * batch * tokens * width * 4 * width  # mlp c_fc and c_proj
        + 2 * 2 * batch * heads * tokens**2 * (width // heads)  # QK^T and AV (causal mask not discounted)
    )
    lm_head = 2 * batch * tokens * width * vocab
    assert count_flops(model, {"input_ids": ids}) == layers * per_layer + lm_head


# ----------------------------------------------------------------------------------------------- export_onnx


def _check_single_dynamic_file(path) -> None:
    import onnx

    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no external data file beside it
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension


@needs_onnx
def test_small_cnn_with_batchnorm(tmp_path):
    import onnxruntime

    model = small_cnn().train()
    path = tmp_path / "model.onnx"
    difference = export_onnx(model, torch.randn(1, *IMAGE), path)
    assert difference < 1e-4
    assert model.training  # mode restored
    _check_single_dynamic_file(path)
    batch = torch.randn(5, *IMAGE)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model.eval()(batch), atol=1e-4, rtol=1e-3)


@needs_onnx
@pytest.mark.slow  # 4-9 s on two shared cores: pruning plus export of eight residual blocks
def test_pruned_resnet18(tmp_path):
    model = pruned_resnet18()
    assert model.conv1.out_channels == 32
    path = tmp_path / "resnet.onnx"
    assert export_onnx(model, torch.randn(3, *IMAGE), path) < 1e-4
    _check_single_dynamic_file(path)


@needs_onnx
def test_pruned_vit(tmp_path):
    path = tmp_path / "vit.onnx"
    assert export_onnx(pruned_vit(), torch.randn(1, *IMAGE), path) < 1e-4
    _check_single_dynamic_file(path)


@needs_onnx
def test_gpt2_with_kv_cache_fails_clearly_or_exports(tmp_path):
    """transformers 5 returns a DynamicCache, which torch.export cannot flatten: a clear error, not a crash."""
    try:
        difference = export_onnx(tiny_gpt2(use_cache=True), torch.randint(0, 100, (1, 16)), tmp_path / "lm.onnx")
    except ExportError as error:
        assert "use_cache = False" in str(error)
    else:
        assert difference < 1e-4


@needs_onnx
def test_gpt2_without_kv_cache(tmp_path):
    path = tmp_path / "gpt2.onnx"
    assert export_onnx(tiny_gpt2(use_cache=False), torch.randint(0, 100, (1, 16)), path) < 1e-4
    _check_single_dynamic_file(path)


@needs_onnx
def test_untraceable_model_raises_export_error(tmp_path):
    class DataDependentBranch(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(ExportError, match="cannot export DataDependentBranch"):
        export_onnx(DataDependentBranch(), torch.randn(2, 3), tmp_path / "branch.onnx")


@needs_onnx
def test_mismatch_raises_export_error(tmp_path):
    class Noisy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x + torch.rand_like(x)

    with pytest.raises(ExportError, match="does not reproduce output 0"):
        export_onnx(Noisy(), torch.randn(2, 3), tmp_path / "noisy.onnx")


@needs_onnx
def test_too_large_for_one_file_raises_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "MAX_INITIALIZER_BYTES", 100)
    path = tmp_path / "big.onnx"
    with pytest.raises(ExportError, match="external data file"):
        export_onnx(nn.Linear(8, 4), torch.randn(2, 8), path)
    assert not path.exists()


def test_missing_onnxruntime_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ExportError, match=r'pip install "hypernets\[onnx\]"'):
        export_onnx(nn.Linear(8, 4), torch.randn(2, 8), tmp_path / "model.onnx")
