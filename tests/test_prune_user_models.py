"""``metaprune prune`` and ``metaprune.prune_model`` on what users bring: their own factory, torchvision and timm
models, a Hugging Face decoder, image folders and text files; reports for CI; pruned models that reload from
the spec and run in onnxruntime."""

from __future__ import annotations

import json
import sys
import textwrap
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from hypernets.data import load_mnist
from hypernets.data.spec import build_data
from hypernets.models import build_model
from metaprune import load_pruned, prune_model
from metaprune.cli import main
from metaprune.flops import count_flops

USER_MODULE = "usernets"
FACTORY = f"{USER_MODULE}:residual_cnn?width=8"
USER_CODE = """
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        )

    def forward(self, x):
        return (x + self.body(x)).relu()


class Cumulative(nn.Module):
    # channels summed cumulatively: a neuron graph cannot say which channel feeds which

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.conv(x).relu().cumsum(dim=1).mean((2, 3)))


def residual_cnn(width=16, classes=10):
    return nn.Sequential(
        nn.Conv2d(1, width, 5, padding=2, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        Block(width), nn.MaxPool2d(2), Block(width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    )
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An MNIST image folder (6 train and 3 val images of 28 x 28 per digit) and a user's model module."""
    root = tmp_path_factory.mktemp("user")
    images = load_mnist("all")
    for label in range(10):
        indices = torch.nonzero(images.labels == label).flatten()[:9].tolist()
        for split, index in zip(["train"] * 6 + ["val"] * 3, indices, strict=True):
            folder = root / "digits" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (images.images[index, 0].numpy() * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    (root / f"{USER_MODULE}.py").write_text(USER_CODE)
    return root


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    yield workdir
    sys.modules.pop(USER_MODULE, None)


def _weights(workdir, spec: str, name: str):
    """Seeded random weights for ``spec``, saved as a user's training script would."""
    torch.manual_seed(0)
    model = build_model(spec)
    path = workdir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def _prune(workdir, tmp_path, spec: str, *extra: str, weights=None) -> tuple[int, dict]:
    options = ["--model", spec, *(("--weights", str(weights)) if weights else ()), "--finetune-steps", "3"]
    options += ["--batch-size", "16", "--out", str(tmp_path / "pruned"), "--report", str(tmp_path / "report.json")]
    status = main(["prune", *options, *extra])
    report_path = tmp_path / "report.json"
    return status, json.loads(report_path.read_text()) if report_path.exists() else {}


def test_a_user_factory_on_an_image_folder_prunes_reloads_and_exports(in_workdir, tmp_path) -> None:
    weights = _weights(in_workdir, FACTORY, "factory")
    extra = ["--data", "imagefolder:digits", "--speedup", "2", "--max-acc-drop", "100", "--export", "onnx"]
    extra += ["--summary", str(tmp_path / "summary.md"), "--junit", str(tmp_path / "junit.xml")]
    status, report = _prune(in_workdir, tmp_path, FACTORY, *extra, weights=weights)
    assert status == 0 and report["passed"]
    assert report["model"] == FACTORY and report["data"].startswith("imagefolder:digits")
    assert set(report["wall_seconds"]) >= {"measure_dense", "prune", "finetune", "measure_pruned", "total"}
    assert report["versions"]["torch"].startswith(torch.__version__.split("+")[0]) and report["seed"] == 0
    model = load_pruned(FACTORY, tmp_path / "pruned")  # rebuilt from the spec and the recorded shapes
    data = build_data("imagefolder:digits", model=build_model(FACTORY), batch_size=16)
    assert report["before"]["flops"] / count_flops(model, data.example) == pytest.approx(report["speedup"])
    assert report["speedup"] >= 2
    record = json.loads((tmp_path / "pruned" / "model.json").read_text())
    assert record["spec"] == FACTORY and record["shapes"]["0.weight"] == list(model[0].weight.shape)
    assert model[0].weight.shape[0] < 8  # the stem lost channels, and the file says so

    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "pruned" / "model.onnx"))
    images = next(iter(data.val))[0]
    (logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(images).numpy(), atol=1e-4, rtol=1e-3)

    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("### metaprune: passed") and "| FLOPs (all ops) |" in summary
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "0"


def test_a_missed_gate_fails_the_junit_case_and_the_summary_says_why(in_workdir, tmp_path) -> None:
    weights = _weights(in_workdir, FACTORY, "factory")
    extra = ["--data", "imagefolder:digits", "--speedup", "2", "--max-acc-drop", "-100"]
    extra += ["--summary", str(tmp_path / "summary.md"), "--junit", str(tmp_path / "junit.xml")]
    status, report = _prune(in_workdir, tmp_path, FACTORY, *extra, weights=weights)
    assert status == 1 and not (tmp_path / "pruned").exists()
    assert "accuracy dropped" in report["reasons"][0]
    assert "FAILED" in (tmp_path / "summary.md").read_text()
    cases = {case.get("name"): case for case in ElementTree.parse(tmp_path / "junit.xml").iter("testcase")}
    assert cases["quality"].find("failure") is not None and cases["speedup"].find("failure") is None


@pytest.mark.parametrize(
    "spec",
    [
        "torchvision:resnet18?num_classes=10",
        "timm:vit_tiny_patch16_224?img_size=28&patch_size=7&in_chans=1&num_classes=10&depth=2&embed_dim=48&num_heads=2",
        "timm.models.mlp_mixer:MlpMixer?img_size=28&patch_size=7&in_chans=1&num_classes=10&num_blocks=2&embed_dim=32",
    ],
)
def test_torchvision_and_timm_models_prune_on_an_image_folder(in_workdir, tmp_path, spec) -> None:
    weights = _weights(in_workdir, spec, "library")
    extra = ["--data", "imagefolder:digits", "--speedup", "1.5", "--max-acc-drop", "100"]
    status, report = _prune(in_workdir, tmp_path, spec, *extra, weights=weights)
    assert status == 0 and report["speedup"] >= 1.5
    assert report["global_pruning"] is ("vit_" in spec)  # the default: global for ViTs only
    model = load_pruned(spec, tmp_path / "pruned")
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]


def test_head_dims_shrink_a_timm_vit_s_heads_and_it_reloads(in_workdir, tmp_path) -> None:
    spec = "timm:vit_tiny_patch16_224?img_size=28&patch_size=7&in_chans=1&num_classes=10&depth=1&num_heads=2"
    extra = ["--data", "imagefolder:digits", "--speedup", "2", "--max-acc-drop", "100", "--no-global-pruning"]
    status, report = _prune(in_workdir, tmp_path, spec, *extra, "--head-dims")
    assert status == 0 and report["head_dims"] and report["speedup"] >= 2
    attn = load_pruned(spec, tmp_path / "pruned").blocks[0].attn
    assert attn.num_heads == 2 and attn.head_dim < 96 and attn.proj.in_features == 2 * attn.head_dim


def _tiny_llama(directory) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(directory)


def test_a_hugging_face_decoder_is_pruned_in_its_mlps_and_gated_on_eval_loss(workdir, tmp_path) -> None:
    _tiny_llama(tmp_path / "llama")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(textwrap.dedent(__doc__) * 40)
    spec = f"hf:{tmp_path / 'llama'}"
    extra = ["--data", f"text:{corpus}", "--block-size", "32", "--param-ratio", "1.2", "--max-loss-increase", "1"]
    status, report = _prune(workdir, tmp_path, spec, *extra, "--optimizer", "adamw", "--lr", "1e-3")
    assert status == 0 and report["task"] == "causal_lm" and report["param_ratio"] >= 1.2
    assert report["loss_increase"] == pytest.approx(report["after"]["loss"] - report["before"]["loss"])
    model = load_pruned(spec, tmp_path / "pruned")
    layer = model.model.layers[0]
    assert layer.mlp.up_proj.out_features < 128 and layer.self_attn.q_proj.out_features == 32  # attention whole


def test_the_gate_of_the_other_task_is_refused(workdir, tmp_path, capsys) -> None:
    _tiny_llama(tmp_path / "llama")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text " * 500)
    options = ["--data", f"text:{corpus}", "--param-ratio", "1.2", "--max-acc-drop", "1"]
    status, _ = _prune(workdir, tmp_path, f"hf:{tmp_path / 'llama'}", *options)
    assert status == 2 and "--max-acc-drop is for classifiers" in capsys.readouterr().err


ECA_RESNET = "timm:ecaresnet26t?in_chans=1&num_classes=10"


def test_a_metanet_that_cannot_read_the_model_exits_2_at_once_and_auto_prunes_without_it(in_workdir, tmp_path, capsys):
    # ECA's channel attention convolves along the channels, which the neuron graph refuses (naming the module and
    # the cause)
    options = ["--data", "imagefolder:digits", "--speedup", "1.3", "--max-acc-drop", "100"]
    status, _ = _prune(in_workdir, tmp_path, ECA_RESNET, *options, "--metanet", "cnn")
    err = capsys.readouterr().err.splitlines()[-1]
    assert status == 2 and err.startswith("metaprune: error: --metanet cnn: cannot read --model"), err
    assert "'layer1.0.se.conv' (Conv1d)" in err
    assert not (tmp_path / "report.json").exists()
    status, report = _prune(in_workdir, tmp_path, f"{USER_MODULE}:Cumulative", *options, "--metanet", "auto")
    assert status == 0 and report["rewrite_strength"] is None
    assert any("pruned without a rewrite" in note for note in report["notes"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --data"),
        (["--data", "imagefolder:nowhere"], "nowhere"),
        (["--data", "imagefolder:digits", "--weights", "missing.safetensors"], "--weights missing.safetensors"),
        (["--data", "imagefolder:digits", "--model", "usernets:nothing"], "nothing"),
    ],
)
def test_user_input_problems_exit_2_naming_the_culprit(in_workdir, tmp_path, capsys, extra, message) -> None:
    status, report = _prune(in_workdir, tmp_path, FACTORY, "--speedup", "2", *extra)
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not report and not (tmp_path / "pruned").exists()


def test_prune_model_in_python_meets_a_time_budget_and_never_trails_depgraph(in_workdir) -> None:
    """The Python API the CLI calls; with a metanetwork both pipelines run and the better is kept, and a tiny
    time budget stops fine-tuning early instead of overrunning."""
    from metaprune.metanet import Metanet

    torch.manual_seed(0)
    model = build_model(FACTORY)
    data = build_data("imagefolder:digits", model=model, batch_size=16)
    outcome = prune_model(
        model,
        train=data.train,
        val=data.val,
        example_inputs=data.example,
        speedup=2,
        max_acc_drop=100,
        metanet=Metanet(),
        rewrite_strength=0.5,
        finetune_steps=10_000,
        max_minutes=0.05,
        progress=False,
    )
    report = outcome.report
    assert outcome.passed and report["speedup"] >= 2
    scores = {c["rewrite_strength"]: c["accuracy"] for c in report["candidates"]}
    assert list(scores) == [0.5, 0.0] and report["after"]["accuracy"] == max(scores.values())
    assert report["finetune"]["steps_done"] < 10_000
    assert model[0].weight.shape[0] == 8  # the user's model is left as it was


SWIN = (
    "timm:swin_tiny_patch4_window7_224?img_size=28&patch_size=2&window_size=7&in_chans=1&num_classes=10"
    "&embed_dim=16&depths=1,1&num_heads=2,2"
)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "swin"])
def test_the_rewrite_prune_finetune_path_runs_on_llama_and_swin(family, in_workdir, tmp_path) -> None:
    """Both read as neuron graphs now: the shipped metanetwork rewrites them, then DepGraph prunes."""
    if family == "llama":
        _tiny_llama(tmp_path / "llama")
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("some text about things. " * 300)
        spec, data = f"hf:{tmp_path / 'llama'}", ["--data", f"text:{corpus}", "--block-size", "16"]
        gate = ["--max-loss-increase", "100"]
    else:
        spec, data, gate = SWIN, ["--data", "imagefolder:digits"], ["--max-acc-drop", "100"]
    rewrite = ["--metanet", "vit", "--rewrite-strength", "0.5", "--speedup", "1.2"]
    status, report = _prune(in_workdir, tmp_path, spec, *data, *gate, *rewrite)
    assert status == 0, report.get("reasons")
    assert [c["rewrite_strength"] for c in report["candidates"]] == [0.5, 0.0]  # rewritten, then kept the better
    assert report["speedup"] >= 1.2


def test_flops_are_counted_when_a_module_reads_a_parameter_view() -> None:
    """CaiT hands its blocks ``cls_token.expand(...)``: made without autograd, such a view requires grad but has no
    gradient function, which the counter's module tracker rejected."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, token):
            return self.fc(x + token)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token, self.block = nn.Parameter(torch.zeros(1, 1, 4)), Block()

        def forward(self, x):
            return self.block(x, self.token.expand(x.shape[0], -1, -1))

    assert count_flops(Model(), torch.randn(2, 3, 4)) == 2 * 2 * 3 * 4 * 4
