"""Objective (channel groups, group lasso) and the meta-training loop."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from hypernets import zoo
from hypernets.graph import to_neuron_graph
from hypernets.zoo.vit import ViTArch
from metaprune.metanet import Metanet, MetanetConfig
from metaprune.metatrain import METRICS_FILE, Member, MetaTrainConfig, train_metanet
from metaprune.objective import ChannelGroups, ObjectiveConfig, group_norms, group_penalty, objective_terms
from metaprune.population import INPUT_SHAPE, MemberSpec, build_population, list_members, mnist


def _set(layer: nn.Linear, weight: list, bias: list) -> nn.Linear:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def _hand_mlp() -> nn.Sequential:
    return nn.Sequential(
        _set(nn.Linear(2, 3), [[1, 2], [0, 0], [2, 0]], [2, 0, 1]),
        nn.ReLU(),
        _set(nn.Linear(3, 2), [[0, 1, 2], [0, 0, 0]], [5, 5]),
    )


def _penalty(model: nn.Module, inputs: tuple[int, ...]) -> float:
    graph = to_neuron_graph(model, inputs)
    return float(group_penalty(graph, ChannelGroups.of(graph)))


def test_group_norms_of_a_hand_built_mlp() -> None:
    # Hidden neuron i: row i of the first weight, its bias, column i of the second weight.
    # 1 + 4 + 4 + 0 = 9; 0 + 0 + 1 + 0 = 1; 4 + 0 + 1 + 4 = 9. The output layer is no group.
    graph = to_neuron_graph(_hand_mlp(), (1, 2))
    groups = ChannelGroups.of(graph)
    assert groups.num_groups == 3
    torch.testing.assert_close(group_norms(graph, groups), torch.tensor([3.0, 1.0, 3.0]))
    assert group_penalty(graph, groups).item() == pytest.approx(7.0)


def test_concentration_of_a_hand_built_mlp_ignores_scale_and_rewards_fewer_groups() -> None:
    graph = to_neuron_graph(_hand_mlp(), (1, 2))
    groups = ChannelGroups.of(graph)
    # group norms 3, 1, 3: (3 + 1 + 3) / sqrt(9 + 1 + 9)
    assert group_penalty(graph, groups, "concentration").item() == pytest.approx(7 / 19**0.5)
    scaled = graph.clone()
    scaled.x, scaled.edge_attr = 10 * graph.x, 10 * graph.edge_attr
    assert group_penalty(scaled, groups, "concentration").item() == pytest.approx(7 / 19**0.5)
    assert group_penalty(scaled, groups).item() == pytest.approx(70.0)  # the group lasso follows the scale
    model = _hand_mlp()
    with torch.no_grad():  # move neuron 1's mass away: norms 3, 0, 3
        model[0].weight[1] = 0
        model[2].weight[:, 1] = 0
    sparser = to_neuron_graph(model, (1, 2))
    assert group_penalty(sparser, groups, "concentration").item() == pytest.approx(6 / 18**0.5)


def test_unknown_penalty_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match=r"penalty.*'l1'"):
        ObjectiveConfig(penalty="l1")


@pytest.mark.parametrize(("neuron", "norm"), [(0, 3.0), (1, 1.0)])
def test_zeroing_a_group_removes_exactly_its_norm(neuron: int, norm: float) -> None:
    model = _hand_mlp()
    with torch.no_grad():
        model[0].weight[neuron] = 0
        model[0].bias[neuron] = 0
        model[2].weight[:, neuron] = 0
    assert _penalty(model, (1, 2)) == pytest.approx(7.0 - norm)


class _Residual(nn.Module):
    """``c(relu(a(x) + b(a(x))))``: a's and b's channels are tied by the addition."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _set(nn.Linear(2, 2), [[1, 1], [0, 2]], [1, 0])
        self.b = _set(nn.Linear(2, 2), [[1, 2], [3, 0]], [0, 1])
        self.c = _set(nn.Linear(2, 1), [[2, 1]], [0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(torch.relu(h + self.b(h)))


def test_residual_channels_form_one_group_and_shared_weights_count_once() -> None:
    # Channel j: a's row j and bias j, b's row j, column j and bias j (b[j, j] once), c's column j.
    # j=0: (1+1) + 1 + (1+4) + 9 + 0 + 4 = 21;  j=1: (0+4) + 0 + (9+0) + 4 + 1 + 1 = 19.
    graph = to_neuron_graph(_Residual(), (1, 2))
    groups = ChannelGroups.of(graph)
    torch.testing.assert_close(group_norms(graph, groups), torch.tensor([21.0, 19.0]).sqrt())


def _torch_pruning_norms(model: nn.Module, inputs: tuple[int, ...], head: nn.Module) -> list[float]:
    """Each channel's norm over the parameters Torch-Pruning would remove with it."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(inputs))
    norms = []
    for group in graph.get_all_groups(ignored_layers=[head]):
        squares = torch.zeros(len(group[0].idxs))
        for dep, idxs in group:
            module, outputs = dep.target.module, dep.handler.__name__ == "prune_out_channels"
            if not isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                continue
            for param, dim in ((module.weight, 0 if outputs else 1), (module.bias, 0)):
                if param is not None and (outputs or param is module.weight):
                    values = param.detach().index_select(dim, torch.tensor(idxs))
                    squares += values.square().transpose(0, dim).reshape(len(idxs), -1).sum(1)
        norms += squares.sqrt().tolist()
    return sorted(norms)


@pytest.mark.parametrize(
    "build", [lambda: zoo.cifar_resnet(8, in_channels=1, width=2), lambda: zoo.vgg((4, "M", 6), in_channels=1)]
)
def test_groups_match_torch_pruning_dependency_groups(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    inputs = (1, 1, 28, 28)
    graph = to_neuron_graph(model, inputs)
    ours = sorted(group_norms(graph, ChannelGroups.of(graph)).tolist())
    theirs = _torch_pruning_norms(model, inputs, head)
    assert len(ours) == len(theirs)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_vit_groups_are_whole_heads_and_mlp_channels() -> None:
    """A head's group holds its q, k, v rows and biases and the output projection's columns for it; an MLP
    channel's holds fc1's row and bias and fc2's column. The residual stream carries the class token: no group."""
    torch.manual_seed(0)
    vit = ViTArch(depth=2, embed_dim=16, num_heads=2, mlp_ratio=2.0, patch_size=14, pool="token").build()
    graph = to_neuron_graph(vit, (1, 1, 28, 28))
    expected = []
    for block in vit.blocks:
        qkv, proj, dim = block.attn.qkv, block.attn.proj, block.attn.head_dim
        for head in range(2):
            rows = [part * 16 + head * dim + i for part in range(3) for i in range(dim)]
            columns = proj.weight[:, head * dim : (head + 1) * dim]
            squares = qkv.weight[rows].square().sum() + qkv.bias[rows].square().sum() + columns.square().sum()
            expected.append(squares.sqrt().item())
        fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        squares = fc1.weight.square().sum(1) + fc1.bias.square() + fc2.weight.square().sum(0)
        expected += squares.sqrt().tolist()
    ours = group_norms(graph, ChannelGroups.of(graph))
    assert len(ours) == 2 * (2 + 32)
    assert sorted(ours.tolist()) == pytest.approx(sorted(expected), rel=1e-5)
    pooled = ViTArch(depth=2, embed_dim=16, num_heads=2, mlp_ratio=2.0, patch_size=14, pool="avg").build()
    graph = to_neuron_graph(pooled, (1, 1, 28, 28))  # no class token: each residual feature is a group too
    assert ChannelGroups.of(graph).num_groups == 2 * (2 + 32) + 16


def _stale_resnet() -> nn.Module:
    """A ResNet whose batch-norm statistics are far from any batch's, as after a rewrite."""
    torch.manual_seed(0)
    model = zoo.cnn.cifar_resnet(depth=8, width=4, in_channels=1).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-3, 3)
                module.running_var.uniform_(5, 10)
    return model


def _task_term(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], batch_statistics: bool) -> torch.Tensor:
    graph = to_neuron_graph(model, INPUT_SHAPE)
    config = ObjectiveConfig(batch_statistics=batch_statistics, relative=False)
    with torch.no_grad():
        state = dict(model.named_parameters())
        return objective_terms(model, state, graph, ChannelGroups.of(graph), batch, config)["task"]


@pytest.mark.parametrize("batch_statistics", [True, False])
def test_objective_normalizes_with_the_statistics_asked_for(batch_statistics: bool) -> None:
    model = _stale_resnet()
    images, labels = mnist("train").tensors
    batch = (images[:64], labels[:64])
    task = _task_term(model, batch, batch_statistics)
    reference = copy.deepcopy(model).train(batch_statistics)  # train mode: the batch's own statistics
    with torch.no_grad():
        expected = nn.functional.cross_entropy(reference(batch[0]), batch[1])
    assert torch.allclose(task, expected, atol=1e-5)
    assert not torch.allclose(_task_term(model, batch, not batch_statistics), expected, atol=1e-3)


def test_objective_never_updates_the_members_statistics_or_modes() -> None:
    model = _stale_resnet()
    before = {name: b.clone() for name, b in model.named_buffers()}
    images, labels = mnist("train").tensors
    _task_term(model, (images[:64], labels[:64]), batch_statistics=True)
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    assert not any(m.training for m in model.modules())


def test_metatraining_lowers_the_penalty_and_keeps_accuracy(tmp_path) -> None:
    specs = [
        MemberSpec("mlp", "mlp", {"hidden": [8]}, seed=0, train_steps=20),
        MemberSpec("cnn", "small_cnn", {"channels": [4, 8]}, seed=1, train_steps=10),
    ]
    build_population(tmp_path / "population", specs, progress=False)
    config = MetaTrainConfig(
        steps=10,
        batch_size=64,
        lr=1e-2,
        metanet=MetanetConfig(node_dim=16, edge_dim=16, layers=2),
        objective=ObjectiveConfig(group_weight=5.0, penalty="group_lasso"),  # moves every member in a few steps
    )
    metanet = train_metanet(tmp_path / "population", tmp_path / "metanet", config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metanet" / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10))
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] >= 0 for r in records)
    restored = Metanet.from_pretrained(tmp_path / "metanet")
    images, labels = mnist("eval").tensors
    batch = (images[:500], labels[:500])
    fresh = Metanet(config.metanet)
    for directory in list_members(tmp_path / "population"):
        member = Member.load(directory, penalty=config.objective.penalty)
        with torch.no_grad():
            before = member.evaluate(fresh, batch, config.objective)
            after = member.evaluate(restored, batch, config.objective)
        assert after["penalty"] < 0.995 * before["penalty"], directory.name
        assert abs(after["accuracy"] - before["accuracy"]) < 0.03, directory.name
    assert torch.equal(restored.alpha, metanet.alpha)
