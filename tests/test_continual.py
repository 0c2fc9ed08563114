"""Continual learning: metrics, deterministic benchmarks, the output regularizer, hypernetwork outputs,
and a short two-task run in which the regularized hypernetwork forgets less than fine-tuning."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from hypernets.continual.benchmarks import PIXELS, permutation, permuted_mnist, split_mnist
from hypernets.continual.experiment import Experiment, run, run_to
from hypernets.continual.hypernet import ChunkedHypernet, LoGAHTaskHypernet, target_mlp
from hypernets.continual.metrics import average_accuracy, backward_transfer, forgetting, summarize
from hypernets.continual.regularizer import OutputRegularizer, adam_step
from hypernets.data import load_mnist

NAN = float("nan")


def test_metrics_on_a_hand_worked_matrix() -> None:
    matrix = torch.tensor([[90.0, NAN, NAN], [92.0, 95.0, NAN], [70.0, 85.0, 99.0]])
    assert average_accuracy(matrix) == pytest.approx((70 + 85 + 99) / 3)
    assert backward_transfer(matrix) == pytest.approx(((70 - 90) + (85 - 95)) / 2)  # -15
    assert forgetting(matrix) == pytest.approx(((92 - 70) + (95 - 85)) / 2)  # 16: from the best, not the first
    assert summarize(matrix[:1, :1]) == {"average_accuracy": 90.0, "backward_transfer": 0.0, "forgetting": 0.0}


def test_permutations_are_deterministic_and_distinct() -> None:
    first = permutation(3, seed=0)
    assert torch.equal(first, permutation(3, seed=0))
    assert torch.equal(first.sort().values, torch.arange(PIXELS))
    assert not torch.equal(first, permutation(4, seed=0))
    assert not torch.equal(first, permutation(3, seed=1))
    benchmark = permuted_mnist(num_tasks=2, seed=0)
    images = load_mnist("train").tensors[0].reshape(-1, PIXELS)
    assert torch.equal(benchmark.tasks[1].train_x, images[:, permutation(1, seed=0)])
    assert torch.equal(benchmark.tasks[1].train_x, permuted_mnist(num_tasks=2, seed=0).tasks[1].train_x)


def test_split_tasks_hold_exactly_their_two_digits() -> None:
    benchmark = split_mnist()
    images, labels = load_mnist("train").tensors
    images = images.reshape(len(images), PIXELS)
    assert [t.name for t in benchmark.tasks] == ["0v1", "2v3", "4v5", "6v7", "8v9"]
    assert [t.classes for t in benchmark.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert benchmark.total_classes == 10 and [t.name for t in split_mnist(2).tasks] == ["0v1", "2v3"]
    for task, (first, second) in zip(benchmark.tasks, [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)], strict=True):
        assert len(task.train_y) == ((labels == first) | (labels == second)).sum()
        assert task.train_y.sum() == (labels == second).sum()
        assert set(task.eval_y.tolist()) == {0, 1}
        digit_of = {tuple(img.tolist()): int(label) for img, label in zip(images[:3000], labels[:3000], strict=True)}
        seen = [digit_of.get(tuple(img.tolist())) for img in task.train_x]
        assert {d for d in seen if d is not None} == {first, second}
    assert torch.equal(split_mnist().tasks[2].eval_x, benchmark.tasks[2].eval_x)


@pytest.mark.parametrize("options", [dict(), dict(mip=True, residual=True)])
def test_chunked_hypernet_outputs_every_parameter(options: dict) -> None:
    target = target_mlp(3, hidden=(8, 8), inputs=20)
    hypernet = ChunkedHypernet(target, num_tasks=2, embedding_dim=4, chunk_size=50, hidden=(16,), **options)
    flat = hypernet(torch.tensor([0, 1]))
    assert flat.shape == (2, 20 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3)
    predicted = hypernet.predict(1)
    assert {k: tuple(v.shape) for k, v in predicted.items()} == {
        k: tuple(p.shape) for k, p in target.named_parameters()
    }
    assert not torch.allclose(flat[0], flat[1])
    assert torch.allclose(torch.cat([v.reshape(-1) for v in predicted.values()]), flat[1], atol=1e-6)


def test_logah_hypernet_outputs_every_parameter_per_task() -> None:
    target = target_mlp(3, hidden=(8, 8), inputs=20)
    hypernet = LoGAHTaskHypernet(target, 3, (1, 20), embedding_dim=4, hidden=16, layers=1, heads=2, rank=2, max_ck=16)
    flat = hypernet(torch.tensor([0, 1, 0]))
    assert flat.shape == (3, hypernet.num_params)
    assert torch.allclose(flat[0], flat[2]) and not torch.allclose(flat[0], flat[1])
    assert torch.allclose(flat[1], hypernet(torch.tensor([1]))[0], atol=1e-6)
    shapes = {k: tuple(v.shape) for k, v in hypernet.predict(2).items()}
    assert shapes == {k: tuple(p.shape) for k, p in target.named_parameters()}
    embedding = hypernet.embed(torch.tensor([2]))
    assert embedding.norm().item() == pytest.approx(math.sqrt(4))  # MIP: constant norm


def test_regularizer_is_zero_when_unchanged_and_matches_hand_value() -> None:
    target = target_mlp(3, hidden=(8,), inputs=10)
    hypernet = ChunkedHypernet(target, num_tasks=3, embedding_dim=4, chunk_size=16, hidden=(8,))
    regularizer = OutputRegularizer(beta=0.1)
    assert regularizer(hypernet).item() == 0.0  # nothing to protect yet
    regularizer.snapshot(hypernet, [0, 1])
    assert regularizer(hypernet).item() == 0.0
    with torch.no_grad():
        hypernet.body.head[-1].bias.add_(0.5)  # every output moves by 0.5
    n = hypernet.num_params  # 10*8 + 8 + 8*3 + 3 = 115
    assert regularizer(hypernet).item() == pytest.approx(0.1 * n * 0.25, rel=1e-5)
    shifted = {"body.head.2.bias": hypernet.body.head[-1].bias - 0.5}
    assert regularizer(hypernet, shifted).item() == pytest.approx(0.0, abs=1e-10)


def test_lookahead_previews_the_exact_adam_step() -> None:
    torch.manual_seed(0)
    hypernet = ChunkedHypernet(target_mlp(2, hidden=(4,), inputs=6), 2, embedding_dim=3, chunk_size=8, hidden=(8,))
    optimizer = torch.optim.Adam(hypernet.weights(), lr=0.01)
    for _ in range(3):  # moments that are not zero
        optimizer.zero_grad()
        hypernet(torch.tensor([0, 1])).pow(2).sum().backward()
        preview = adam_step(optimizer, hypernet)
        before = copy.deepcopy(dict(hypernet.named_parameters()))
        optimizer.step()
        for name, delta in preview.items():
            assert torch.allclose(hypernet.get_parameter(name) - before[name], delta, atol=1e-7), name
    assert "task_embeddings.0" not in preview  # not in the optimizer: never stepped


def test_regularized_hypernet_forgets_less_than_finetuning(one_thread, tmp_path) -> None:
    common = dict(benchmark="permuted", num_tasks=2, steps=300, batch_size=64, target_hidden=64)
    hypernet = run_to(Experiment(method="hypernet", beta=0.05, lookahead=True, chunk_size=2048, **common), tmp_path)
    finetune = run(Experiment(method="finetune", **common))
    assert hypernet["matrix"][0][1] is None and hypernet["matrix"][0][0] > 80
    assert hypernet["forgetting"] < 1.0
    assert finetune["forgetting"] > hypernet["forgetting"] + 5
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["summary"]["forgetting"] == hypernet["forgetting"]
    assert any("reg" in r for r in records)  # the penalty was active on the second task
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_separate_networks_never_forget(one_thread) -> None:
    result = run(Experiment(benchmark="split", method="separate", steps=30, target_hidden=16))
    assert result["forgetting"] == 0.0 and result["backward_transfer"] == 0.0
    assert result["average_accuracy"] > 90
