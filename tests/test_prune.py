"""Structural pruning to a MACs target, measurement and fine-tuning: metaprune.prune, .measure and .finetune."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.data import Subset, TensorDataset

from hypernets.data import load_mnist
from hypernets.zoo import cifar_resnet, mlp, small_cnn
from metaprune.finetune import finetune, recalibrate_batchnorm
from metaprune.measure import Measurement, accuracy, count_macs_params, cpu_latency_ms, measure
from metaprune.prune import ImpossibleTargetError, NonFiniteWeightError, prune, sparse_regularizer, sparse_train
from metaprune.store import load_pruned, save_pruned

MNIST = torch.zeros(2, 1, 28, 28)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread avoids the oversubscription that makes them crawl on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=4, num_classes=10)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ["group_norm", "l1", "random"])
def test_small_cnn_meets_speedup_without_touching_the_original(method):
    torch.manual_seed(0)
    model = small_cnn(1, 10, (16, 32))
    original = copy.deepcopy(model)
    result = prune(model, MNIST, speedup=2.0, method=method, steps=25)
    macs, params = count_macs_params(result.model, MNIST)
    assert (macs, params) == (result.macs, result.params)
    assert 2.0 <= result.base_macs / macs < 2.6
    assert result.model[0].out_channels < 16 and result.model[3].out_channels < 32
    assert result.model[-1].out_features == 10  # the classifier is ignored by default
    assert result.model(MNIST).shape == (2, 10)
    assert same_state(model, original) and model[0].out_channels == 16
    assert json.loads(json.dumps(result.to_dict()))["speedup"] == pytest.approx(result.speedup)


@pytest.mark.parametrize("global_pruning", [False, True])
def test_resnet_prunes_residual_coupled_channels_consistently(global_pruning):
    torch.manual_seed(0)
    model = cifar_resnet(8, in_channels=1, num_classes=10, width=8).train()
    result = prune(model, MNIST, speedup=2.0, global_pruning=global_pruning, steps=25)
    net = result.model
    assert result.speedup >= 2.0 and result.speedup < 2.6
    assert net.training  # tracing switches to eval mode; the pruned copy gets the original's mode back
    assert result.params < result.base_params
    stem = net.conv1.out_channels
    assert net.bn1.num_features == stem
    # Stage 1 adds its output to the stem's (identity shortcut): both sides must keep the same channels.
    block1 = net.layer1[0]
    assert block1.conv1.in_channels == block1.conv2.out_channels == block1.bn2.num_features == stem
    for stage, next_stage in ((net.layer2[0], net.layer3[0]), (net.layer3[0], None)):
        width = stage.conv2.out_channels
        assert stage.shortcut[0].out_channels == stage.shortcut[1].num_features == stage.bn2.num_features == width
        assert stage.conv1.out_channels == stage.conv2.in_channels == stage.bn1.num_features
        downstream = next_stage.conv1.in_channels if next_stage is not None else net.fc.in_features
        assert downstream == width
    assert net.eval()(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_vit_loses_whole_heads_and_mlp_channels():
    vit = tiny_vit()
    result = prune(vit, MNIST, speedup=1.5, head_ratio=0.5, steps=25)
    assert result.speedup >= 1.5
    for block in result.model.blocks:
        attn = block.attn
        assert attn.num_heads == 2 and attn.head_dim == 8
        assert attn.qkv.out_features == 3 * 2 * 8 and attn.proj.in_features == 16
        assert block.mlp.fc1.out_features < 128
    assert result.model.eval()(MNIST).shape == (2, 10)
    assert [b.attn.num_heads for b in vit.blocks] == [4, 4]


def test_vit_head_pruning_removes_the_weak_heads_exactly():
    vit = tiny_vit().eval()
    with torch.no_grad():  # head 1 of every block contributes almost nothing
        for block in vit.blocks:
            block.attn.qkv.weight.view(3, 4, 8, -1)[:, 1] *= 1e-3
            block.attn.proj.weight[:, 8:16] *= 1e-3
    silenced = copy.deepcopy(vit)
    with torch.no_grad():
        for block in silenced.blocks:
            block.attn.proj.weight[:, 8:16] = 0
    # speedup 1.0001 is met by the head removal alone, so no channel is pruned afterwards.
    result = prune(vit, MNIST, speedup=1.0001, head_ratio=0.25, steps=25)
    assert result.steps == 0 and [b.attn.num_heads for b in result.model.blocks] == [3, 3]
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(result.model.eval()(x), silenced(x), atol=1e-5, rtol=0)


def _kept_rows(dense: Tensor, pruned: Tensor) -> list[int]:
    """Which rows of ``dense`` survive in ``pruned``: pruning keeps them in order, so match them one by one."""
    kept, start = [], 0
    for row in pruned:
        start += next(i for i, candidate in enumerate(dense[start:]) if torch.equal(candidate, row))
        kept.append(start)
        start += 1
    return kept


def test_vit_head_dims_go_alike_from_every_head_as_if_zeroed():
    vit = tiny_vit().eval()
    with torch.no_grad():  # unequal head channels, so that the ranking is not decided by ties
        for block in vit.blocks:
            block.attn.qkv.weight.mul_(torch.rand(96, 1, generator=torch.Generator().manual_seed(0)) + 0.5)
    # only attention may shrink: the residual stream (patch embedding) and the MLPs are kept whole
    ignored = [vit.head, vit.patch_embed.proj, *[block.mlp.fc1 for block in vit.blocks]]
    result = prune(vit, MNIST, speedup=1.2, head_dims=True, steps=8, ignored_layers=ignored)
    pruned, zeroed = result.model.eval(), copy.deepcopy(vit)
    x = torch.randn(2, 1, 28, 28)
    for block, reference in zip(pruned.blocks, zeroed.blocks, strict=True):
        attn = block.attn
        assert attn.num_heads == 4 and attn.head_dim < 8 and attn.scale == attn.head_dim**-0.5
        assert attn.qkv.out_features == 3 * 4 * attn.head_dim == 3 * attn.proj.in_features
        kept = _kept_rows(reference.attn.qkv.weight, attn.qkv.weight)
        dims = {row % 8 for row in kept}
        assert kept == [part * 32 + head * 8 + dim for part in range(3) for head in range(4) for dim in sorted(dims)]
        with torch.no_grad():  # the removed channels of q, k and v zeroed; softmax scaled as for the new head size
            removed = sorted(set(range(96)) - set(kept))
            reference.attn.qkv.weight[removed] = 0
            reference.attn.qkv.bias[removed] = 0
        reference.attn.scale, reference.attn.fused_attn = attn.scale, False
    torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=0)
    for block in pruned.blocks:  # timm's two attention paths agree on the pruned heads
        block.attn.fused_attn = not block.attn.fused_attn
    torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=0)


def test_vit_with_fewer_and_smaller_heads_reloads(tmp_path):
    vit = tiny_vit().eval()
    pruned = prune(vit, MNIST, speedup=2, head_ratio=0.25, head_dims=True, steps=25).model.eval()
    assert [(b.attn.num_heads, b.attn.head_dim) for b in pruned.blocks] == [(3, 5), (3, 5)]
    save_pruned(pruned, tmp_path, spec="tiny_vit()")
    loaded = load_pruned(tiny_vit(), tmp_path)
    assert [(b.attn.num_heads, b.attn.head_dim, b.attn.scale) for b in loaded.blocks] == [(3, 5, 5**-0.5)] * 2
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), pruned(x), atol=0, rtol=0)


def test_l1_keeps_the_largest_norm_channels_and_group_norm_sees_the_next_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        # fc1 rows have L1 norms 0.4, 0.8, 1.2, 1.6; channel 3 feeds nothing into fc2.
        model[0].weight.copy_(torch.arange(1.0, 5.0).unsqueeze(1).expand(4, 4) * 0.1)
        model[2].weight.fill_(3.0)
        model[2].weight[:, 3] = 0.0
    x = torch.randn(1, 4)

    def kept(method: str, seed: int = 0) -> set[float]:
        pruned = prune(model, x, speedup=1.0001, method=method, steps=4, seed=seed).model
        assert pruned[0].out_features == pruned[2].in_features == 3  # one step of 1/4 removes exactly one channel
        return {round(row[0].item(), 3) for row in pruned[0].weight}

    assert kept("l1") == {0.2, 0.3, 0.4}  # the smallest-norm row goes
    assert kept("group_norm") == {0.1, 0.2, 0.3}  # the row whose output is unused goes
    assert kept("random", seed=1) == kept("random", seed=1)


def test_param_ratio_target_on_an_mlp():
    model = mlp(784, (64, 32), 10)
    result = prune(model, MNIST, param_ratio=3.0, steps=20)
    assert result.param_ratio >= 3.0 and result.params == sum(p.numel() for p in result.model.parameters())
    assert result.model(MNIST).shape == (2, 10)


def test_impossible_speedup_names_target_and_best_reachable():
    model = small_cnn(1, 10, (8, 8))
    original = copy.deepcopy(model)
    with pytest.raises(ImpossibleTargetError, match=r"speedup 10000x: the best reachable is") as info:
        prune(model, MNIST, speedup=1e4, steps=10)
    assert 2.0 < info.value.best < 1e4 and info.value.value == 1e4
    assert same_state(model, original)


def test_target_that_needs_ignored_layers_is_impossible():
    model = mlp(784, (16,), 10)  # the only prunable channels belong to the ignored hidden layer
    with pytest.raises(ImpossibleTargetError) as info:
        prune(model, MNIST, speedup=1.5, ignored_layers=[model[1], "3"], steps=5)
    assert info.value.best == pytest.approx(1.0)


def test_nan_weight_is_named():
    model = small_cnn(1, 10, (8, 8))
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match=r"parameter '3.weight' has 1 NaN"):
        prune(model, MNIST, speedup=2.0)


def test_invalid_arguments_are_rejected():
    model = small_cnn(1, 10, (8, 8))
    with pytest.raises(ValueError, match="needs a target"):
        prune(model, MNIST)
    with pytest.raises(ValueError, match="speedup must be at least 1"):
        prune(model, MNIST, speedup=0.5)
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune(model, MNIST, speedup=2.0, method="taylor")
    with pytest.raises(ValueError, match="timm-style attention"):
        prune(model, MNIST, speedup=2.0, head_ratio=0.5)
    with pytest.raises(ValueError, match="head_dims needs a model with timm-style attention"):
        prune(model, MNIST, speedup=2.0, head_dims=True)


@pytest.fixture(scope="module")
def mnist_subset():
    return Subset(load_mnist("train"), range(512))


def test_finetuning_a_pruned_model_lowers_its_loss_deterministically(mnist_subset):
    torch.manual_seed(0)
    pruned = prune(mlp(784, (64, 32), 10), MNIST, speedup=2.0, steps=25).model
    images, labels = mnist_subset[:256]

    def loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(pruned(images), labels).item()

    before = loss()
    twin = copy.deepcopy(pruned)
    kwargs = {"steps": 30, "lr": 0.01, "optimizer": "adamw", "batch_size": 64, "progress": False}
    curve = finetune(pruned, mnist_subset, **kwargs)
    assert len(curve) == 30 and loss() < before - 1.0
    assert finetune(twin, mnist_subset, **kwargs) == curve


def test_batchnorm_recalibration_replaces_stale_statistics_with_the_data_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU())
    model[1].running_mean.fill_(100.0)  # stale, as after pruning the layer before
    images = torch.randn(64, 1, 8, 8) * 2 + 1
    data = TensorDataset(images, torch.zeros(64, dtype=torch.long))
    weights = copy.deepcopy(model.state_dict())
    recalibrate_batchnorm(model, data, batches=4, batch_size=16)
    outputs = model[0](images)  # the conv's outputs: what the norm normalizes
    assert torch.allclose(model[1].running_mean, outputs.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not model.training and model[1].momentum == 0.3
    learned = ("0.weight", "0.bias", "1.weight", "1.bias")
    assert all(torch.equal(weights[k], model.state_dict()[k]) for k in learned)


def test_sparse_regularizer_shrinks_channel_groups(mnist_subset):
    torch.manual_seed(0)
    plain = mlp(784, (32, 16), 10)
    sparse = copy.deepcopy(plain)
    kwargs = {"steps": 10, "lr": 0.05, "batch_size": 64, "progress": False}
    finetune(plain, mnist_subset, **kwargs)
    curve = sparse_train(sparse, MNIST, mnist_subset, reg=0.05, **kwargs)
    assert len(curve) == 10
    for index in (1, 3):
        assert sparse[index].weight.norm() < 0.9 * plain[index].weight.norm()
    assert sparse[-1].weight.shape == plain[-1].weight.shape  # regularizing never changes shapes


def test_sparse_regularizer_refuses_to_write_nan_gradients():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():  # every hidden channel has the same norm: Torch-Pruning's penalty divides by zero
        model[0].weight.fill_(0.5)
        model[2].weight.fill_(0.5)
    hook = sparse_regularizer(model, torch.zeros(1, 4))
    model(torch.randn(3, 4)).sum().backward()
    with pytest.raises(FloatingPointError, match=r"'0\.weight'"):
        hook(model)


def test_measurements_have_exact_counts_and_serialize():
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3, 4))
        model[0].bias.zero_()
    inputs = torch.eye(4)[:3]
    data = TensorDataset(torch.eye(4), torch.tensor([0, 1, 0, 0]))  # predictions are 0, 1, 2, 0: three right
    threads = torch.get_num_threads()
    result = measure(model, inputs[:1], data, repeats=3)
    assert (result.macs, result.params) == (12 + 3, 15)  # Torch-Pruning counts the bias adds as ops too
    assert result.accuracy == pytest.approx(0.75) and accuracy(model, data, batch_size=3) == pytest.approx(0.75)
    assert result.latency_ms is not None and result.latency_ms > 0
    assert torch.get_num_threads() == threads
    assert Measurement(**json.loads(result.to_json())) == result
    assert measure(model, inputs, latency=False).latency_ms is None
    with pytest.raises(ValueError, match="repeats"):
        cpu_latency_ms(model, inputs, repeats=0)
