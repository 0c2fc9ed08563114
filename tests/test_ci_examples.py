"""The CI examples in docs/ci run as they are written: their pruning commands, on a user's model module, weights
and image folder laid out as the files say, exit 0 and leave the pruned model and the reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from hypernets.data import load_mnist

CI_DIR = Path(__file__).parents[1] / "docs" / "ci"
USER_MODELS = """
from torch import nn
from torchvision.models import resnet18


def resnet18_mnist():
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # grey 28 x 28 digits, the 7 x 7 stem kept
    return model
"""


def github_commands() -> list[str]:
    workflow = yaml.safe_load((CI_DIR / "github-prune.yml").read_text())
    steps = {step.get("name"): step for step in workflow["jobs"]["prune"]["steps"]}
    return [steps["Prune"]["run"], steps["Summary"]["run"]]


def gitlab_commands() -> list[str]:
    job = yaml.safe_load((CI_DIR / "gitlab-prune.yml").read_text())["prune"]
    return [line for line in job["script"] if not line.startswith("pip install")]


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """What the examples assume: mymodels.py, the training job's model.safetensors, data/{train,val}."""
    root = tmp_path_factory.mktemp("repository")
    (root / "mymodels.py").write_text(USER_MODELS)
    images = load_mnist("all")
    for label in range(10):
        indices = torch.nonzero(images.labels == label).flatten()[:6].tolist()
        for split, index in zip(["train"] * 4 + ["val"] * 2, indices, strict=True):
            folder = root / "data" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((images.images[index, 0].numpy() * 255).astype(np.uint8)).save(folder / f"{index}.png")
    sys.path.insert(0, str(root))
    try:
        from mymodels import resnet18_mnist
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("mymodels", None)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in resnet18_mnist().state_dict().items()}, root / "model.safetensors")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("commands", [github_commands, gitlab_commands], ids=["github", "gitlab"])
def test_the_ci_example_prunes_as_written(repository, tmp_path, commands) -> None:
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("mymodels.py", "model.safetensors"):
        (work / name).symlink_to(repository / name)
    (work / "data").symlink_to(repository / "data")
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the metaprune script
        "SPEEDUP": "2",
        "MAX_ACC_DROP": "100",  # the weights are random: the gate itself is tested elsewhere
        "FINETUNE_STEPS": "3",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step_summary.md"),
    }
    for command in commands():
        result = subprocess.run(["bash", "-ec", command], cwd=work, env=environment, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((work / "report.json").read_text())
    assert report["passed"] and report["speedup"] >= 2 and report["finetune"]["steps_done"] == 3
    assert {p.name for p in (work / "pruned").iterdir()} == {"model.json", "model.safetensors", "model.onnx"}
    assert ElementTree.parse(work / "junit.xml").getroot().find("testsuite").get("failures") == "0"
    if commands is github_commands:
        assert (tmp_path / "step_summary.md").read_text() == (work / "summary.md").read_text()
