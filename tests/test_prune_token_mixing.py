"""Layers Torch-Pruning's dependency graph reads wrongly: linears along tokens (MLP-Mixer, ResMLP, gMLP) and linears
read outside their forward (EVA) are kept whole; fused linears split into equal chunks (Phi-3, timm's GluMlp) lose
the same channels from every chunk."""

import copy

import pytest
import timm
import torch
from timm.layers import BlurPool2d
from timm.models.coat import CoaT
from timm.models.dpn import DPN
from timm.models.efficientformer import EfficientFormer
from timm.models.efficientvit_mit import EfficientVit
from timm.models.mlp_mixer import MlpMixer
from timm.models.pit import PoolingVisionTransformer
from timm.models.sequencer import Sequencer2d
from timm.models.tiny_vit import TinyVit
from timm.models.xcit import XCA
from torch import nn
from torchvision.models.shufflenetv2 import ShuffleNetV2

from metaprune.consistency import PrunedModelBrokenError
from metaprune.prune import prune
from metaprune.token_mixing import Misreadings, misreadings

pytestmark = pytest.mark.usefixtures("one_thread")
_NOTHING_MISREAD = Misreadings(
    [], {}, [], read_outside=[], multiplied=[], stream_writers=[], recurrent=[], attention=[], attention_unlike_vit=[]
)


def _blind(monkeypatch) -> None:
    """Let pruning see the model as Torch-Pruning alone does."""
    monkeypatch.setattr("metaprune.prune.misreadings", lambda model, example_inputs, whole_inputs=(): _NOTHING_MISREAD)


def _mixer() -> nn.Module:
    torch.manual_seed(0)
    return MlpMixer(num_classes=10, img_size=32, in_chans=1, patch_size=8, num_blocks=2, embed_dim=32).eval()


class _Transposed(nn.Module):
    """A linear along tokens next to a channels-last linear after a permute, which reads features (ConvNeXt's
    layout): only the first is along tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.channels = nn.Linear(4, 4)
        self.tokens = nn.Linear(9, 9)

    def forward(self, x):
        x = self.channels(self.conv(x).permute(0, 2, 3, 1)).flatten(1, 2)  # (batch, 9 tokens, 4 features)
        return self.tokens(x.transpose(1, 2)).transpose(1, 2)


def test_only_linears_reading_a_transposed_sequence_are_found() -> None:
    assert misreadings(_Transposed(), torch.randn(2, 1, 3, 3)).along_tokens == ["tokens"]
    assert misreadings(_mixer(), torch.randn(2, 1, 32, 32)).along_tokens == [
        f"blocks.{block}.mlp_tokens.{fc}" for block in range(2) for fc in ("fc1", "fc2")
    ]


def test_a_mixer_prunes_its_channel_mlps_and_equals_the_dense_model_with_those_channels_zeroed() -> None:
    model, x = _mixer(), torch.randn(2, 1, 32, 32)
    result = prune(model, x, speedup=1.5)
    pruned, dense = result.model.eval(), dict(model.named_parameters())
    assert result.speedup >= 1.5
    zeroed = copy.deepcopy(model)
    for name, param in pruned.named_parameters():
        if "mlp_channels" not in name:  # token mixing, norms, embedding and head are whole
            assert torch.equal(param, dense[name]), name
    for block, original in zip(pruned.blocks, zeroed.blocks, strict=True):
        fc1, dense_fc1 = block.mlp_channels.fc1, original.mlp_channels.fc1
        assert fc1.out_features < dense_fc1.out_features
        # Pruning keeps rows unchanged and in order: find them, and zero the others' hidden units (GELU(0) = 0).
        kept = [i for i in range(dense_fc1.out_features) if (dense_fc1.weight[i] == fc1.weight).all(1).any()]
        assert len(kept) == fc1.out_features
        removed = sorted(set(range(dense_fc1.out_features)) - set(kept))
        with torch.no_grad():
            dense_fc1.weight[removed] = 0
            dense_fc1.bias[removed] = 0
        assert torch.equal(block.mlp_channels.fc2.weight, original.mlp_channels.fc2.weight[:, kept])
    torch.testing.assert_close(pruned(x), zeroed(x))
    assert pruned(x).shape == (2, 10)


def test_a_torch_pruning_failure_stays_an_internal_error_that_says_where_it_happened(monkeypatch) -> None:
    _blind(monkeypatch)
    with pytest.raises(IndexError) as failure:  # the graph couples the mixer's tokens with its channels
        prune(_mixer(), torch.randn(2, 1, 32, 32), speedup=1.5)
    assert "Torch-Pruning failed while pruning step 1 of 100" in "".join(failure.value.__notes__)


class _FusedGLU(nn.Module):
    """A gated MLP whose gate and value come from one linear chunked on the last axis (Phi-3's ``gate_up_proj``),
    after a learned 3-d position table (a ViT's ``pos_embed``, which makes Torch-Pruning turn off split mappings)."""

    def __init__(self, sizes: tuple[int, int] = (16, 16)) -> None:
        super().__init__()
        self.sizes = sizes
        self.embed = nn.Linear(4, 8)
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.gate_up = nn.Linear(8, sum(sizes))
        self.down = nn.Linear(sizes[1], 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x) + self.pos
        fused = self.gate_up(h)
        gate, up = fused.chunk(2, dim=-1) if self.sizes[0] == self.sizes[1] else fused.split(self.sizes, dim=-1)
        return self.head(h + self.down(torch.nn.functional.silu(gate[..., : self.sizes[1]]) * up))


def test_fused_linears_lose_the_same_channels_from_every_chunk() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 5, 4)
    dense = _FusedGLU()
    assert misreadings(dense, x).chunked == {"gate_up": 2}
    pruned = prune(dense, x, speedup=1.6, ignored_layers=["head", "embed"]).model  # several steps of the schedule
    hidden = pruned.down.in_features
    assert pruned.gate_up.out_features == 2 * hidden < 32
    kept = [i for i in range(32) if (dense.gate_up.weight[i] == pruned.gate_up.weight).all(1).any()]
    assert kept[hidden:] == [i + 16 for i in kept[:hidden]]  # the same channels from gate and from value
    zeroed = copy.deepcopy(dense)
    removed = sorted(set(range(16)) - set(kept[:hidden]))
    with torch.no_grad():  # silu(0) = 0: a removed channel's gate at zero removes its contribution
        zeroed.gate_up.weight[removed] = 0
        zeroed.gate_up.bias[removed] = 0
    torch.testing.assert_close(pruned(x), zeroed(x))


def test_fused_linears_split_unequally_are_kept_whole() -> None:
    from metaprune.prune import ImpossibleTargetError

    x = torch.randn(1, 5, 4)
    model = _FusedGLU(sizes=(24, 8))
    assert misreadings(model, x).split_unequally == ["gate_up"]
    with pytest.raises(ImpossibleTargetError):  # the fused MLP kept whole leaves nothing to prune: a usage error
        prune(model, x, speedup=1.1, ignored_layers=["head", "embed"])


class _ReadOutside(nn.Module):
    """EVA's attention: ``qkv.weight`` read by ``F.linear`` with a bias assembled from parts, on a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))
        self.proj = nn.Linear(8, 8)
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        q, k, v = nn.functional.linear(self.norm(h), weight=self.qkv.weight, bias=bias).chunk(3, dim=-1)
        h = h + self.proj(nn.functional.scaled_dot_product_attention(q, k, v))
        return self.head(h + self.fc2(self.fc1(h).relu()))


def test_a_linear_read_outside_its_forward_keeps_its_input_whole(monkeypatch) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 5, 4)
    model = _ReadOutside()
    # the norm that feeds it, and every layer writing into the residual stream it reads
    misread = misreadings(model, x)
    assert misread.read_outside == ["norm"] and misread.stream_writers == ["embed", "proj", "fc2", "head"]
    pruned = prune(model, x, speedup=1.3, ignored_layers=["head"]).model
    assert pruned.qkv.in_features == pruned.embed.out_features == 8  # the residual stays whole
    assert pruned.fc1.out_features < 32
    assert pruned(x).shape == (1, 5, 3)
    _blind(monkeypatch)
    with pytest.raises(IndexError):  # what Torch-Pruning does with it: cut the residual under qkv
        prune(model, x, speedup=1.3, ignored_layers=["head"])


class _Multiplied(nn.Module):
    """FastViT's ``conv_kxk``: a grouped convolution making two channels from each one it reads, on a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU(), nn.Conv2d(32, 8, 1))
        self.expand = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.mlp(h)
        return self.head(self.expand(h).mean((2, 3)))


def test_a_grouped_convolution_with_a_multiplier_keeps_the_stream_it_reads() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    model = _Multiplied().eval()
    misread = misreadings(model, x)
    assert misread.multiplied == ["expand"] and misread.stream_writers == ["stem", "mlp.2", "head"]
    pruned = prune(model, x, speedup=1.2).model
    assert pruned.stem.out_channels == 8 and pruned.expand.weight.shape == (16, 1, 3, 3)
    assert pruned.mlp[0].out_channels < 32
    assert pruned(x).shape == (1, 3)


class _Mixer(nn.Module):
    """Attention under another name (ConViT's ``GPSA``): separate q, k, v and a softmax in its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        q, k, v = (f(x).unflatten(-1, (2, 4)).transpose(1, 2) for f in (self.q, self.k, self.v))
        attention = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.out((attention @ v).transpose(1, 2).flatten(2))


class _TalkingHeads(nn.Module):
    """A timm-style ``qkv``/``proj``/``num_heads`` attention with one more linear, across heads (CaiT)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 2
        self.qkv, self.proj, self.proj_l = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(2, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        scores = self.proj_l((q @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mixer, self.heads = nn.Linear(4, 8), _Mixer(), _TalkingHeads()
        self.fc1, self.fc2, self.head = nn.Linear(8, 32), nn.Linear(32, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.heads(h + self.mixer(h))
        return self.head(h + self.fc2(self.fc1(h).relu()))


def test_attention_is_found_by_its_softmax_and_only_plain_vit_attention_is_cut_apart() -> None:
    from metaprune.prune import is_attention

    torch.manual_seed(0)
    x = torch.randn(1, 5, 4)
    model = _Blocks().eval()
    assert misreadings(model, x).attention == ["mixer", "heads"]
    assert misreadings(model, x).attention_unlike_vit == []
    assert not is_attention(model.heads)  # proj_l mixes heads: not the ViT attention whose heads are registered
    pruned = prune(model, x, speedup=1.2).model
    kept = ["mixer.q", "mixer.k", "mixer.v", "mixer.out", "heads.qkv", "heads.proj", "heads.proj_l"]
    assert all(
        dict(pruned.named_modules())[name].weight.shape == model.get_submodule(name).weight.shape for name in kept
    )
    assert pruned.fc1.out_features < 32
    assert pruned(x).shape == (1, 5, 3)


class _CrossCovariance(nn.Module):
    """timm's XCiT attention (EdgeNeXt's too) between a token embedding and an MLP: its softmax runs over each
    head's channels, so its heads cannot be cut apart as a ViT's are."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.xca = nn.Linear(4, 16), XCA(16, num_heads=2)
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.xca(h)
        return self.head(h + self.fc2(self.fc1(h).relu()))


def test_cross_covariance_attention_is_kept_whole() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 5, 4)
    model = _CrossCovariance().eval()
    found = misreadings(model, x)  # its softmax is over the 8 channels of each head, not the 5 tokens
    assert (found.attention, found.attention_unlike_vit) == (["xca"], ["xca"])
    pruned = prune(model, x, speedup=1.2).model
    assert (pruned.xca.qkv.weight.shape, pruned.xca.proj.weight.shape) == ((48, 16), (16, 16))
    assert pruned.fc1.out_features < 32
    assert pruned(x).shape == (1, 5, 3)


def test_attention_with_values_wider_than_its_keys_is_kept_whole() -> None:
    """EfficientFormer's attention fuses keys of 32 channels and values of 128 per head into one ``qkv``: not the
    equal thirds of a ViT's, so its heads are not cut apart (Torch-Pruning indexed past its scores)."""
    torch.manual_seed(0)
    model = EfficientFormer(depths=(1, 1, 1, 2), embed_dims=(16, 16, 32, 32), num_vit=1, num_classes=3).eval()
    x = torch.randn(1, 3, 224, 224)  # its attention biases are sized for 224 x 224 images
    result = prune(model, x, speedup=1.3)
    attention, dense = result.model.stages[3].blocks[-1].token_mixer, model.stages[3].blocks[-1].token_mixer
    assert (attention.qkv.weight.shape, attention.proj.weight.shape) == ((1536, 32), (32, 1024))
    assert torch.equal(attention.qkv.weight, dense.qkv.weight)
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


def test_attention_laying_each_heads_query_key_and_value_side_by_side_is_kept_whole() -> None:
    """TinyViT splits ``qkv`` as ``(heads, 3 * head_dim)``, not a ViT's ``(3, heads, head_dim)``."""
    torch.manual_seed(0)
    model = TinyVit(
        num_classes=3, embed_dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_sizes=(2,) * 4
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    found = misreadings(model, x)
    assert found.attention_unlike_vit == found.attention == [f"stages.{i}.blocks.0.attn" for i in (1, 2, 3)]
    result = prune(model, x, speedup=1.3)
    for i in (1, 2, 3):
        dense, pruned = model.stages[i].blocks[0].attn, result.model.stages[i].blocks[0].attn
        assert torch.equal(pruned.qkv.weight, dense.qkv.weight) and torch.equal(pruned.proj.weight, dense.proj.weight)
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


def test_channel_ranges_of_a_convolution_keep_the_space_they_slice() -> None:
    """DPN slices each block's last convolution into a residual and a dense path (``x[:, :n]``, ``x[:, n:]``)."""
    torch.manual_seed(0)
    model = DPN(k_sec=(1, 1, 1, 1), inc_sec=(8, 8, 8, 8), num_init_features=16, k_r=32, groups=4, num_classes=3)
    x = torch.randn(1, 3, 32, 32)
    found = misreadings(model.eval(), x)
    assert {f"features.conv{i}_1.c1x1_c.conv" for i in (2, 3, 4, 5)} <= set(found.stream_writers)
    result = prune(model, x, speedup=1.3)
    assert result.model.features.conv2_1.c1x1_c.conv.out_channels == model.features.conv2_1.c1x1_c.conv.out_channels
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


def test_a_fixed_filter_outside_any_layer_keeps_the_channels_it_filters() -> None:
    """TResNet's anti-aliasing ``BlurPool2d`` convolves each channel of a padded map with a buffer, not a
    parameter: Torch-Pruning cannot cut the buffer, so the channels it filters stay whole."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), BlurPool2d(16, filt_size=3, stride=2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3),
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 20, 20)
    assert "0" in misreadings(model, x).stream_writers
    result = prune(model, x, speedup=1.3)
    assert result.model[0].out_channels == 16 and result.model[4].out_channels < 32
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


def test_recurrent_layers_are_kept_whole() -> None:
    """Sequencer's bidirectional LSTMs along rows and columns: Torch-Pruning cuts an LSTM's hidden units along the
    wrong axes, so their weights stay as they were, while the MLPs between them are pruned."""
    torch.manual_seed(0)
    model = Sequencer2d(
        num_classes=3,
        img_size=32,
        layers=(1, 1),
        patch_sizes=(4, 2),
        embed_dims=(16, 32),
        hidden_sizes=(8, 16),
        mlp_ratios=(3.0, 3.0),
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    lstms = [name for name, m in model.named_modules() if isinstance(m, nn.LSTM)]
    assert misreadings(model, x).recurrent == lstms and len(lstms) == 4
    result = prune(model, x, speedup=1.3)
    for name in lstms:
        dense, pruned = model.get_submodule(name), result.model.get_submodule(name)
        assert pruned.hidden_size == dense.hidden_size
        assert torch.equal(pruned.weight_hh_l0_reverse, dense.weight_hh_l0_reverse), name
    assert result.model.stages[0].blocks[0].mlp_channels.fc1.out_features < 48
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


def test_layers_of_attention_registered_elsewhere_first_are_kept_whole() -> None:
    """CoaT's attention holds a positional encoding the model registered before it (``crpe1``): its convolutions
    are kept as modules, not by a name under the attention that ``named_modules`` never gives."""
    torch.manual_seed(0)
    model = CoaT(
        img_size=32, patch_size=4, embed_dims=(16,) * 4, serial_depths=(1,) * 4, parallel_depth=0, num_heads=8,
        mlp_ratios=(2,) * 4, num_classes=3,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    result = prune(model, x, speedup=1.3)
    dense, pruned = model.crpe1.conv_list[0], result.model.crpe1.conv_list[0]
    assert torch.equal(pruned.weight, dense.weight)
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


def test_tokens_viewed_as_a_feature_map_keep_their_feature_axis() -> None:
    """PiT views its tokens as a feature map (``[B, C, N] -> [B, C, H, W]``) for a pooling convolution with a channel
    multiplier, whose input stays whole: the stream's writers before it are found through that view."""
    torch.manual_seed(0)
    model = PoolingVisionTransformer(
        img_size=32, patch_size=4, stride=2, base_dims=(8, 8), depth=(1, 1), heads=(2, 4), mlp_ratio=4, num_classes=3
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    assert {"transformers.0.blocks.0.mlp.fc2", "transformers.0.blocks.0.attn.proj"} <= set(
        misreadings(model, x).stream_writers
    )
    result = prune(model, x, speedup=1.15)
    assert result.model.transformers[0].blocks[0].mlp.fc1.out_features < 64
    assert result.speedup >= 1.15 and result.model(x).shape == (1, 3)


def test_channels_split_over_several_axes_keep_their_space() -> None:
    """EfficientViT's linear attention views its multi-scale ``qkv`` map as ``[B, heads, 3 * head_dim, H * W]``."""
    torch.manual_seed(0)
    model = EfficientVit(widths=(8, 16, 32, 32, 64), depths=(1,) * 5, head_dim=8, head_widths=(64, 80), num_classes=3)
    x = torch.randn(1, 3, 64, 64)
    qkv = "stages.3.blocks.1.context_module.main.qkv.conv"
    assert qkv in misreadings(model.eval(), x).stream_writers
    result = prune(model, x, speedup=1.3)
    assert result.model.get_submodule(qkv).out_channels == model.get_submodule(qkv).out_channels == 192
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


def test_positions_merged_into_features_keep_the_space_they_merge() -> None:
    """timm Swin's patch merging flattens ``[..., 2, 2, C]`` into ``4 * C`` features, positions first; the graph maps
    feature ``c`` onto ``4c .. 4c + 3`` and cut the merged norm where the merge had lost other features."""
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=64, embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 4),
        window_size=4, num_classes=3,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    result = prune(model, x, speedup=1.3)
    assert result.model.layers[1].downsample.norm.normalized_shape == (64,)  # 4 x 16, whole
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


class _Res2Block(nn.Module):
    """Res2Net's bottleneck: a convolution's output split into chunks along channels, each chunk added to the
    previous one's output before its own convolution, the last passed on as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.reduce = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 1)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.expand, self.head = nn.Conv2d(16, 16, 1), nn.Linear(16, 3)

    def forward(self, x):
        h = self.stem(x)
        chunks, outs = self.reduce(h).relu().split(4, dim=1), []
        for i, conv in enumerate(self.convs):
            outs.append(conv(chunks[i] if i == 0 else outs[-1] + chunks[i]))
        h = h + self.expand(torch.cat([*outs, chunks[-1]], dim=1))
        return self.head(h.mean((2, 3)))


def test_a_convolution_split_along_channels_keeps_the_space_it_splits() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    model = _Res2Block().eval()
    assert "reduce" in misreadings(model, x).stream_writers
    pruned = prune(model, x, speedup=1.1).model
    assert pruned.reduce.out_channels == 16 and pruned(x).shape == (1, 3)


class _HeadFirst(nn.Module):
    """XLM-R's order: the classification head registered before the body, so the last registered linear is not it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.body = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 16))

    def forward(self, x):
        return self.head(self.body(x).relu())


def test_the_layers_writing_the_output_keep_its_width_wherever_they_are_registered(monkeypatch) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4)
    model = _HeadFirst().eval()
    assert misreadings(model, x).stream_writers == ["head"]
    assert prune(model, x, speedup=1.2).model(x).shape == (1, 3)
    _blind(monkeypatch)  # the last registered linear kept whole instead: the head loses classes, and is refused
    with pytest.raises(PrunedModelBrokenError, match=r"answers in shapes \[\(1, [12]\)\], not \[\(1, 3\)\]"):
        prune(model, x, speedup=1.2)


def test_shufflenet_prunes_inside_its_branches_and_keeps_the_shuffled_channels_whole() -> None:
    """The channel shuffle regroups channels in a way Torch-Pruning's graph cannot follow (it divided by zero): its
    channels stay whole, and pruning the rest equals the dense model with the removed channels' norms zeroed."""
    torch.manual_seed(0)
    model = ShuffleNetV2([2, 1, 1], [8, 16, 32, 64, 64], num_classes=3).eval()
    with torch.no_grad():
        for norm in _norms(model):  # distinct values, so that each kept channel is found by its norm's weight
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_(), norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)
    found = misreadings(model, x)
    assert {"stage2.0.branch1.2", "stage2.0.branch2.5", "stage2.1.branch2.5", "stage3.0.branch1.0"} <= set(found.kept)
    assert not {"conv1.0", "stage2.0.branch2.0", "stage2.0.branch2.3"} & set(found.kept)
    result = prune(model, x, speedup=1.3)
    assert result.speedup >= 1.3
    zeroed = copy.deepcopy(model)
    pairs = zip(_norms(zeroed), _norms(result.model), strict=True)
    with torch.no_grad():
        for norm, pruned in pairs:
            removed = [i for i, w in enumerate(norm.weight) if not (pruned.weight == w).any()]
            assert len(norm.weight) - len(removed) == len(pruned.weight)
            norm.weight[removed], norm.bias[removed] = 0, 0
    assert result.model.stage2[0].branch2[0].out_channels < 8
    torch.testing.assert_close(result.model(x), zeroed(x))


def _norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
