"""The task-conditioned hypernetwork built on ``hypernetize``: any target (the MLP and a small CNN), flat
outputs that match its networks, and earlier tasks' embeddings that training never moves."""

from __future__ import annotations

import pytest
import torch
from continual_helpers import check_outputs_every_parameter_per_task

from hypernets.continual.hypernet import target_cnn, target_mlp
from hypernets.continual.hypernetized import HypernetizedTaskHypernet
from hypernets.continual.learners import HypernetLearner

TINY = dict(body="chunked", hidden=16, layers=1, chunk_size=256, chunk_dim=8, embedding_dim=4)


@pytest.mark.parametrize("build", [lambda: target_mlp(3, hidden=(8,), inputs=784), lambda: target_cnn(3, (2, 4))])
def test_outputs_are_every_parameter_of_the_target_per_task(build) -> None:
    target = build()
    check_outputs_every_parameter_per_task(target, lambda target: HypernetizedTaskHypernet(target, num_tasks=3, **TINY))


def test_training_a_task_leaves_the_other_embeddings_where_they_were() -> None:
    torch.manual_seed(0)
    target = target_cnn(2, (2, 4))
    hypernet = HypernetizedTaskHypernet(target, num_tasks=3, **TINY)
    learner = HypernetLearner(hypernet, target, [(0, 1), (2, 3), (4, 5)], beta=1.0)
    table = hypernet.model.task_embeddings
    x, y = torch.rand(8, 784), torch.randint(2, (8,))
    learner.begin_task(0)
    learner.train_step(0, x, y)
    learner.end_task(0, None)
    before = table.detach().clone()
    learner.begin_task(1)
    stats = {}
    for _ in range(3):
        stats = learner.train_step(1, x, y)
    assert stats["reg"] > 0  # the regularizer pulled on task 0's output, and through it on row 0
    moved = (table.detach() - before).abs().sum(-1)
    assert moved[0] == 0 and moved[2] == 0 and moved[1] > 0


def drift_of_task_zero(beta: float) -> float:
    """``|h(e_0) - theta*_0|^2`` after 10 steps on task 1 of a CNN target, from the same start."""
    torch.manual_seed(0)
    target = target_cnn(2, (2, 4))
    hypernet = HypernetizedTaskHypernet(target, num_tasks=2, **TINY)
    learner = HypernetLearner(hypernet, target, [(0, 1), (2, 3)], beta=beta)
    learner.end_task(0, None)  # snapshot task 0's network as it is
    learner.begin_task(1)
    data = torch.Generator().manual_seed(1)
    for _ in range(10):
        learner.train_step(1, torch.rand(8, 784, generator=data), torch.randint(2, (8,), generator=data))
    with torch.no_grad():
        return (hypernet(torch.tensor([0])) - learner.regularizer.targets).pow(2).sum().item()


def test_the_regularizer_holds_an_earlier_task_of_a_cnn() -> None:
    free, held = drift_of_task_zero(0.0), drift_of_task_zero(10.0)
    assert free > 0 and held < free / 2
