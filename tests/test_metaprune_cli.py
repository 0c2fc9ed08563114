"""``metaprune prune``: exit status 0/1/2, outputs written whole or not at all, pruned models reload."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from metaprune.cli import main
from metaprune.finetune import recalibrate_batchnorm
from metaprune.flops import count_flops
from metaprune.measure import count_macs_params
from metaprune.metanet import Metanet
from metaprune.population import INPUT_SHAPE, build_population, load_member, mnist, population_specs
from metaprune.prune import prune, sparse_train
from metaprune.store import load_pruned
from metaprune.strength import POOLED, Budget, Calibration, prepared


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    root = tmp_path_factory.mktemp("population")
    (directory,) = build_population(root, population_specs(1, train_steps=80), progress=False)
    return directory


def _args(member, out, *extra: str) -> list[str]:
    model, config = member / "model.safetensors", member / "model.json"
    return ["prune", "--model", str(model), "--config", str(config), "--out", str(out), *extra]


def test_a_met_target_writes_a_pruned_model_that_reloads_and_a_report(member, tmp_path, capsys) -> None:
    out, report_path = tmp_path / "pruned", tmp_path / "report.json"
    options = ["--speedup", "2", "--finetune-steps", "20", "--max-acc-drop", "20", "--report", str(report_path)]
    assert main(_args(member, out, *options)) == 0
    assert "PASSED" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["speedup"] >= 2 and report["reasons"] == []
    model = load_pruned(None, out)
    record = json.loads((out / "model.json").read_text())
    assert record["config"] == json.loads((member / "model.json").read_text())
    assert record["shapes"] == {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    example = torch.zeros(1, *INPUT_SHAPE[1:])
    macs, params = count_macs_params(model, example)
    assert (macs, params) == (report["after"]["macs"], report["after"]["params"])
    assert report["before"]["flops"] / count_flops(model, example) == report["speedup"] >= 2
    images, labels = mnist("eval").tensors
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert math.isclose(accuracy, report["after"]["accuracy"], abs_tol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned", "report.json"]  # no temporaries left


def test_a_missed_accuracy_bound_exits_1_with_the_reason_and_no_model(member, tmp_path) -> None:
    out = tmp_path / "pruned"
    assert main(_args(member, out, "--speedup", "2", "--finetune-steps", "0", "--max-acc-drop", "-100")) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["passed"] and "accuracy dropped" in report["reasons"][0]
    assert not out.exists()


@pytest.mark.parametrize(("extra", "sparse_steps"), [([], 100), (["--sparse-steps", "10"], 10)])
def test_a_fresh_metanet_is_applied_and_sparsity_trained_before_pruning(member, tmp_path, extra, sparse_steps) -> None:
    torch.manual_seed(0)
    Metanet().save_pretrained(tmp_path / "metanet")
    out = tmp_path / "pruned"
    options = ["--metanet", str(tmp_path / "metanet"), "--speedup", "2", "--finetune-steps", "20", *extra]
    assert main(_args(member, out, *options, "--max-acc-drop", "100")) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metanet"] == str(tmp_path / "metanet")
    assert report["sparse"]["steps"] == sparse_steps and len(report["sparse"]["last_loss"]) == 1
    assert report["finetune"]["steps"] == 20


@pytest.mark.parametrize("strength", ["0.5", "0"])
def test_the_metanet_path_prunes_what_the_calibration_prunes(member, tmp_path, strength) -> None:
    """The CLI's rewrite, sparsity training and pruning give, tensor for tensor, the network that
    ``metaprune.strength.prepared`` and ``prune`` give at the strength it kept: the calibration answers for what
    the CLI does. The CLI also runs strength 0, DepGraph's recipe (``--sparse-steps`` without a metanetwork),
    and keeps whichever is more accurate."""
    torch.manual_seed(0)
    Metanet().save_pretrained(tmp_path / "metanet")
    options = ["--speedup", "2", "--sparse-steps", "5", "--finetune-steps", "0", "--max-acc-drop", "100"]
    rewrite = ["--metanet", str(tmp_path / "metanet"), "--rewrite-strength", strength]
    assert main(_args(member, tmp_path / "pruned", *rewrite, *options)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    tried = {c["rewrite_strength"]: c["accuracy"] for c in report["candidates"]}
    assert list(tried) == ([0.5, 0.0] if strength == "0.5" else [0.0])
    assert tried[report["rewrite_strength"]] == max(tried.values()) == report["after"]["accuracy"]
    model, _ = load_member(member)
    metanet = Metanet.from_pretrained(tmp_path / "metanet").eval()
    train = mnist("train")
    network = prepared(model, metanet, report["rewrite_strength"], train, budget=Budget(sparse_steps=5), seed=0)
    result = prune(network, torch.zeros(1, *INPUT_SHAPE[1:]), speedup=2.0, counter="flops", seed=0)
    expected = recalibrate_batchnorm(result.model, train, seed=0).state_dict()
    pruned = load_pruned(None, tmp_path / "pruned").state_dict()
    if strength == "0":
        assert main(_args(member, tmp_path / "depgraph", *options, "--report", str(tmp_path / "d.json"))) == 0
        assert load_pruned(None, tmp_path / "depgraph").state_dict().keys() == expected.keys()
    assert pruned.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(pruned[name], tensor, msg=name)


@pytest.mark.parametrize("given", [None, "0.25"])
def test_the_rewrite_strength_is_the_calibrated_one_unless_given(member, tmp_path, capsys, given) -> None:
    torch.manual_seed(0)
    Metanet().save_pretrained(tmp_path / "metanet")
    family = json.loads((member / "model.json").read_text())["family"]
    scores = (((0.9, 0.9), (0.8, 0.8)), ((0.5, 0.5), (0.6, 0.6)))
    calibration = Calibration(
        speedups=(1.5, 3.0),
        candidates=(0.0, 1.0),
        strengths={POOLED: (0.0, 0.0), family: (0.0, 1.0)},  # the pooled strength would be 0
        scores={POOLED: scores, family: scores},
        budget=Budget(),
    )
    calibration.save(tmp_path / "metanet")
    options = ["--metanet", str(tmp_path / "metanet"), "--speedup", "2", "--sparse-steps", "0"]
    options += ["--finetune-steps", "0", "--max-acc-drop", "100"] + (["--rewrite-strength", given] if given else [])
    assert main(_args(member, tmp_path / "pruned", *options)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    expected = float(given) if given else calibration.strength(2.0, family)
    tried = [candidate["rewrite_strength"] for candidate in report["candidates"]]
    assert 0 < expected < 1 and tried == [pytest.approx(expected), 0.0]  # and DepGraph's recipe alone
    assert report["rewrite_strength"] in tried
    note = "strengths.json was calibrated for Budget(sparse_steps=100, finetune_steps=100"  # this run: 0 and 0
    assert any(note in line for line in report["notes"]) == (given is None)
    assert (note in capsys.readouterr().out) == (given is None)
    options[options.index("--speedup")] = "--param-ratio"  # a target the calibration has no strength for
    status = main(_args(member, tmp_path / "by_params", *options, "--report", str(tmp_path / "by_params.json")))
    if given:
        assert status == 0
    else:
        assert status == 2 and "gives the rewrite strength per speed-up" in capsys.readouterr().err
        assert not (tmp_path / "by_params").exists() and not (tmp_path / "by_params.json").exists()


def test_a_parameter_ratio_target_is_met_and_reported(member, tmp_path) -> None:
    options = ["--param-ratio", "2", "--finetune-steps", "0", "--max-acc-drop", "100"]
    assert main(_args(member, tmp_path / "pruned", *options)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["target"] | {"counted_in": None} == {
        "speedup": None,
        "param_ratio": 2.0,
        "max_acc_drop": 100.0,
        "max_loss_increase": None,
        "counted_in": None,
    }
    _, params = count_macs_params(load_pruned(None, tmp_path / "pruned"), torch.zeros(1, *INPUT_SHAPE[1:]))
    assert params == report["after"]["params"] and report["before"]["params"] >= 2 * params
    assert report["param_ratio"] == pytest.approx(report["before"]["params"] / params)


def test_without_a_metanet_nothing_is_trained_before_pruning(member, tmp_path) -> None:
    assert (
        main(_args(member, tmp_path / "pruned", "--speedup", "2", "--finetune-steps", "0", "--max-acc-drop", "100"))
        == 0
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sparse"] == {"steps": 0, "steps_done": 0, "lr": 0.01, "first_loss": [], "last_loss": []}
    assert report["finetune"]["steps"] == 0 and report["metanet"] is None


@pytest.mark.parametrize(
    ("extra", "sparse_steps", "global_pruning"), [(["--sparse-steps", "5"], 5, False), (["--global-pruning"], 0, True)]
)
def test_depgraph_options_prune_as_the_library_calls_do(member, tmp_path, extra, sparse_steps, global_pruning) -> None:
    """``--sparse-steps`` (DepGraph's regularized training) and ``--global-pruning`` give the model that
    ``sparse_train`` then ``prune`` give when called by hand."""
    options = ["--speedup", "2", "--finetune-steps", "0", "--max-acc-drop", "100", *extra]
    assert main(_args(member, tmp_path / "pruned", *options)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["global_pruning"] is global_pruning
    assert report["sparse"]["steps"] == sparse_steps and len(report["sparse"]["last_loss"]) == min(sparse_steps, 1)
    model, _ = load_member(member)
    example, train = torch.zeros(1, *INPUT_SHAPE[1:]), mnist("train")
    if sparse_steps:
        sparse_train(model, example, train, steps=sparse_steps, lr=0.01, seed=0, progress=False)
    result = prune(model.eval(), example, speedup=2.0, global_pruning=global_pruning, counter="flops", seed=0)
    expected = recalibrate_batchnorm(result.model, train, seed=0).state_dict()
    pruned = load_pruned(None, tmp_path / "pruned").state_dict()
    assert pruned.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(pruned[name], tensor, msg=name)


def test_a_vit_loses_heads_and_reloads_with_the_pruned_head_count(tmp_path) -> None:
    specs = population_specs(1, train_steps=20, population="vit")  # 2 blocks of 2 heads, 64 MLP channels
    (vit,) = build_population(tmp_path / "population", specs, progress=False)
    out = tmp_path / "pruned"
    options = ["--speedup", "1.5", "--head-ratio", "0.5", "--finetune-steps", "0", "--max-acc-drop", "100"]
    assert main(_args(vit, out, *options)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["head_ratio"] == 0.5 and report["speedup"] >= 1.5
    model = load_pruned(None, out)
    assert [(b.attn.num_heads, b.attn.qkv.out_features, b.attn.proj.in_features) for b in model.blocks] == [
        (1, 48, 16),
        (1, 48, 16),
    ]
    images, labels = mnist("eval").tensors
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert math.isclose(accuracy, report["after"]["accuracy"], abs_tol=1e-6)


@pytest.mark.parametrize(
    "problem",
    [
        "impossible",
        "impossible_params",
        "no_target",
        "param_ratio_range",
        "heads",
        "head_ratio",
        "negative",
        "strength",
        "strength_range",
        "sparse_negative",
        "nan",
        "mismatch",
        "corrupt",
        "exists",
        "keep_empty",
        "keep_unknown",
    ],
)
def test_bad_input_exits_2_naming_the_culprit_and_writes_nothing(member, tmp_path, capsys, problem) -> None:
    weights, config, speedup = member / "model.safetensors", member / "model.json", "2"
    extra = []
    if problem == "impossible_params":
        speedup, extra, expected = None, ["--param-ratio", "100000"], "cannot prune to param_ratio"
    elif problem == "no_target":
        speedup, expected = None, "give a target: --speedup and/or --param-ratio"
    elif problem == "param_ratio_range":
        extra, expected = ["--param-ratio", "0.5"], "argument --param-ratio: must be at least 1, got 0.5"
    elif problem == "impossible":
        speedup, expected = "100000", "cannot prune to speedup"
    elif problem == "heads":
        extra, expected = ["--head-ratio", "0.5"], f"{config}: head_ratio needs a model with timm-style attention"
    elif problem == "head_ratio":
        extra, expected = ["--head-ratio", "1.5"], "argument --head-ratio: must be below 1, got 1.5"
    elif problem == "negative":
        extra = ["--metanet", str(tmp_path / "metanet"), "--sparse-steps", "-1"]
        expected = "argument --sparse-steps: must be in [0, 1,000,000,000], got -1"
    elif problem == "strength":
        extra, expected = ["--rewrite-strength", "0.5"], "--rewrite-strength needs --metanet"
    elif problem == "strength_range":
        extra = ["--metanet", str(tmp_path / "metanet"), "--rewrite-strength", "1.5"]
        expected = "argument --rewrite-strength: must be at most 1, got 1.5"
    elif problem == "sparse_negative":
        extra, expected = ["--sparse-steps", "-1"], "argument --sparse-steps: must be in [0, 1,000,000,000], got -1"
    elif problem == "nan":
        state = load_file(weights)
        first = next(iter(state))
        state[first][0] = float("nan")
        weights = tmp_path / "nan.safetensors"
        save_file(state, weights)
        expected = first
    elif problem == "mismatch":
        other = {**json.loads(config.read_text()), "kwargs": {"channels": [4, 4]}}
        config = tmp_path / "other.json"
        config.write_text(json.dumps(other))
        expected = "does not match"
    elif problem == "corrupt":
        weights = tmp_path / "corrupt.safetensors"
        weights.write_bytes(b"not a safetensors file")
        expected = "not a readable safetensors file"
    elif problem == "keep_empty":
        extra, expected = ["--keep", "features.0,,head"], "argument --keep: 'features.0,,head': give module names"
    elif problem == "keep_unknown":
        extra, expected = ["--keep", "nosuch.layer"], "'nosuch.layer' is not a submodule of the model"
    else:
        (tmp_path / "out" / "old").mkdir(parents=True)
        expected = "already exists"
    before = sorted(tmp_path.rglob("*"))
    args = ["prune", "--model", str(weights), "--config", str(config), *(["--speedup", speedup] if speedup else [])]
    assert main([*args, *extra, "--finetune-steps", "5", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaprune: error:") and expected in err, err
    assert sorted(tmp_path.rglob("*")) == before
