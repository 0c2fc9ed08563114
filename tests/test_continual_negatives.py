"""Outlier exposure for task inference: the uniform loss on a worked case, each kind of self-generated
negative on images built so that where every pixel came from can be read off, the learners' loss with
and without the term, and the option's checks in ``Experiment`` and ``hypernets continual``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hypernets.cli import main
from hypernets.continual.experiment import Experiment, describe
from hypernets.continual.hypernet import target_mlp
from hypernets.continual.learners import SeparateLearner, task_loss
from hypernets.continual.negatives import (
    OutlierExposure,
    make_negatives,
    mixup,
    other_class,
    rotate,
    shuffle_patches,
    splice,
    uniform_loss,
)

PIXELS = 28 * 28


def test_uniform_loss_is_the_kl_from_uniform() -> None:
    """Logits ``(0, log 3)``: ``p = (1/4, 3/4)``, ``KL(u || p) = -(log 1/4 + log 3/4) / 2 - log 2
    = log 2 - log(3) / 2``; zero on uniform rows whatever their level."""
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert uniform_loss(logits).item() == pytest.approx(math.log(2) - math.log(3) / 2, abs=1e-6)
    assert uniform_loss(torch.full((3, 5), 7.0)).item() == pytest.approx(0.0, abs=1e-6)
    two = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # the mean over rows
    assert uniform_loss(two).item() == pytest.approx((math.log(2) - math.log(3) / 2) / 2, abs=1e-6)


def test_other_class_always_picks_another_label() -> None:
    torch.manual_seed(0)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    for _ in range(20):
        assert torch.all(y[other_class(y)] != y)
    picks = torch.stack([other_class(torch.ones(4, dtype=torch.long)) for _ in range(20)])
    assert torch.equal(picks.unique(), torch.arange(4))  # one label: any example, at random


def patch_ids(x: torch.Tensor) -> torch.Tensor:
    """``[n, 784]`` images whose 7x7 patches are constant -> ``[n, 4, 4]`` each patch's value."""
    return x.reshape(len(x), 4, 7, 4, 7)[:, :, 0, :, 0]


def test_shuffled_patches_are_the_same_patches_in_a_new_order() -> None:
    torch.manual_seed(0)
    ids = torch.arange(16.0).reshape(4, 4)
    image = ids.repeat_interleave(7, 0).repeat_interleave(7, 1).reshape(1, PIXELS)  # patch k holds k
    shuffled = shuffle_patches(image.repeat(3, 1))
    blocks = shuffled.reshape(3, 4, 7, 4, 7)
    assert torch.equal(blocks, patch_ids(shuffled)[:, :, None, :, None].expand_as(blocks))  # whole patches
    for row in patch_ids(shuffled):
        assert torch.equal(row.flatten().sort().values, torch.arange(16.0))  # each exactly once
    assert not torch.equal(patch_ids(shuffled)[0], ids)  # P(identity) = 1/16!
    assert not torch.equal(patch_ids(shuffled)[0], patch_ids(shuffled)[1])  # an order per image


def test_splice_and_mixup_pair_each_image_with_another_class() -> None:
    torch.manual_seed(0)
    y = torch.tensor([0, 0, 1])
    x = torch.arange(3.0)[:, None].expand(3, PIXELS)  # image i is all i
    spliced = splice(x, y)
    assert torch.equal(spliced[:, : PIXELS // 2], x[:, : PIXELS // 2])  # own top 14 rows
    assert torch.all(spliced[:2, PIXELS // 2 :] == 2)  # the bottom of the one image of class 1
    assert spliced[2, PIXELS // 2] in (0.0, 1.0) and torch.all(spliced[2, PIXELS // 2 :] == spliced[2, -1])
    mixed = mixup(x, y)
    assert torch.all(mixed[0] == 1.0) and torch.all(mixed[1] == 1.5)  # (0 + 2) / 2, (1 + 2) / 2
    assert mixed[2, 0] in (1.0, 1.5) and torch.all(mixed[2] == mixed[2, 0])  # (2 + 0) / 2 or (2 + 1) / 2


def test_rotate_turns_a_quarter_either_way() -> None:
    torch.manual_seed(0)
    image = torch.zeros(1, 28, 28)
    image[0, 0, 5] = 1.0  # row 0, column 5
    turned = rotate(image.reshape(1, PIXELS).repeat(16, 1)).reshape(16, 28, 28)
    left = torch.zeros(28, 28)
    left[22, 0] = 1.0  # rot90 counter-clockwise: (r, c) -> (27 - c, r)
    right = torch.zeros(28, 28)
    right[5, 27] = 1.0  # clockwise: (r, c) -> (c, 27 - r)
    kinds = [(torch.equal(t, left), torch.equal(t, right)) for t in turned]
    assert all(a != b for a, b in kinds) and {a for a, _ in kinds} == {True, False}  # both turns occur


def test_unknown_negatives_are_refused() -> None:
    with pytest.raises(ValueError, match="negatives"):
        make_negatives("blur", torch.zeros(2, PIXELS), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="negatives"):
        OutlierExposure("none")


def test_task_loss_adds_the_weighted_term_on_the_batch_negatives() -> None:
    torch.manual_seed(0)
    network = nn.Linear(PIXELS, 2)
    x, y = torch.rand(6, PIXELS), torch.tensor([0, 1, 0, 1, 1, 0])
    plain, stats = task_loss(network, x, y, None)
    assert plain.item() == pytest.approx(F.cross_entropy(network(x), y).item()) and list(stats) == ["loss"]
    exposure = OutlierExposure("splice", weight=0.5)
    torch.manual_seed(1)
    loss, stats = task_loss(network, x, y, exposure)
    torch.manual_seed(1)
    negatives = splice(x, y)
    expected = F.cross_entropy(network(x), y) + 0.5 * uniform_loss(network(negatives))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats["loss"] == pytest.approx(plain.item()) and stats["outlier"] == pytest.approx(
        0.5 * uniform_loss(network(negatives)).item(), rel=1e-6
    )


def separate_after_steps(exposure: OutlierExposure | None, steps: int = 30) -> SeparateLearner:
    torch.manual_seed(0)
    learner = SeparateLearner(
        lambda classes: target_mlp(classes, hidden=(16,), inputs=PIXELS), [(0, 1)], 1e-2, exposure
    )
    learner.begin_task(0)
    data = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, PIXELS, generator=data), torch.randint(2, (32,), generator=data)
    for _ in range(steps):
        learner.train_step(0, x, y)
    return learner


def test_outlier_exposure_changes_training_and_weight_zero_does_not() -> None:
    """The same seeds: weight 0 trains exactly the plain network; weight 1 a network less confident on
    the negatives."""
    plain, zero, exposed = (
        separate_after_steps(e) for e in (None, OutlierExposure("patches", 0.0), OutlierExposure("patches"))
    )
    for a, b in zip(plain.networks[0].parameters(), zero.networks[0].parameters(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(5)
    x = torch.rand(64, PIXELS)
    negatives = shuffle_patches(x)
    with torch.no_grad():
        assert uniform_loss(exposed.logits(0, negatives)) < uniform_loss(plain.logits(0, negatives)) / 2


def test_experiment_checks_the_option() -> None:
    with pytest.raises(ValueError, match="negatives must be one of"):
        Experiment(negatives="blur")
    with pytest.raises(ValueError, match="negatives patches"):
        Experiment(method="ewc", negatives="patches")
    Experiment(method="separate", negatives="patches")
    assert "outlier exposure on splice, weight 0.5" in describe(
        Experiment(setting="class", negatives="splice", outlier_weight=0.5)
    )


def test_cli_runs_and_names_outlier_exposure(one_thread, capsys) -> None:
    argv = ["continual", "--method", "hypernet,separate", "--setting", "class", "--negatives", "splice"]
    assert main([*argv, "--seeds", "0", "--steps", "3", "--num-tasks", "2"]) == 0
    printed = capsys.readouterr().out
    assert "--negatives splice --outlier-weight 1" in printed
    assert "| split | class | hypernet | 3 | 1 |" in printed and "| split | class | separate | 3 | 1 |" in printed
