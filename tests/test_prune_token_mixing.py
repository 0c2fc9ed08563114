"""Linears along tokens (MLP-Mixer, ResMLP, gMLP) are kept whole by pruning: Torch-Pruning's dependency graph
does not follow the transpose before them and would cut tokens as if they were channels."""

import copy

import pytest
import torch
from timm.models.mlp_mixer import MlpMixer
from torch import nn

from metaprune.prune import prune
from metaprune.token_mixing import token_mixing_linears

pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert token_mixing_linears(_Transposed(), torch.randn(2, 1, 3, 3)) == ["tokens"]
    assert token_mixing_linears(_mixer(), torch.randn(2, 1, 32, 32)) == [
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
    monkeypatch.setattr("metaprune.prune.misread_linears", lambda model, example_inputs: [])
    with pytest.raises(IndexError) as failure:  # the graph couples the mixer's tokens with its channels
        prune(_mixer(), torch.randn(2, 1, 32, 32), speedup=1.5)
    assert "Torch-Pruning failed while pruning step 1 of 100" in "".join(failure.value.__notes__)


class _FusedGLU(nn.Module):
    """A gated MLP whose gate and value come from one linear chunked on the last axis (Phi-3's ``gate_up_proj``),
    beside one chunked on axis 1 of a ``[batch, features]`` input, which the dependency graph maps."""

    def __init__(self, sequence: bool) -> None:
        super().__init__()
        self.sequence = sequence
        self.embed = nn.Linear(4, 8)
        self.gate_up = nn.Linear(8, 32)
        self.down = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x if self.sequence else x.flatten(0, 1))
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.head(h + self.down(torch.nn.functional.silu(gate) * up))


def test_fused_linears_split_on_the_last_axis_are_kept_whole(monkeypatch) -> None:
    from metaprune.prune import ImpossibleTargetError
    from metaprune.token_mixing import split_linears

    torch.manual_seed(0)
    x = torch.randn(1, 5, 4)
    assert split_linears(_FusedGLU(sequence=True), x) == ["gate_up"]
    assert split_linears(_FusedGLU(sequence=False), x) == []  # chunked on axis 1: Torch-Pruning's layout
    model = _FusedGLU(sequence=True)
    only_the_mlp = dict(ignored_layers=["head", "embed"])
    with pytest.raises(ImpossibleTargetError):  # the fused MLP kept whole leaves nothing to prune: a usage error
        prune(model, x, speedup=1.1, **only_the_mlp)
    monkeypatch.setattr("metaprune.prune.misread_linears", lambda model, example_inputs: [])
    with pytest.raises(IndexError):  # what Torch-Pruning does with it
        prune(model, x, speedup=1.1, **only_the_mlp)
