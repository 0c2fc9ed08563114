"""The hypernetworks shipped as package data: small, loadable by name, and better than random init."""

from __future__ import annotations

import pytest
import torch

from hypernets import LoGAH, pretrained
from hypernets.checkpoint import CheckpointError
from hypernets.train.tasks import task_for
from hypernets.zoo import get_family

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
