"""HyperInterval: interval bound propagation worked by hand and checked by sampling, the point hypernetwork
at radius 0, the universal embedding inside every task's interval, and the two grid methods."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from hypernets.cli import main
from hypernets.continual.benchmarks import load_benchmark
from hypernets.continual.experiment import Experiment, build_learner
from hypernets.continual.hypernet import ChunkedHypernet, target_mlp
from hypernets.continual.interval import (
    HyperIntervalLearner,
    IntervalHypernet,
    WeightBounds,
    head_masks,
    intersection,
    interval_linear,
    sequential_bounds,
    target_bounds,
    worst_case_logits,
)
from hypernets.continual.names import GRID_METHODS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_and_relu_bounds_worked_by_hand() -> None:
    """``W = [[1, -2], [0.5, 1]]``, ``b = [0, -1]`` on the box ``[1, 1] +- [0.5, 0.25]``: pre-activations
    ``[-1, 0.5] +- [1, 0.5]``, i.e. ``[-2, 0]`` and ``[0, 1]``; after ReLU ``[0, 0]`` and ``[0, 1]``."""
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0]]))
        layer.bias.copy_(torch.tensor([0.0, -1.0]))
    center, radius = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 0.25]])
    c, r = sequential_bounds(nn.Sequential(layer), center, radius)
    assert torch.equal(c, torch.tensor([[-1.0, 0.5]])) and torch.equal(r, torch.tensor([[1.0, 0.5]]))
    c, r = sequential_bounds(nn.Sequential(layer, nn.ReLU()), center, radius)
    assert torch.equal(c, torch.tensor([[0.0, 0.5]])) and torch.equal(r, torch.tensor([[0.0, 0.5]]))


def test_interval_weights_worked_by_hand() -> None:
    """``x1 in [0, 1]``, ``x2 in [1, 2]``, ``w1 in [-1, 1]``, ``w2 in [1, 2]``, ``b in [-1, 1]``:
    ``w1 x1`` spans ``[-1, 1]``, ``w2 x2`` spans ``[1, 4]``, so the sum spans ``[-1, 6]``."""
    low, high = interval_linear(
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[-1.0, 1.0]]),
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([-1.0]),
        torch.tensor([1.0]),
    )
    assert torch.equal(low, torch.tensor([[-1.0]])) and torch.equal(high, torch.tensor([[6.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        interval_linear(-torch.ones(1, 2), torch.ones(1, 2), *torch.ones(2, 1, 2), *torch.zeros(2, 1))


def test_sampled_points_stay_inside_the_bounds() -> None:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    center, radius = torch.randn(4, 5), torch.rand(4, 5)
    c, r = sequential_bounds(network, center, radius)
    points = center + radius * (2 * torch.rand(1000, 4, 5) - 1)  # uniform in each box, corners included below
    corners = center + radius * torch.randint(2, (1000, 4, 5)).mul(2).sub(1)
    with torch.no_grad():
        for x in (points, corners):
            y = network(x)
            assert (y >= c - r - 1e-5).all() and (y <= c + r + 1e-5).all()


def test_sampled_weights_stay_inside_the_logit_bounds() -> None:
    torch.manual_seed(1)
    target = target_mlp(3, hidden=(8, 8), inputs=6)
    middle = {name: p.detach() for name, p in target.named_parameters()}
    spread = {name: 0.1 * torch.rand_like(p) for name, p in middle.items()}
    lower = {name: p - spread[name] for name, p in middle.items()}
    upper = {name: p + spread[name] for name, p in middle.items()}
    x = torch.rand(10, 6)
    low, high = target_bounds(target, lower, upper, x)
    for _ in range(200):
        sample = {name: lower[name] + (upper[name] - lower[name]) * torch.rand_like(p) for name, p in middle.items()}
        logits = functional_call(target, sample, (x,))
        assert (logits >= low - 1e-5).all() and (logits <= high + 1e-5).all()
    y = torch.tensor([0, 2] * 5)
    worst = worst_case_logits(low, high, y)
    assert torch.equal(worst[0], torch.stack([low[0, 0], high[0, 1], high[0, 2]]))
    assert torch.equal(worst[1], torch.stack([high[1, 0], high[1, 1], low[1, 2]]))


def test_radius_zero_is_the_point_hypernetwork_and_network() -> None:
    torch.manual_seed(2)
    target = target_mlp(2, hidden=(8, 8), inputs=12)
    hypernet = IntervalHypernet(target, num_tasks=3, embedding_dim=4, chunk_embedding_dim=3, chunk_size=50)
    tasks = torch.tensor([0, 2])
    c, r = hypernet.bounds(hypernet.embed(tasks), 0.0)  # the raw embeddings, as the point hypernetwork reads them
    point = ChunkedHypernet.forward(hypernet, tasks)
    assert c.shape == (2, hypernet.num_params) and torch.equal(c, point) and torch.equal(r, torch.zeros_like(r))
    center = hypernet.centers(tasks)
    c, _ = hypernet.bounds(center, 0.0)
    params = hypernet.unflatten(c[0])
    x = torch.rand(5, 12)
    low, high = target_bounds(target, params, params, x)
    logits = functional_call(target, params, (x,))
    assert torch.allclose(low, logits, atol=1e-6) and torch.allclose(high, logits, atol=1e-6)
    _, wide = hypernet.bounds(center, hypernet.radii(tasks))
    assert (wide > 0).any() and (wide >= 0).all()


def test_universal_embedding_lies_in_every_tasks_interval() -> None:
    torch.manual_seed(3)
    target = target_mlp(2, hidden=(4,), inputs=3)
    hypernet = IntervalHypernet(target, num_tasks=5, embedding_dim=6, perturbation=3.0)
    with torch.no_grad():
        for e in hypernet.task_embeddings:
            e.copy_(10 * torch.randn(6))
    centers, radius = hypernet.centers(torch.arange(5)), hypernet.radii(torch.arange(5))
    assert torch.equal(radius, torch.full((5, 6), 0.5)) and (centers.abs() <= radius / 2).all()
    universal = hypernet.universal_embedding(5)
    assert ((universal >= centers - radius) & (universal <= centers + radius)).all()
    low, high = intersection(centers - radius, centers + radius)
    assert torch.equal(universal, (low + high) / 2)
    with pytest.raises(ValueError, match="do not intersect"):
        intersection(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]]))


def test_universal_learner_answers_every_task_with_one_network() -> None:
    torch.manual_seed(4)
    target = target_mlp(2, hidden=(8,), inputs=12)
    hypernet = IntervalHypernet(target, num_tasks=2, embedding_dim=4, chunk_size=64)
    learner = HyperIntervalLearner(hypernet, target, [(0, 1), (2, 3)], steps=4, beta=0.01, universal=True)
    x, y = torch.rand(8, 12), torch.randint(2, (8,))
    for task in range(2):
        learner.begin_task(task)
        for _ in range(4):
            stats = learner.train_step(task, x, y)
        learner.end_task(task, None)
        if task == 0:
            first = hypernet.task_embeddings[0].detach().clone()
    assert "reg" in stats and torch.equal(hypernet.task_embeddings[0], first)  # earlier embeddings stay
    assert torch.equal(learner.logits(0, x), learner.logits(1, x))
    learner.universal = False
    assert not torch.equal(learner.logits(0, x), learner.logits(1, x))


def test_without_nesting_each_task_has_its_own_interval_and_learned_radius() -> None:
    """The reference's task-incremental variant: the interval is centered at ``e_t`` itself (not squashed
    into the shared cube ``eps / (2M) * cos(e_t)``), its radius ``eps * softmax(v_t)`` starts at ``eps / M`` and
    trains with the task, and a new task does not start from the last one's embedding."""
    torch.manual_seed(5)
    target = target_mlp(2, hidden=(4,), inputs=3)
    hypernet = IntervalHypernet(target, num_tasks=2, embedding_dim=4, perturbation=2.0, nesting=False)
    tasks = torch.arange(2)
    with torch.no_grad():
        hypernet.task_embeddings[0].fill_(3.0)
        hypernet.task_embeddings[1].fill_(-3.0)
    assert torch.equal(hypernet.centers(tasks), torch.tensor([[3.0] * 4, [-3.0] * 4]))
    assert torch.allclose(hypernet.radii(tasks), torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="do not intersect"):  # far apart: no universal embedding promised
        hypernet.universal_embedding(2)
    trainable = {id(p) for p in hypernet.trainable(1)}
    assert id(hypernet.radius_logits[1]) in trainable and id(hypernet.radius_logits[0]) not in trainable
    assert id(hypernet.task_embeddings[1]) in trainable and id(hypernet.task_embeddings[0]) not in trainable
    learner = HyperIntervalLearner(hypernet, target, [(0, 1), (2, 3)], steps=2, beta=0.01)
    learner.begin_task(1)
    assert torch.equal(hypernet.task_embeddings[1], torch.full((4,), -3.0))
    x, y = torch.rand(8, 3), torch.randint(2, (8,))
    learner.train_step(1, x, y)
    learner.train_step(1, x, y)  # the first step ramps from radius 0, where the radius gets no gradient
    assert hypernet.radius_logits[1].grad is not None and not torch.equal(hypernet.radius_logits[1], torch.zeros(4))
    nested = IntervalHypernet(target, num_tasks=2, embedding_dim=4, perturbation=2.0)
    assert id(nested.radius_logits[1]) not in {id(p) for p in nested.trainable(1)}  # nested: fixed eps / M


def test_the_grid_methods_build_the_reference_variants() -> None:
    """``hyperinterval`` is the reference's task-incremental (free) variant, ``hyperinterval-universal`` its
    nested one: only the nested one gives every task an interval inside the shared cube."""
    benchmark = load_benchmark("split", 2, 0)
    free = build_learner(Experiment(method="hyperinterval", steps=2), benchmark)
    nested = build_learner(Experiment(method="hyperinterval", universal=True, steps=2), benchmark)
    assert not free.hypernet.nesting and nested.hypernet.nesting
    assert not nested.multihead and nested.target[-1].out_features == 2  # the reference's one shared 2-way head
    universal, shared = (
        build_learner(Experiment(**GRID_METHODS[name], steps=2), benchmark)
        for name in ("hyperinterval-universal", "hyperinterval-universal-shared")
    )
    assert universal.universal and universal.multihead and universal.target[-1].out_features == 2 * 2
    assert universal.hypernet.perturbation == 0.1 and shared.hypernet.perturbation == 10.0
    assert shared.universal and not shared.multihead
    with pytest.raises(ValueError, match="multihead"):
        Experiment(method="ewc", multihead=True)


def test_head_masks_free_other_tasks_heads_worked_by_hand() -> None:
    """A 3-2-4 target for two tasks of two classes: 6 + 2 trunk weights (always read), then the 4 x 2 head
    weights and 4 head biases, whose first two rows are task 0's block and last two task 1's."""
    target = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4))
    hypernet = IntervalHypernet(target, num_tasks=2, embedding_dim=2, chunk_size=5)
    masks = head_masks(hypernet, target, 2)
    trunk, rows = torch.ones(8), torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    for task in range(2):
        head = rows[task]
        expected = torch.cat([trunk, head.repeat_interleave(2), head])  # weight rows of 2 inputs, then biases
        assert torch.equal(masks[task], expected)


def test_a_head_per_task_reads_its_block_and_frees_the_others_in_the_regularizer() -> None:
    torch.manual_seed(6)
    target = target_mlp(4, hidden=(8,), inputs=12)  # two tasks, a 2-way block each
    hypernet = IntervalHypernet(target, num_tasks=2, embedding_dim=4, chunk_size=64)
    learner = HyperIntervalLearner(hypernet, target, [(0, 1), (2, 3)], 4, beta=1.0, universal=True, multihead=True)
    x, y = torch.rand(8, 12), torch.randint(2, (8,))
    learner.begin_task(0)
    learner.train_step(0, x, y)
    learner.end_task(0, None)
    outputs = functional_call(target, hypernet.universal(1), (x,))
    assert torch.equal(learner.logits(0, x), outputs[:, :2]) and torch.equal(learner.logits(1, x), outputs[:, 2:])
    assert learner.predict(1, x).classes.tolist() == [2 + int(k) for k in outputs[:, 2:].argmax(-1)]
    learner.begin_task(1)
    assert learner.regularizer(learner.bounds).item() == 0.0
    before = WeightBounds(hypernet)(torch.tensor([0])).detach()  # unmasked: every weight of task 0's box
    with torch.no_grad():
        hypernet.body.head[-1].bias.add_(0.5)
    after = WeightBounds(hypernet)(torch.tensor([0]))
    used = learner.bounds.used[0]
    assert used.sum() < used.numel()  # task 1's head rows are out
    expected = ((after - before) ** 2 * used).sum(-1).mean()  # beta = 1, the mean over lower, middle and upper
    assert torch.allclose(learner.regularizer(learner.bounds), expected)
    assert learner.regularizer(learner.bounds) < ((after - before) ** 2).sum()


def test_schedule_ramps_the_perturbation_over_half_a_task_then_switches_kappa() -> None:
    target = target_mlp(2, hidden=(4,), inputs=3)
    learner = HyperIntervalLearner(IntervalHypernet(target, 1, embedding_dim=2), target, [(0, 1)], steps=10, beta=0.0)
    schedule = []
    for step in (0, 2, 4, 5, 9):
        learner.step = step
        schedule.append(learner.schedule())
    assert schedule == [(0.0, 1.0), (0.5, 1 - 1e-4), (1.0, 1 - 2e-4), (1.0, 0.5), (1.0, 0.5)]


def test_a_tiny_grid_with_both_hyperinterval_rows(tmp_path, capsys) -> None:
    out = tmp_path / "grid"
    argv = ["continual", "--method", "hyperinterval,hyperinterval-universal,hyperinterval-universal-shared"]
    argv += ["--benchmark", "split"]
    argv += ["--setting", "task", "--seeds", "0", "--steps", "3", "--num-tasks", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| split | task | hyperinterval | 3 | 1 |" in printed
    assert "| split | task | hyperinterval-universal | 3 | 1 |" in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["hyperinterval", "hyperinterval-universal", "hyperinterval-universal-shared"]
    assert "universal embedding, a head per task" in rows[1]["label"]
    assert "universal embedding" in rows[2]["label"] and "head" not in rows[2]["label"]


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--method", "hyperinterval-universal", "--setting", "class"], "--setting"),
        (["--method", "hyperinterval", "--target", "cnn"], "--target"),
    ],
)
def test_what_hyperinterval_cannot_run_is_exit_2(tmp_path, capsys, args: list[str], culprit: str) -> None:
    assert main(["continual", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and culprit in err
    assert list(tmp_path.iterdir()) == []
