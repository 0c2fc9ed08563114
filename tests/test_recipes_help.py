"""Every recipe answers ``--help`` with its usage and exit 0, writes nothing and prints no warning.

The continual recipes are left out while their owner reworks them (issue 24).
Each run pays its imports (torch, PyG, timm: 2 to 10 s on the 2-core box), hence slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [*ROOT.glob("recipes/*.py"), *ROOT.glob("recipes/bench/*.py")]
    if not p.name.startswith("continual_")
)


def files_under(folder: Path) -> dict[Path, int]:
    """Every file under ``folder`` with its modification time in nanoseconds."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_recipes_are_found():
    assert {"recipes/draw_graphs.py", "recipes/draw_logah.py", "recipes/bench/bench_predict_disk.py"} <= set(RECIPES)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_help_prints_usage_and_writes_nothing(recipe: str, tmp_path: Path):
    images = files_under(ROOT / "docs" / "img")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / recipe), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout
    assert "Warning" not in result.stderr, result.stderr
    assert not any(tmp_path.iterdir()), "--help wrote into the working directory"
    assert files_under(ROOT / "docs" / "img") == images, "--help wrote into docs/img"
