"""EWC's Fisher and penalty, SI's path integral, entropy task inference, the two heads of a single
network, and Rotated-MNIST, each checked against values worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hypernets.continual.benchmarks import PIXELS, load_benchmark, rotate, rotated_mnist, rotation_angle
from hypernets.continual.consolidation import EWC, SI, fisher_diagonal
from hypernets.continual.experiment import Experiment, run
from hypernets.continual.hypernet import target_mlp
from hypernets.continual.inference import entropy, infer_task
from hypernets.continual.learners import PerTaskNetworks, SingleNetworkLearner


def test_fisher_of_a_softmax_layer_matches_its_closed_form() -> None:
    """For logits ``Wx + b``: ``d log p_c / d b_k = [c = k] - p_k``, so ``E_c[(.)^2] = p_k (1 - p_k)``
    for the bias and ``p_k (1 - p_k) x_j^2`` for the weight."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 4)
    x = torch.randn(7, 3)
    fisher = fisher_diagonal(layer, lambda outputs: outputs, x, chunk=3)
    p = layer(x).softmax(-1).detach()
    variance = p * (1 - p)  # [n, classes]
    assert torch.allclose(fisher["bias"], variance.mean(0), atol=1e-6)
    assert torch.allclose(fisher["weight"], (variance[:, :, None] * x[:, None, :] ** 2).mean(0), atol=1e-6)


def test_fisher_reads_only_the_head_it_is_given() -> None:
    layer = nn.Linear(2, 4)
    fisher = fisher_diagonal(layer, lambda outputs: outputs[:, 2:], torch.randn(5, 2))
    assert torch.all(fisher["bias"][:2] == 0) and torch.all(fisher["bias"][2:] > 0)


def test_ewc_penalty_is_half_lambda_fisher_weighted_squared_distance() -> None:
    layer = nn.Linear(2, 3)
    ewc = EWC(strength=10.0, samples=4)
    assert ewc.penalty(layer).item() == 0.0
    x = torch.randn(6, 2)
    ewc.consolidate(layer, lambda outputs: outputs, x)
    assert ewc.penalty(layer).item() == 0.0  # at the anchor
    fisher = fisher_diagonal(layer, lambda outputs: outputs, x[:4])  # only the first `samples` inputs
    with torch.no_grad():
        layer.bias[1] += 0.5
    assert ewc.penalty(layer).item() == pytest.approx(10.0 / 2 * fisher["bias"][1].item() * 0.25, rel=1e-5)
    ewc.consolidate(layer, lambda outputs: outputs, x)  # a second task anchors at the moved point
    assert ewc.penalty(layer).item() == pytest.approx(10.0 / 2 * fisher["bias"][1].item() * 0.25, rel=1e-5)


def test_si_importance_is_the_path_integral_over_the_squared_distance() -> None:
    """Two SGD steps on ``L = a/2 (w - 1)^2`` from ``w = 0``: ``omega = lr * (g1^2 + g2^2)``."""
    a, lr, damping, strength = 2.0, 0.1, 0.01, 3.0
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    si = SI(strength, damping)
    w, omega = 0.0, 0.0
    for _ in range(2):
        optimizer.zero_grad()
        loss = a / 2 * (model.weight - 1).pow(2).sum()
        loss.backward()
        si.before_step(model)
        optimizer.step()
        si.after_step(model)
        g = a * (w - 1)
        omega += lr * g * g
        w -= lr * g
    si.consolidate(model, lambda outputs: outputs, torch.zeros(0))
    assert si.importance["weight"].item() == pytest.approx(omega / (w**2 + damping), rel=1e-5)
    assert si.penalty(model).item() == 0.0
    with torch.no_grad():
        model.weight.add_(0.2)
    assert si.penalty(model).item() == pytest.approx(strength * omega / (w**2 + damping) * 0.04, rel=1e-4)


def test_si_counts_a_path_that_raised_the_loss_as_unimportant() -> None:
    model = nn.Linear(1, 1, bias=False)
    ascent = torch.optim.SGD(model.parameters(), lr=0.1, maximize=True)  # every step raises the loss: omega < 0
    si = SI(strength=1.0)
    for _ in range(3):
        ascent.zero_grad()
        (model.weight - 1).pow(2).sum().backward()
        si.before_step(model)
        ascent.step()
        si.after_step(model)
    assert si.omega["weight"].item() < 0
    si.consolidate(model, lambda outputs: outputs, torch.zeros(0))
    assert si.importance["weight"].item() == 0.0


def test_entropy_task_inference_picks_the_most_confident_network() -> None:
    assert entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    sure, unsure = torch.tensor([5.0, -5.0]), torch.tensor([0.1, 0.0])
    logits = torch.stack([torch.stack([unsure, sure]), torch.stack([sure, unsure])])  # [task, example, class]
    assert infer_task(logits).tolist() == [1, 0]


class FixedNetworks(PerTaskNetworks):
    """Task 0 is sure of its first class, task 1 of its second."""

    def logits(self, task: int, x: torch.Tensor) -> torch.Tensor:
        row = torch.tensor([[4.0, 0.0], [0.0, 0.3]][task])
        return row.expand(len(x), 2)


def test_per_task_networks_answer_in_global_classes_with_or_without_the_task() -> None:
    learner = FixedNetworks([(2, 3), (6, 7)])
    learner.learned = 2
    x = torch.zeros(3, 1)
    assert learner.predict(1, x).classes.tolist() == [7, 7, 7] and learner.predict(1, x).tasks is None
    inferred = learner.predict(None, x)
    assert inferred.tasks.tolist() == [0, 0, 0] and inferred.classes.tolist() == [2, 2, 2]
    learner.learned = 1  # only tasks learned so far are candidates
    assert learner.predict(None, x).tasks.tolist() == [0, 0, 0]


def test_single_network_heads_per_task_or_shared() -> None:
    classes = [(0, 1), (4, 5)]
    build = lambda outputs: target_mlp(outputs, hidden=(4,), inputs=3)
    multi = SingleNetworkLearner(build, classes, shared_head=False)
    shared = SingleNetworkLearner(build, classes, shared_head=True)
    assert multi.network[-1].out_features == 4 and shared.network[-1].out_features == 6
    outputs = torch.arange(12.0).reshape(2, 6)
    assert multi.head(1)(outputs[:, :4]).tolist() == [[2.0, 3.0], [8.0, 9.0]]
    x = torch.randn(5, 3)
    assert set(multi.predict(1, x).classes.tolist()) <= {4, 5}
    assert torch.equal(shared.predict(None, x).classes, shared.network(x).argmax(-1))
    with pytest.raises(ValueError, match="needs the task"):
        multi.predict(None, x)


def test_rotation_is_exact_at_right_angles_and_benchmark_angles_are_spaced() -> None:
    images = torch.rand(3, PIXELS)
    assert torch.allclose(rotate(images, 0.0), images, atol=1e-5)
    turned = rotate(images, 90.0).reshape(3, 28, 28)
    assert torch.allclose(turned, images.reshape(3, 28, 28).rot90(1, dims=(1, 2)), atol=1e-5)
    assert [rotation_angle(t, 10) for t in (0, 1, 9)] == [0.0, 18.0, 162.0]
    benchmark = rotated_mnist(num_tasks=2)
    assert [t.name for t in benchmark.tasks] == ["rot0", "rot90"]
    assert torch.equal(benchmark.tasks[0].train_y, benchmark.tasks[1].train_y)
    assert len(benchmark.tasks[0].train_y) == 8000 and len(benchmark.tasks[0].eval_y) == 2000
    assert len(load_benchmark("split")) == 5 and len(load_benchmark("permuted")) == 10  # 0: all tasks


@pytest.mark.parametrize("method", ["ewc", "si"])
def test_consolidation_forgets_less_than_finetuning(one_thread, method: str) -> None:
    common = dict(benchmark="permuted", num_tasks=2, steps=200, batch_size=64, target_hidden=32)
    strength = dict(ewc=dict(ewc_lambda=1e4), si=dict(si_c=100.0))[method]
    consolidated = run(Experiment(method=method, **common, **strength))
    finetune = run(Experiment(method="finetune", **common))
    assert consolidated["matrix"][0][0] > 80
    assert consolidated["forgetting"] < finetune["forgetting"] - 5


def test_class_incremental_split_reports_task_inference(one_thread) -> None:
    result = run(Experiment(benchmark="split", setting="class", method="separate", steps=40, target_hidden=16))
    inference = result["task_inference_matrix"]
    assert inference[0] == [100.0, None, None, None, None]  # one candidate task: always right
    assert result["task_inference"] == pytest.approx(sum(inference[-1]) / 5, abs=0.01)
    assert 20 < result["task_inference"] <= 100
    assert result["average_accuracy"] <= result["task_inference"] + 1e-6  # a wrong task is a wrong digit
    finetune = run(Experiment(benchmark="split", setting="class", method="finetune", steps=40, target_hidden=16))
    assert finetune["task_inference"] is None and finetune["task_inference_matrix"] is None
