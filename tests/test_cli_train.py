"""``hypernets train`` and ``hypernets evaluate``: help, a tiny run of each, and errors as exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from hypernets.cli import main

TINY_FLAGS = ["--hidden", "16", "--layers", "1", "--heads", "2", "--rank", "2", "--max-ck", "32", "--threads", "1"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("command", "expected"),
    [("train", ["--archs-per-step", "--match-params", "(default: 2000)", "torchrun"]), ("evaluate", ["NAME=DIR"])],
)
def test_help_lists_options_and_examples(capsys, command, expected):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in expected)
    assert "(default: None)" not in out


def test_tiny_train_then_evaluate(tmp_path, capsys):
    run, results = tmp_path / "run", tmp_path / "results"
    train = ["train", "--out", str(run), "--steps", "2", "--archs-per-step", "1", "--batch-size", "8", *TINY_FLAGS]
    assert main([*train, "--shape-frequencies", "3"]) == 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    saved = json.loads((run / "hypernet" / "config.json").read_text())
    assert (saved["hidden"], saved["shape_frequencies"]) == (16, 3)
    evaluate = ["evaluate", "--hypernet", f"tiny={run}/hypernet", "--archs", "1", "--finetune-steps", "1"]
    assert main([*evaluate, "--out", str(results), "--threads", "1"]) == 0
    table = (results / "results.md").read_text()
    assert "| tiny |" in table and "| random init |" in table
    assert "wrote" in capsys.readouterr().out


def test_errors_exit_with_status_2(tmp_path, capsys):
    assert main(["evaluate", "--hypernet", f"x={tmp_path}/missing", "--out", str(tmp_path)]) == 2
    assert "hypernets: error:" in capsys.readouterr().err
    assert main(["evaluate", "--hypernet", "no-name", "--out", str(tmp_path)]) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err
    assert main(["train", "--family", "vit", "--out", str(tmp_path / "run"), "--stream-penalty", "1"]) == 2
    assert "use it with --family gpt2" in capsys.readouterr().err


def test_bare_evaluate_compares_the_shipped_hypernetworks_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--archs", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in out.splitlines()[4:7]}
    assert list(rows) == ["LoGAH", "tiled", "random init"]
    assert rows["LoGAH"] > rows["random init"] + 50 and rows["tiled"] > rows["random init"] + 50  # accuracy, %
    assert list(tmp_path.iterdir()) == []
