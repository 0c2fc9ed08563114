"""The ``hypernets`` and ``metaprune`` commands, and the model specs they accept."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hypernets.cli import main
from hypernets.graph import trace
from hypernets.graph.op_graph import DEFAULT_MAX_DISTANCE
from hypernets.models import DEFAULT_SPEC, SPEC_FORMS, ModelSpecError, build_model, parse_kwargs
from metaprune.cli import main as metaprune_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_GPT2 = "gpt2:n_layer=2,n_embd=64,n_head=4"


@pytest.fixture(scope="module")
def default_ir():
    return trace(build_model(DEFAULT_SPEC, device="meta"))


def test_default_model_summary_counts_every_op_kind(capsys, default_ir):
    assert main(["graph"]) == 0
    out = capsys.readouterr().out
    assert f"{len(default_ir.ops)} ops" in out
    for kind, count in Counter(op.kind for op in default_ir.ops).items():
        assert f"{kind} {count}" in out
    assert f"op graph: {len(default_ir.ops)} nodes" in out
    assert f"covered: {len(default_ir.parameters)} of {len(default_ir.parameters)} parameter tensors" in out


def test_json_holds_every_traced_op_and_leaves_no_temporary_file(tmp_path, default_ir):
    path = tmp_path / "ir.json"
    assert main(["graph", DEFAULT_SPEC, "--json", str(path)]) == 0
    ir = json.loads(path.read_text())
    assert len(ir["ops"]) == len(default_ir.ops)
    assert ir["ops"][1]["inputs"] == [0] and ir["ops"][1]["kind"] == default_ir.ops[1].kind
    assert set(ir["parameters"]) == set(default_ir.parameters)
    assert [p.name for p in tmp_path.iterdir()] == ["ir.json"]


def test_plot_writes_a_png_for_each_view(tmp_path, capsys):
    op_png, neuron_png = tmp_path / "op.png", tmp_path / "neuron.png"
    assert main(["graph", "--plot", str(op_png)]) == 0
    assert main(["graph", "zoo:mlp?hidden=16,8", "--view", "neuron", "--plot", str(neuron_png)]) == 0
    assert op_png.read_bytes().startswith(PNG_MAGIC)
    assert neuron_png.read_bytes().startswith(PNG_MAGIC)
    assert "neuron graph: 818 nodes" in capsys.readouterr().out  # 784 inputs, 16 + 8 neurons, 10 outputs


def test_gpt2_on_meta_reports_its_tied_embedding(capsys):
    assert main(["graph", TINY_GPT2, "--max-distance", "2"]) == 0
    out = capsys.readouterr().out
    assert "GPT2LMHeadModel: 26 ops" in out
    assert "tied: transformer.wte.weight (read by 2 ops)" in out
    assert "within 2 hops" in out


def test_unknown_spec_exits_2_listing_the_accepted_forms(capsys):
    assert main(["graph", "keras:resnet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hypernets: error: unknown model spec 'keras:resnet'")
    assert all(form in err for form in SPEC_FORMS)


def test_conversion_error_is_one_line_without_traceback(capsys):
    assert main(["graph", "torchvision:resnet18", "--input-shape", "1,3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hypernets: error: ResNet failed on the example inputs")
    assert err.count("\n") == 1


def test_console_script_runs_the_graph_command():
    """The entry point installed from pyproject's [project.scripts], in a process of its own."""
    script = Path(sys.executable).with_name("hypernets")
    result = subprocess.run([script, "graph", "zoo:mlp"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Sequential: 6 ops")
    assert "Traceback" not in result.stderr


def test_graph_help_documents_specs_and_the_real_max_distance_default(capsys):
    assert main(["graph", "--help"]) == 0
    out = capsys.readouterr().out
    assert f"(default: to_op_graph's, {DEFAULT_MAX_DISTANCE})" in out
    assert SPEC_FORMS[0] in out


def test_metaprune_help_exits_0_and_lists_the_prune_command(capsys):
    assert metaprune_main(["--help"]) == 0
    assert "prune a trained model to a FLOPs speed-up" in capsys.readouterr().out


def test_parse_kwargs_reads_ints_floats_bools_tuples_and_strings():
    assert parse_kwargs("a=1&b=0.5&c=true&d=False&e=8,16&f=avg", "&") == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": False,
        "e": (8, 16),
        "f": "avg",
    }


def test_build_model_passes_typed_kwargs_to_timm():
    model = build_model(
        "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=1&num_classes=3&class_token=false&global_pool=avg"
    )
    assert model.patch_embed.img_size == (32, 32)
    assert len(model.blocks) == 1 and model.num_classes == 3 and model.cls_token is None
    assert not model.training


def test_build_model_gpt2_sizes_and_overrides_on_meta():
    model = build_model("gpt2:medium,n_layer=1", device="meta")
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (1, 1024, 16)
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet18", "accepted forms"),
        ("timm:", "names no model"),
        ("timm:resnet18?depth", "expected key=value"),
        ("timm:no_such_model", "Unknown model"),
        ("timm:vit_tiny_patch16_224?class_token=false", "Token pooling needs the class token"),
        ("gpt2:huge", "choose one of small, medium, large, xl"),
        ("gpt2:n_embd=65,n_head=4", "divisible"),
        ("zoo:lenet", "choose one of mlp"),
    ],
)
def test_build_model_rejects_bad_specs(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        build_model(spec, device="meta")


@pytest.fixture(scope="module")
def hypernet_dir(tmp_path_factory):
    import torch

    from hypernets import LoGAH

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("hnet")
    LoGAH(hidden=32, layers=1, heads=4, rank=4, max_ck=64).save_pretrained(directory)
    return directory


def test_predict_writes_every_parameter_loadable_into_the_model(tmp_path, capsys, hypernet_dir):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "gpt2.safetensors"
    assert main(["predict", "--hypernet", str(hypernet_dir), "--model", TINY_GPT2, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    params = load_file(out)
    model = build_model(TINY_GPT2)
    result = model.load_state_dict(params, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= {"lm_head.weight"}  # tied to transformer.wte.weight, stored once
    assert all(torch.isfinite(p).all() for p in params.values())
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2.safetensors"]


def test_predict_casts_to_the_requested_dtype(tmp_path, hypernet_dir):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "vit.safetensors"
    assert main(["predict", "--hypernet", str(hypernet_dir), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert {p.dtype for p in load_file(out).values()} == {torch.bfloat16}


def test_predict_with_a_missing_hypernet_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never.safetensors"
    assert main(["predict", "--hypernet", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert "does not exist and is not a shipped hypernetwork (" in capsys.readouterr().err
    assert not out.exists()
