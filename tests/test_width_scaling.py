"""Width-aware scaling of decoded matrices, the recorded training range, and the warning past it."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from hypernets import LoGAH
from hypernets.checkpoint import CheckpointError
from hypernets.graph import to_op_graph
from hypernets.logah import WiderThanTrainedWarning, largest_dim
from hypernets.nn.plan import REFERENCE_FAN_IN, TargetPlan
from hypernets.train.loop import trained_max_dim
from hypernets.train.tasks import TextTask, task_for
from hypernets.zoo import ArchSampler, get_family

SMALL = dict(hidden=32, layers=1, heads=4, rank=4, max_ck=64)


def _plan(*widths: int) -> TargetPlan:
    model = nn.Sequential(*(nn.Linear(a, b) for a, b in itertools.pairwise(widths)))
    return TargetPlan.for_graphs([to_op_graph(model, (1, widths[0]))], max_ck=64)[0]


def test_mup_shrinks_a_matrix_as_one_over_fan_in_past_the_reference_and_leaves_vectors():
    plan = _plan(REFERENCE_FAN_IN, 4 * REFERENCE_FAN_IN, 8)
    standard, mup = plan.scale(rank=4, width_scaling="standard"), plan.scale(rank=4, width_scaling="mup")
    fan_ins = [e.fan_in for e in plan.matrices]
    assert fan_ins == [REFERENCE_FAN_IN, 4 * REFERENCE_FAN_IN]
    assert standard[0].item() == pytest.approx(1 / math.sqrt(REFERENCE_FAN_IN) / 2)  # 1/sqrt(fan_in)/sqrt(rank)
    assert mup[0].item() == pytest.approx(standard[0].item())  # at the reference: unchanged
    assert mup[1].item() == pytest.approx(standard[1].item() / 2)  # 4x the fan-in: half of 1/sqrt
    assert mup[1].item() == pytest.approx(math.sqrt(REFERENCE_FAN_IN) / (4 * REFERENCE_FAN_IN) / 2)  # = c / fan_in
    assert torch.equal(mup[2:], standard[2:])  # biases keep their std
    with pytest.raises(ValueError, match="width_scaling"):
        plan.scale(rank=4, width_scaling="linear")


def test_a_tied_table_scales_with_its_width_under_mup():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=256, n_head=2, vocab_size=100, n_positions=8))
    plan = TargetPlan.for_graphs([to_op_graph(model)], max_ck=64)[0]
    wte = next(i for i, e in enumerate(plan.matrices) if e.name == "transformer.wte.weight")
    assert plan.matrices[wte].fan_in == 256  # what the tied head sums over
    ratio = plan.scale(4, "mup")[wte] / plan.scale(4, "standard")[wte]
    assert ratio.item() == pytest.approx(0.5)


def test_the_prediction_follows_the_chosen_scaling():
    model = nn.Sequential(nn.Linear(1024, 16))  # fan-in 16x the reference: 1/4 of the standard scale
    torch.manual_seed(0)
    standard = LoGAH(**SMALL, mip=False, width_scaling="standard").eval()
    mup = LoGAH(**SMALL, mip=False, width_scaling="mup").eval()
    mup.load_state_dict(standard.state_dict())
    a, b = standard.predict(model, (1, 1024)), mup.predict(model, (1, 1024))
    torch.testing.assert_close(b["0.weight"], a["0.weight"] / 4)
    torch.testing.assert_close(b["0.bias"], a["0.bias"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="width_scaling"):
        LoGAH(**SMALL, width_scaling="sqrt")
    with pytest.raises(ValueError, match="trained_max_dim"):
        LoGAH(**SMALL, trained_max_dim=-1)


def test_a_checkpoint_from_before_width_scaling_loads_as_standard(tmp_path):
    LoGAH(**SMALL, width_scaling="mup").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["width_scaling"] == "mup"  # the choice is written out
    del config["width_scaling"], config["trained_max_dim"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = LoGAH.from_pretrained(tmp_path)  # written before the settings existed: how it was trained
    assert loaded.config.width_scaling == "standard" and loaded.config.trained_max_dim == 0
    config["width_scaling"] = "cubic"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="width_scaling"):
        LoGAH.from_pretrained(tmp_path)


def test_a_target_wider_than_training_warns_naming_the_widest_tensor():
    hnet = LoGAH(**SMALL, trained_max_dim=64).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hnet.predict(nn.Sequential(nn.Linear(32, 64)), (1, 32))  # within: silent
    with pytest.warns(WiderThanTrainedWarning, match=r"dimensions up to 64\); the widest is 1\.weight with 200"):
        hnet.predict(nn.Sequential(nn.Linear(32, 100), nn.Linear(100, 200)), (1, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LoGAH(**SMALL).eval().predict(nn.Sequential(nn.Linear(32, 200)), (1, 32))  # range unknown: silent


@pytest.mark.parametrize("name", ["gpt2", "gpt2-wide", "vit"])
def test_the_recorded_training_range_is_the_widest_tensor_of_the_training_space(name):
    family = get_family(name)
    dims = [largest_dim(a.build("meta")) for a in ArchSampler(family).choices]
    assert trained_max_dim(family) == max(dims)


def test_the_wide_gpt2_family_is_shallow_where_wide_and_scored_on_text():
    family = get_family("gpt2-wide")
    choices = ArchSampler(family).choices
    assert max(a.n_embd for a in choices) == 384
    assert all(a.n_layer <= 2 for a in choices if a.n_embd > 96)
    assert any(a.n_layer == 4 for a in choices)
    assert isinstance(task_for("gpt2-wide"), TextTask)
    assert max(a.n_embd for a in family.heldout_archs(8)) > 384  # held out: wider than training


def test_predict_on_the_command_line_warns_in_one_line_and_still_writes(tmp_path, capsys):
    from hypernets.cli import main

    LoGAH(**SMALL, trained_max_dim=32).save_pretrained(tmp_path / "hnet")
    out = tmp_path / "gpt2.safetensors"
    spec = "gpt2:n_layer=1,n_embd=16,n_head=2,vocab_size=64,n_positions=8"
    assert main(["predict", "--hypernet", str(tmp_path / "hnet"), "--model", spec, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "hypernets predict: warning: GPT2LMHeadModel has" in err
    assert "the widest is transformer.wte.weight with 64" in err and len(err.strip().splitlines()) == 1
    assert out.is_file()
