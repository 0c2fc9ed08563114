"""Comparing initializations: predicted parameters land in the model, every init gets its row, and
the scores are the task's real numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hypernets.evaluate import RANDOM, compare_inits, finetune, initialize, markdown_table, write_report
from hypernets.logah import LoGAH, LoGAHConfig
from hypernets.train import task_for
from hypernets.train.baseline import count_parameters, tiled_baseline
from hypernets.train.graphs import arch_graph
from hypernets.zoo import GPT2Arch, ViTArch

TINY = LoGAHConfig(hidden=32, layers=1, heads=2, rank=4, max_ck=64)
SMALL_VIT = ViTArch(depth=1, embed_dim=32, num_heads=2, mlp_ratio=2.0, patch_size=14, pool="avg")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiled_baseline_has_about_as_many_parameters():
    baseline = tiled_baseline(TINY)
    assert baseline.decoder == "tiled" and baseline.hidden == TINY.hidden
    assert abs(count_parameters(baseline) - count_parameters(TINY)) / count_parameters(TINY) < 0.02


def test_predicted_init_holds_exactly_the_hypernetwork_output():
    torch.manual_seed(0)
    hnet = LoGAH(TINY).eval()
    model = initialize(SMALL_VIT, hnet, seed=0)
    with torch.no_grad():
        expected = hnet([arch_graph(SMALL_VIT, TINY.max_distance)[1]])[0]
    assert set(expected) == {n for n, _ in model.named_parameters()}
    assert all(torch.equal(p, expected[n]) for n, p in model.named_parameters())
    again = initialize(SMALL_VIT, None, seed=5), initialize(SMALL_VIT, None, seed=5)
    assert torch.equal(again[0].head.weight, again[1].head.weight)


def test_random_gpt2_starts_near_uniform_and_fine_tuning_lowers_its_loss():
    task = task_for("gpt2")
    model = initialize(GPT2Arch(n_layer=1, n_embd=32, n_head=2, n_positions=64), None, seed=0)
    steps, losses = finetune(model, task, steps=20, lr=3e-3, batch_size=16, seed=0, points=2)
    assert steps == [0, 10, 20]
    assert losses[0] == pytest.approx(math.log(256), abs=0.1)
    assert losses[-1] < losses[0] - 1.0


def test_three_initializations_make_three_rows(tmp_path):
    torch.manual_seed(0)
    hypernets = {"LoGAH": LoGAH(TINY), "tiled": LoGAH(tiled_baseline(TINY))}
    curves = compare_inits([SMALL_VIT], hypernets, "vit", finetune_steps=4, lr=1e-3, batch_size=32)
    assert [c.init for c in curves] == ["LoGAH", "tiled", RANDOM]
    assert all(c.steps == [0, 1, 2, 3, 4] and len(c.scores) == 5 for c in curves)
    assert all(0 <= s <= 100 for c in curves for s in c.scores)
    table = write_report(curves, tmp_path, "accuracy", overwrite=True)
    summary_rows = [line for line in table.splitlines() if line.count("|") == 4 and line[2:4] != "--"]
    assert [row.split("|")[1].strip() for row in summary_rows[1:]] == ["LoGAH", "tiled", RANDOM]
    random_row = next(r for r in summary_rows if r.startswith(f"| {RANDOM}"))
    assert float(random_row.split("|")[2]) == pytest.approx(curves[2].scores[0], abs=1e-3)
    assert table == markdown_table(curves, "accuracy") == (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())[0]["scores"] == curves[0].scores
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
