"""The hypernetworks shipped as package data: small, loadable by name, and better than random init."""

from __future__ import annotations

import pytest
import torch

from hypernets import LoGAH, pretrained
from hypernets.checkpoint import CheckpointError
from hypernets.logah import WiderThanTrainedWarning
from hypernets.train.tasks import TextTask, task_for
from hypernets.zoo import GPT2Arch, get_family

MAX_BYTES = 5 * 2**20  # the limit for package data


def test_shipped_hypernetworks_are_listed_and_small():
    assert {"vit-mnist", "vit-mnist-tiled", "gpt2-pydoc"} <= set(pretrained.available())
    for name in pretrained.available():
        assert (pretrained.pretrained_dir(name) / "model.safetensors").stat().st_size < MAX_BYTES, name
    with pytest.raises(KeyError, match="shipped: "):
        pretrained.pretrained_dir("no-such-hypernet")


def test_an_existing_directory_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vit-mnist").mkdir()  # empty: loading it must fail, not fall back to the shipped one
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        LoGAH.from_pretrained("vit-mnist")


@pytest.mark.parametrize(("name", "decoder"), [("vit-mnist", "lowrank"), ("vit-mnist-tiled", "tiled")])
def test_shipped_vit_hypernetworks_beat_random_init_on_a_held_out_vit(name: str, decoder: str):
    arch = get_family("vit").heldout_archs(8)[1]  # the deeper-and-wider group: width 128, never trained on
    task = task_for("vit")
    hnet = LoGAH.from_pretrained(name).eval()
    assert hnet.config.decoder == decoder
    predicted = hnet.predict_(arch.build("meta"), device="cpu")
    torch.manual_seed(0)
    random = arch.build("cpu")
    assert task.score(predicted) > task.score(random) + 20  # percent; random init sits near 10


@pytest.mark.parametrize(("layers", "width", "margin"), [(2, 768, 2.0), (1, 1600, 0.5)])  # GPT-2 S's and XL's widths
def test_shipped_gpt2_hypernetwork_beats_random_init_far_beyond_its_training_widths(layers, width, margin):
    arch = GPT2Arch(layers, width, width // 64, 64)
    hnet = LoGAH.from_pretrained("gpt2-pydoc").eval()
    assert width >= 2 * hnet.config.trained_max_dim // 4  # trained up to width 384
    task = TextTask()
    with pytest.warns(WiderThanTrainedWarning):
        predicted = hnet.predict_(arch.build("meta"), device="cpu")
    torch.manual_seed(0)
    random = task.score(arch.build("cpu"))
    assert random > 5.0  # nats per byte: about a uniform guess (ln 256 = 5.55)
    assert task.score(predicted) < random - margin  # nats; measured in docs/benchmarks.md
