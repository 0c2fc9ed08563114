"""Smoke test of recipes/bench/bench_user_models.py --quick: the user's files are written, a user model is trained,
pruned by the plain Torch-Pruning script and by metaprune.prune_model, and every figure lands in results.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "bench" / "bench_user_models.py"


def test_quick_run_writes_every_figure(tmp_path):
    work = tmp_path / "work"
    command = [
        sys.executable,
        str(SCRIPT),
        "--work",
        str(work),
        "--quick",
        "--models",
        "residual_cnn",
        "--seeds",
        "0",
        "1",
        "--speedups",
        "2",
        "--no-ci",
        "--pipelines",
        "plain_tp",
        "metaprune",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    assert (work / "usermodels.py").is_file()
    assert (work / "digits" / "train" / "7").is_dir() and (work / "digits" / "val" / "0").is_dir()
    assert (work / "models" / "residual_cnn" / "seed1" / "model.safetensors").is_file()
    results = json.loads((work / "results.json").read_text())
    runs = results["runs"]
    assert {(r["pipeline"], r["seed"]) for r in runs} == {
        (p, s) for p in ("dense", "plain_tp", "metaprune") for s in (0, 1)
    }
    for run in runs:
        assert 0 <= run["score"] <= 1
        if run["pipeline"] != "dense":
            assert run["flops_speedup"] >= 2 * 0.9  # the plain script stops on TP's MACs, not FLOPs
            assert run["seconds"]["total"] > 0
    rows = {(r["pipeline"], r["target"]): r for r in results["aggregate"]}
    assert len(rows[("metaprune", 2.0)]["score"]) == 2  # mean, std
    assert rows[("metaprune", 2.0)]["seeds"] == [0, 1]
    # build_data with --mean/--std feeds exactly what the user's ImageFolder transform does
    assert any("'mean_std': 0.0" in note for note in results["notes"])
    assert "| plain_tp | 2x |" in (work / "table.md").read_text()
