"""The CLI contract (docs/cli.md) under hundreds of bad inputs, for both commands.

Every case asserts the exit status, that stderr is one line naming the culprit, and that nothing was
published: the working directory holds exactly what it held before (no output, no temporary).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hypernets import LoGAH
from hypernets.cli import main as hypernets_main
from metaprune.cli import main as metaprune_main
from metaprune.population import build_population, population_specs

TINY_HNET = {"hidden": 16, "layers": 1, "heads": 2, "rank": 4, "max_ck": 16, "shape_frequencies": 2}
TINY_MODEL = "zoo:mlp?hidden=8,8"
NAN_VALUES = ("nan", "NaN", "inf", "-inf")
NOT_NUMBERS = ("abc", "", "1,5", "0x10")
HUGE_INT = str(10**30)
TINY_TRAIN = ("--archs-per-step", "1", "--batch-size", "2", "--hidden", "16", "--heads", "2", "--layers", "1")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs of every kind, built once: a hypernetwork, a trained member, a metanetwork."""
    root = tmp_path_factory.mktemp("inputs")
    LoGAH(**TINY_HNET).save_pretrained(root / "hnet")
    (member,) = build_population(root / "population", population_specs(1, train_steps=20), progress=False)
    from metaprune.metanet import Metanet, MetanetConfig

    Metanet(MetanetConfig(node_dim=8, edge_dim=8, layers=1)).save_pretrained(root / "metanet")
    return {
        "hnet": root / "hnet",
        "model": member / "model.safetensors",
        "config": member / "model.json",
        "metanet": root / "metanet",
    }


@dataclass(frozen=True)
class Case:
    """One command line, the status it must exit with, and a text its one-line error must contain."""

    argv: tuple[str, ...]
    culprit: str
    status: int = 2

    def __str__(self) -> str:
        return " ".join(self.argv)[:90]


def run(case: Case, cwd: Path, capsys) -> str:
    """Run ``case`` in ``cwd`` and check the contract; returns stderr."""
    before = _listing(cwd)
    main = metaprune_main if case.argv[0] == "prune" else hypernets_main
    status = main(list(case.argv))
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not _is_noise(line)]
    assert status == case.status, f"{case}: exit {status}\n{err}"
    assert len(lines) == 1 and lines[0].split(":")[0] in ("hypernets", "metaprune"), f"{case}: stderr {err!r}"
    assert case.culprit in lines[0], f"{case}: {lines[0]!r} does not name {case.culprit!r}"
    assert "Traceback" not in err
    assert _listing(cwd) == before, f"{case}: published {set(_listing(cwd)) - set(before)}"
    return lines[0]


def _is_noise(line: str) -> bool:
    """Progress bars, and library warnings printed by the warnings module: not the command's messages."""
    return "%|" in line or "Warning:" in line or line.startswith("  warnings.warn")


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- every numeric option with values it must refuse at parse time -------------------------------------
FLOAT_OPTIONS = {  # option: values out of its range (NaN, infinities and non-numbers are tried for all)
    ("train", "--lr"): ("0", "-1", "2"),
    ("train", "--min-lr"): ("-1", "2"),
    ("train", "--weight-decay"): ("-0.1", "1e9"),
    ("train", "--gain-lr-scale"): ("0", "-1", "1e9"),
    ("train", "--grad-clip"): ("0", "-1"),
    ("evaluate", "--lr"): ("0", "-1", "1.5"),
    ("prune", "--speedup"): ("0", "0.5", "-2", "1e9"),
    ("prune", "--param-ratio"): ("0", "0.99", "1e9"),
    ("prune", "--head-ratio"): ("-0.1", "1", "1.5"),
    ("prune", "--rewrite-strength"): ("-0.1", "1.01"),
    ("prune", "--lr"): ("0", "-0.01", "100"),
    ("prune", "--max-acc-drop"): ("-101", "101", "1e300"),
}
INT_OPTIONS = {  # option: smallest valid value
    ("train", "--steps"): 1,
    ("train", "--archs-per-step"): 1,
    ("train", "--batch-size"): 1,
    ("train", "--warmup"): 0,
    ("train", "--checkpoint-every"): 1,
    ("train", "--seed"): 0,
    ("train", "--threads"): 1,
    ("train", "--hidden"): 1,
    ("train", "--layers"): 1,
    ("train", "--heads"): 1,
    ("train", "--rank"): 1,
    ("train", "--max-ck"): 1,
    ("train", "--tile"): 1,
    ("train", "--shape-frequencies"): 1,
    ("evaluate", "--archs"): 1,
    ("evaluate", "--finetune-steps"): 0,
    ("evaluate", "--batch-size"): 1,
    ("evaluate", "--seed"): 0,
    ("evaluate", "--threads"): 1,
    ("graph", "--max-distance"): 1,
    ("prune", "--finetune-steps"): 0,
    ("prune", "--sparse-steps"): 0,
    ("prune", "--seed"): 0,
}


def _base(command: str, tmp: str = "out") -> tuple[str, ...]:
    """A command line valid but for the option under test (the inputs need not exist: options come first)."""
    return {
        "train": ("train", "--out", tmp),
        "evaluate": ("evaluate", "--hypernet", "a=hnet", "--out", tmp),
        "graph": ("graph", TINY_MODEL),
        "predict": ("predict", "--hypernet", "hnet", "--model", TINY_MODEL, "--out", f"{tmp}.safetensors"),
        "prune": ("prune", "--model", "m.safetensors", "--config", "m.json", "--speedup", "2", "--out", tmp),
    }[command]


def _option_cases() -> list[Case]:
    cases = []
    for (command, option), out_of_range in FLOAT_OPTIONS.items():
        for value in (*NAN_VALUES, *NOT_NUMBERS, *out_of_range):
            cases.append(Case((*_base(command), f"{option}={value}"), f"argument {option}"))
    for (command, option), low in INT_OPTIONS.items():
        for value in (str(low - 1), "1.5", "nan", "abc", "", HUGE_INT):
            cases.append(Case((*_base(command), f"{option}={value}"), f"argument {option}"))
    for command, option, value in (
        ("predict", "--dtype", "float64"),
        ("predict", "--input-shape", "0,4"),
        ("predict", "--input-shape", "a,b"),
        ("graph", "--input-shape", "-1,3"),
        ("graph", "--view", "edge"),
        ("train", "--family", "cnn"),
        ("train", "--decoder", "dense"),
        ("evaluate", "--family", "bert"),
        ("prune", "--method", "taylor"),
    ):
        cases.append(Case((*_base(command), option, value), f"argument {option}"))
    cases.append(Case(("evaluate", "--hypernet", "no-name", "--out", "out"), "argument --hypernet"))
    cases.append(Case(("predict", "--model", TINY_MODEL, "--out", "x"), "--hypernet"))
    return cases


OPTION_CASES = _option_cases()


@pytest.mark.parametrize("case", OPTION_CASES, ids=str)
def test_a_bad_option_value_exits_2_naming_the_option(case: Case, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    run(case, tmp_path, capsys)


# -- values that parse but cannot work: checked before any work -------------------------------------------
def _semantic_cases() -> list[Case]:
    predict = ("predict", "--hypernet", "{hnet}", "--model", TINY_MODEL, "--out", "x.safetensors")
    train = ("train", "--out", "run", "--steps", "1")
    evaluate = ("evaluate", "--out", "results", "--archs", "1", "--finetune-steps", "0")
    prune = ("prune", "--model", "{model}", "--config", "{config}", "--out", "pruned", "--finetune-steps", "1")
    return [
        *(Case((*predict, "--device", device), "--device") for device in ("bogus", "cuda:x", "", "tpu")),
        *(Case((*train, "--device", device), "--device") for device in ("bogus", "cuda:x")),
        Case((*train, "--hidden", "10", "--heads", "3"), "divisible by heads"),
        Case((*train, "--lr", "0.001", "--min-lr", "0.01"), "--min-lr"),
        Case((*train, "--hidden", "65536"), "--hidden"),
        Case((*evaluate, "--hypernet", "A={hnet}", "--hypernet", "A={hnet}"), "'A' is given twice"),
        Case((*evaluate, "--hypernet", "random init={hnet}"), "'random init'"),
        Case((*evaluate, "--hypernet", "A=missing"), "missing"),
        *(
            Case(("predict", "--hypernet", "{hnet}", "--model", spec, "--out", "x.safetensors"), culprit)
            for spec, culprit in (
                ("gpt2:n_layer=abc", "n_layer"),
                ("gpt2:huge", "'huge'"),
                ("gpt2:n_layer=2,n_embd=30,n_head=4", "gpt2"),
                ("timm:no_such_model", "no_such_model"),
                ("torchvision:no_such_model", "no_such_model"),
                ("zoo:bogus", "bogus"),
                ("zoo:mlp?hidden=abc", "zoo"),
                ("keras:resnet", "unknown model spec"),
                ("timm:", "names no model"),
                ("timm:vit_tiny_patch16_224?depth", "key=value"),
            )
        ),
        Case(("graph", "zoo:mlp", "--view", "neuron", "--input-shape", "1,5"), "(1, 5)"),
        Case((*prune[:-2], "--finetune-steps", "1"), "give a target"),
        Case((*prune, "--speedup", "2", "--rewrite-strength", "0.5"), "--rewrite-strength needs --metanet"),
        Case((*prune, "--speedup", "1e5"), "cannot prune to speedup"),
        Case((*prune, "--speedup", "2", "--head-ratio", "0.5"), "head_ratio"),
        Case((*prune, "--speedup", "2", "--report", "pruned/report.json"), "--report"),
        Case((*prune, "--speedup", "2", "--metanet", "{model}"), "--metanet"),
    ]


@pytest.mark.parametrize("case", _semantic_cases(), ids=str)
def test_a_bad_combination_exits_2_before_any_work(case: Case, files, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = tuple(part.format(**files) for part in case.argv)
    run(Case(argv, case.culprit.format(**files), case.status), tmp_path, capsys)


# -- every file argument with every kind of broken content ---------------------------------------------------
CONTENTS: dict[str, Callable[[bytes], bytes | None]] = {
    "missing": lambda good: None,
    "empty": lambda good: b"",
    "truncated": lambda good: good[: max(1, len(good) // 2)],
    "random": lambda good: os.urandom(256),
    "binary": lambda good: b"\xff\xfe\x00\x81" * 64,
    "pickle": lambda good: pickle.dumps({"weight": [1.0, 2.0]}),
}


def _break(path: Path, kind: str) -> None:
    good = path.read_bytes()
    content = CONTENTS[kind](good)
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)


def _copy_tree(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for child in source.iterdir():
        (target / child.name).write_bytes(child.read_bytes())
    return target


@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("part", ["config.json", "model.safetensors"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "metanet"])
def test_a_broken_checkpoint_file_exits_2_naming_it(command, part, content, files, tmp_path, monkeypatch, capsys):
    source = files["metanet"] if command == "metanet" else files["hnet"]
    checkpoint = _copy_tree(source, tmp_path / "ckpt")
    _break(checkpoint / part, content)
    monkeypatch.chdir(tmp_path)
    argv = {
        "predict": ("predict", "--hypernet", "ckpt", "--model", TINY_MODEL, "--out", "x.safetensors"),
        "evaluate": ("evaluate", "--hypernet", "A=ckpt", "--out", "results", "--archs", "1"),
        "metanet": (
            *_prune_base(files),
            "--out",
            "pruned",
            "--metanet",
            "ckpt",
            "--speedup",
            "2",
            "--rewrite-strength",
            "1",
        ),
    }[command]
    run(Case(argv, str(Path("ckpt") / part)), tmp_path, capsys)


@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("argument", ["--model", "--config"])
def test_a_broken_model_file_exits_2_naming_it(argument, content, files, tmp_path, monkeypatch, capsys):
    inputs = {"--model": tmp_path / "m.safetensors", "--config": tmp_path / "m.json"}
    inputs["--model"].write_bytes(files["model"].read_bytes())
    inputs["--config"].write_bytes(files["config"].read_bytes())
    _break(inputs[argument], content)
    monkeypatch.chdir(tmp_path)
    argv = ("prune", "--model", "m.safetensors", "--config", "m.json", "--out", "pruned", "--speedup", "2")
    run(Case(argv, inputs[argument].name), tmp_path, capsys)


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


CONFIG_EDITS = {  # a LoGAH config.json edit, and what the error must name
    "string seed": ({"seed": "abc"}, "'seed'"),
    "string bool": ({"mip": "false"}, "'mip'"),
    "float int": ({"hidden": 16.5}, "'hidden'"),
    "bool int": ({"layers": True}, "'layers'"),
    "null": ({"rank": None}, "'rank'"),
    "huge": ({"hidden": 65536}, "does not match"),
    "negative": ({"rank": -4}, "rank"),
    "heads": ({"heads": 3}, "divisible"),
    "unknown": ({"colour": "red"}, "colour"),
    "other kind": ({"kind": "hypernets.train"}, "'hypernets.train'"),
    "decoder": ({"decoder": "dense"}, "decoder"),
}


@pytest.mark.parametrize("edit", CONFIG_EDITS, ids=str)
def test_a_mistyped_hypernetwork_config_exits_2_naming_the_setting(edit, files, tmp_path, monkeypatch, capsys):
    changes, culprit = CONFIG_EDITS[edit]
    checkpoint = _copy_tree(files["hnet"], tmp_path / "ckpt")
    _edit_json(checkpoint / "config.json", **changes)
    monkeypatch.chdir(tmp_path)
    run(
        Case(("predict", "--hypernet", "ckpt", "--model", TINY_MODEL, "--out", "x.safetensors"), culprit),
        tmp_path,
        capsys,
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("command", ["predict", "evaluate", "metanet", "model"])
def test_non_finite_weights_are_refused_at_load_naming_the_tensor(command, value, files, tmp_path, monkeypatch, capsys):
    source = {"metanet": files["metanet"], "model": files["model"].parent}.get(command, files["hnet"])
    checkpoint = _copy_tree(source, tmp_path / "ckpt")
    weights = checkpoint / "model.safetensors"
    state = load_file(weights)
    name = sorted(state)[len(state) // 2]
    state[name].view(-1)[0] = value
    save_file(state, weights)
    monkeypatch.chdir(tmp_path)
    prune = ("prune", "--out", "pruned", "--speedup", "2")
    argv = {
        "predict": ("predict", "--hypernet", "ckpt", "--model", TINY_MODEL, "--out", "x.safetensors"),
        "evaluate": ("evaluate", "--hypernet", "A=ckpt", "--out", "results", "--archs", "1"),
        "metanet": (
            *prune,
            "--model",
            str(files["model"]),
            "--config",
            str(files["config"]),
            "--metanet",
            "ckpt",
            "--rewrite-strength",
            "1",
        ),
        "model": (*prune, "--model", "ckpt/model.safetensors", "--config", "ckpt/model.json"),
    }[command]
    run(Case(argv, name), tmp_path, capsys)


MEMBER_CONFIGS = {  # a metaprune model.json, and what the error must name
    "list": ([1, 2], "JSON object"),
    "family": ({"family": "transformer"}, "'transformer'"),
    "kwargs": ({"family": "mlp", "kwargs": "wide"}, "'kwargs'"),
    "bad kwargs": ({"family": "mlp", "kwargs": {"width": "abc"}}, "bad kwargs"),
    "mismatch": ({"family": "mlp", "kwargs": {"hidden": [4]}}, "does not match"),
}


@pytest.mark.parametrize("edit", MEMBER_CONFIGS, ids=str)
def test_a_wrong_model_config_exits_2_naming_it(edit, files, tmp_path, monkeypatch, capsys):
    config, culprit = MEMBER_CONFIGS[edit]
    (tmp_path / "m.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    argv = ("prune", "--model", str(files["model"]), "--config", "m.json", "--out", "pruned", "--speedup", "2")
    run(Case(argv, culprit), tmp_path, capsys)


CALIBRATIONS = {
    "binary": (b"\xff\xfe\x00", "not valid JSON"),
    "nan strength": ({"strengths": {"all": [float("nan")]}}, "finite"),
    "strength range": ({"strengths": {"all": [7.0]}}, "[0, 1]"),
    "budget type": ({"budget": {"sparse_steps": "many"}}, "'sparse_steps'"),
    "missing key": ({"speedups": None}, "not a rewrite-strength calibration"),
}


@pytest.mark.parametrize("edit", CALIBRATIONS, ids=str)
def test_a_corrupt_calibration_exits_2_naming_it(edit, files, tmp_path, monkeypatch, capsys):
    from metaprune.strength import CALIBRATION_FILE, POOLED, Budget, Calibration

    content, culprit = CALIBRATIONS[edit]
    metanet = _copy_tree(files["metanet"], tmp_path / "metanet")
    Calibration((2.0,), (0.0, 1.0), {POOLED: (1.0,)}, {POOLED: (((0.5, 0.6),),)}, Budget()).save(metanet)
    path = metanet / CALIBRATION_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, **content}))  # json writes NaN as NaN: a file a user might have
    monkeypatch.chdir(tmp_path)
    argv = (
        *_prune_base(files),
        "--out",
        "pruned",
        "--speedup",
        "2",
        "--metanet",
        "metanet",
    )
    run(Case(argv, culprit), tmp_path, capsys)


# -- destinations: existing, under a file, unwritable, read-only, full ------------------------------------------
def _destination_commands(files) -> dict[str, tuple[tuple[str, ...], str]]:
    """command: (argv without its output option, that option)."""
    prune = _prune_base(files, "--speedup", "1.5", "--finetune-steps", "1", "--max-acc-drop", "100")
    return {
        "predict": (("predict", "--hypernet", str(files["hnet"]), "--model", TINY_MODEL), "--out"),
        "graph-json": (("graph", TINY_MODEL), "--json"),
        "graph-plot": (("graph", TINY_MODEL), "--plot"),
        "evaluate": (
            ("evaluate", "--hypernet", f"A={files['hnet']}", "--archs", "1", "--finetune-steps", "0"),
            "--out",
        ),
        "train": (("train", "--steps", "1", *TINY_TRAIN), "--out"),
        "prune": (prune, "--out"),
        "prune-report": ((*prune, "--out", "pruned"), "--report"),
    }


DESTINATIONS = ("under a file", "existing", "read-only", "full disk", "read-only at publish")
DESTINATION_COMMANDS = ("predict", "graph-json", "graph-plot", "evaluate", "train", "prune", "prune-report")


@pytest.mark.parametrize("problem", DESTINATIONS)
@pytest.mark.parametrize("command", DESTINATION_COMMANDS)
def test_an_unusable_destination_exits_2_and_publishes_nothing(command, problem, files, tmp_path, monkeypatch, capsys):
    argv, option = _destination_commands(files)[command]
    monkeypatch.chdir(tmp_path)
    target = "out/result"
    culprit = option
    if problem == "under a file":
        Path("out").write_text("a file")
    elif problem == "existing":
        if command in ("train", "prune-report"):
            pytest.skip("train resumes an existing run; a report is replaced each run")
        Path("out").mkdir()
        (Path(target).mkdir() if command in ("evaluate", "prune") else Path(target).write_text("old"))
        culprit = "already exists"
    elif problem == "read-only":  # root ignores permissions, so the file system's answer is simulated
        real_open = os.open

        def read_only(path, *args, **kwargs):
            if ".probe." in os.fspath(path):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("hypernets.command.os.open", read_only)
        culprit = "Read-only file system"
    else:
        if command == "train":
            pytest.skip("train writes checkpoints as it goes: test_train covers a kill mid-save")
        failure = errno.ENOSPC if problem == "full disk" else errno.EROFS

        def fail(path, *args):
            raise OSError(failure, os.strerror(failure), os.fspath(path))

        monkeypatch.setattr(
            "hypernets.atomic._fsync" if problem == "full disk" else "hypernets.atomic.os.replace", fail
        )
        culprit = os.strerror(failure)
    run(Case((*argv, option, target), culprit), tmp_path, capsys)


# -- NaN never passes the gate -----------------------------------------------------------------------------------
def _prune_base(files, *extra: str) -> tuple[str, ...]:
    """``metaprune prune`` on the fixture's trained member, with ``extra`` options."""
    return ("prune", "--model", str(files["model"]), "--config", str(files["config"]), *extra)


def _prune_argv(files, *extra: str) -> list[str]:
    return list(_prune_base(files, "--out", "pruned", "--speedup", "1.5", "--finetune-steps", "3", *extra))


def test_nan_in_the_data_exits_2_and_publishes_nothing(files, tmp_path, monkeypatch, capsys):
    from hypernets.data import spec

    real = spec.load_mnist

    def poisoned(split, **kwargs):
        data = real(split, **kwargs)
        data.tensors[0][7, 0, 3, 3] = float("nan")
        return data

    monkeypatch.setattr(spec, "load_mnist", poisoned)
    monkeypatch.chdir(tmp_path)
    run(Case(tuple(_prune_argv(files)), "data holds NaN or infinite inputs"), tmp_path, capsys)


@pytest.mark.parametrize("phase", ["finetune", "sparse", "prune"])
def test_nan_from_training_fails_the_gate_and_publishes_no_model(phase, files, tmp_path, monkeypatch, capsys):
    """Whatever step turns weights into NaN, no model is published: after pruning, the run exits 1 with a
    strict-JSON report; before it (sparse training), 2, naming --lr."""
    import metaprune.pipeline as module

    name = {"finetune": "finetune", "sparse": "sparse_train", "prune": "prune"}[phase]
    real = getattr(module, name)

    def poisoned(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        target = getattr(result, "model", model)
        with torch.no_grad():
            next(p for p in target.parameters() if p.ndim > 1).view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(module, name, poisoned)
    monkeypatch.chdir(tmp_path)
    argv = _prune_argv(files, "--sparse-steps", "2", "--max-acc-drop", "100")
    if phase == "sparse":  # nothing to prune: the options made training diverge
        run(Case(tuple(argv), "sparse training diverged"), tmp_path, capsys)
        return
    assert metaprune_main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "PASSED" not in out
    report = json.loads(Path("report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert not report["passed"] and any("NaN" in reason for reason in report["reasons"]) and report["out"] is None
    assert not Path("pruned").exists()


def test_a_diverging_learning_rate_never_publishes_a_model(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = metaprune_main(_prune_argv(files, "--lr", "10", "--finetune-steps", "30", "--max-acc-drop", "100"))
    if Path("pruned").exists():
        assert status == 0
        state = load_file("pruned/model.safetensors")
        assert all(torch.isfinite(t).all() for t in state.values())
    else:
        assert status == 1
    json.loads(Path("report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


def test_a_non_finite_prediction_is_refused_and_not_written(files, tmp_path, monkeypatch, capsys):
    real = LoGAH.predictions

    def overflowing(self, *args, **kwargs):
        for part in real(self, *args, **kwargs):
            next(iter(part[0].values())).view(-1)[0] = float("inf")
            yield part

    monkeypatch.setattr(LoGAH, "predictions", overflowing)
    monkeypatch.chdir(tmp_path)
    argv = ("predict", "--hypernet", str(files["hnet"]), "--model", TINY_MODEL, "--out", "x.safetensors")
    run(Case(argv, "NaN or infinite"), tmp_path, capsys)


def test_training_that_diverges_exits_2_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    from hypernets.train import loop

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("nan")))
    argv = ["train", "--out", str(tmp_path / "run"), "--steps", "2", *TINY_TRAIN]
    assert hypernets_main(argv) == 2
    err = capsys.readouterr().err
    assert "diverged at step 1" in err and "--lr" in err
    assert not (tmp_path / "run" / "hypernet").exists()


def test_an_internal_error_exits_3_with_the_traceback_and_a_request_to_report(files, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(LoGAH, "predictions", broken)
    argv = ["predict", "--hypernet", str(files["hnet"]), "--model", TINY_MODEL, "--out", str(tmp_path / "x")]
    assert hypernets_main(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err and "please report" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["--debug", "environment"])
def test_debug_adds_the_traceback_to_a_user_error(how, tmp_path, monkeypatch, capsys):
    argv = ["predict", "--hypernet", str(tmp_path / "missing"), "--model", TINY_MODEL, "--out", str(tmp_path / "x")]
    if how == "--debug":
        argv.append("--debug")
    else:
        monkeypatch.setenv("HYPERNETS_DEBUG", "1")
    assert hypernets_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("hypernets: error:")


# -- overwrite: the same rule for both commands ---------------------------------------------------------------
def test_predict_replaces_an_existing_file_only_with_overwrite(files, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    argv = ["predict", "--hypernet", str(files["hnet"]), "--model", TINY_MODEL, "--out", str(out)]
    assert hypernets_main(argv) == 0
    first = {k: v.tolist() for k, v in load_file(out).items()}  # copied: the file is memory-mapped
    out.unlink()
    out.write_bytes(b"old")
    assert hypernets_main(argv) == 2 and out.read_bytes() == b"old"
    assert hypernets_main([*argv, "--overwrite"]) == 0
    assert {k: v.tolist() for k, v in load_file(out).items()} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


# -- a run directory to resume, damaged --------------------------------------------------------------------------
TRAIN = ["train", "--steps", "2", "--checkpoint-every", "1", *TINY_TRAIN]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished two-step run with its checkpoint."""
    run = tmp_path_factory.mktemp("train") / "run"
    assert hypernets_main([*TRAIN, "--out", str(run)]) == 0
    return run


def _checkpoint_meta(run: Path) -> Path:
    return run / (run / "latest").read_text().strip() / "config.json"


RESUME_DAMAGE = {
    "no world_size": (lambda run: _edit_json(_checkpoint_meta(run), world_size=None), "'world_size'"),
    "string step": (lambda run: _edit_json(_checkpoint_meta(run), step="2"), "'step'"),
    "typed settings": (lambda run: _edit_json(_checkpoint_meta(run), train={"lr": "fast"}), "'lr'"),
    "binary pointer": (lambda run: (run / "latest").write_bytes(b"\xff\xfe"), "latest"),
    "dangling pointer": (lambda run: (run / "latest").write_text("checkpoint-99"), "latest"),
    "escaping pointer": (lambda run: (run / "latest").write_text("../elsewhere"), "latest"),
    "no rng state": (lambda run: next(_checkpoint_meta(run).parent.glob("rng-*")).unlink(), "rng-rank0"),
    "nan weights": (lambda run: _poison(_checkpoint_meta(run).parent / "model.safetensors"), "NaN or infinite"),
}


def _poison(weights: Path) -> None:
    state = load_file(weights)
    state = {k: v.clone() for k, v in state.items()}
    next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_file(state, weights)


@pytest.mark.parametrize("damage", RESUME_DAMAGE, ids=str)
def test_resuming_a_damaged_run_exits_2_naming_the_file(damage, run_dir, tmp_path, monkeypatch, capsys):
    import shutil

    shutil.copytree(run_dir, tmp_path / "run")
    edit, culprit = RESUME_DAMAGE[damage]
    edit(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    run(Case((*TRAIN[:2], "3", *TRAIN[3:], "--out", "run"), culprit), tmp_path, capsys)
