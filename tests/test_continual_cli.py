"""``hypernets continual``: the CLI contract (exit 2 with one line, nothing written) and a tiny grid whose
table, JSONL runs and heat maps agree with each other."""

from __future__ import annotations

import json
import statistics

import pytest

from hypernets.cli import main
from hypernets.continual.grid import mean_std

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--method", "hypernet,lwf"], "--method"),
        (["--method", "ewc,ewc"], "--method"),
        (["--benchmark", "cifar"], "--benchmark"),
        (["--setting", "domain"], "--setting"),
        (["--seeds", "0,x"], "--seeds"),
        (["--seeds", "1,1"], "--seeds"),
        (["--seeds", "-1"], "--seeds"),
        (["--steps", "0"], "--steps"),
        (["--lr", "nan"], "--lr"),
        (["--benchmark", "split", "--num-tasks", "6"], "--num-tasks"),
        (["--method", "hypernet-logah", "--target", "cnn"], "--target"),
        (["--target", "resnet"], "--target"),
        (["--negatives", "blur"], "--negatives"),
        (["--method", "ewc", "--negatives", "patches"], "--negatives"),
        (["--outlier-weight", "-1"], "--outlier-weight"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(tmp_path, capsys, args: list[str], culprit: str) -> None:
    assert main(["continual", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and culprit in err
    assert list(tmp_path.iterdir()) == []


def test_existing_out_needs_overwrite(tmp_path, capsys) -> None:
    (tmp_path / "out").mkdir()
    assert main(["continual", "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_mean_std_over_seeds() -> None:
    assert mean_std([1.0, 2.0, 6.0]) == (3.0, statistics.stdev([1.0, 2.0, 6.0]))
    assert mean_std([4.0]) == (4.0, None) and mean_std([None, None]) == (None, None)


def test_a_tiny_grid_writes_runs_table_and_heat_maps(tmp_path, capsys) -> None:
    out = tmp_path / "grid"
    argv = ["continual", "--method", "finetune,separate", "--benchmark", "split", "--setting", "class"]
    argv += ["--seeds", "0,1", "--steps", "5", "--num-tasks", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == [f"split-class-{m}-seed{s}.jsonl" for m in ("finetune", "separate") for s in (0, 1)]
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == [
        "split-class-finetune.png",
        "split-class-separate.png",
    ]
    assert (out / "heatmaps" / "split-class-separate.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "results.json").read_text())
    assert report["command"].startswith("hypernets continual --method finetune,separate --benchmark split")
    separate = report["rows"][1]
    finals = []
    for seed in (0, 1):
        lines = (out / "runs" / f"split-class-separate-seed{seed}.jsonl").read_text().splitlines()
        finals.append(json.loads(lines[-1])["summary"])
    accuracies = [f["average_accuracy"] for f in finals]
    assert separate["average_accuracy"]["per_seed"] == accuracies
    assert separate["average_accuracy"]["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert separate["task_inference"]["mean"] is not None and report["rows"][0]["task_inference"]["mean"] is None
    mean, std = statistics.fmean(accuracies), statistics.stdev(accuracies)
    row = f"| split | class | separate | 5 | 2 | {mean:.2f} ± {std:.2f} |"
    assert row in printed and row in (out / "results.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["grid"]  # no temporary left


def test_a_cnn_target_for_the_hypernetize_hypernetwork_and_ewc(capsys) -> None:
    argv = ["continual", "--method", "hypernetize,ewc", "--target", "cnn", "--setting", "class"]
    assert main([*argv, "--seeds", "0", "--steps", "3", "--num-tasks", "2"]) == 0
    table = capsys.readouterr().out
    assert "--target cnn" in table
    assert "| split | class | hypernetize | 3 | 1 |" in table and "| split | class | ewc | 3 | 1 |" in table
