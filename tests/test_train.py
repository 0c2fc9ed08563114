"""Meta-training: the loss of predicted networks falls, a killed run resumes bit-exactly, and two
data-parallel ranks end with the same hypernetwork."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from hypernets.logah import LoGAH, LoGAHConfig
from hypernets.train import TrainConfig, lr_at, task_for, train
from hypernets.train.config import HYPERNET_DEFAULTS, parameter_groups
from hypernets.train.graphs import arch_graph
from hypernets.train.loop import trained_max_dim
from hypernets.zoo import ArchSampler, get_family

TINY = LoGAHConfig(hidden=32, layers=1, heads=2, rank=4, max_ck=64)


def tiny_config(out, **overrides) -> TrainConfig:
    values = dict(
        family="vit",
        out=str(out),
        steps=4,
        archs_per_step=2,
        batch_size=16,
        warmup=1,
        checkpoint_every=2,
        hypernet=TINY,
    )
    return TrainConfig(**{**values, **overrides})


pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_warms_up_then_decays_to_min_lr():
    config = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(55, config) == pytest.approx(5.5e-4)
    assert lr_at(100, config) == pytest.approx(1e-4)


def test_parameter_groups_decay_matrices_only_and_speed_up_the_mip_gains():
    hnet = LoGAH(TINY)
    groups = parameter_groups(hnet, TrainConfig(weight_decay=0.1, gain_lr_scale=7.0))
    by_id = {id(p): (g["weight_decay"], g["lr_scale"]) for g in groups for p in g["params"]}
    assert len(by_id) == len(list(hnet.parameters()))  # every parameter in exactly one group
    assert by_id[id(hnet.residual_gain)] == by_id[id(hnet.base_gain)] == (0.0, 7.0)
    assert by_id[id(hnet.vector_decoder.head[0].weight)] == (0.1, 1.0)
    assert by_id[id(hnet.vector_decoder.head[0].bias)] == (0.0, 1.0)


@pytest.mark.parametrize("family", ["vit", "gpt2"])
def test_default_max_ck_lets_training_widths_reach_every_decoder_row(family):
    # Rows of a head block that no training tensor reaches never get a gradient, and a wider held-out
    # network would be decoded from them as noise: the block must be no wider than the training widths.
    widest = max(arch.width for arch in ArchSampler(get_family(family)).choices)
    assert HYPERNET_DEFAULTS["max_ck"] <= widest


def test_config_round_trips_through_json():
    config = tiny_config("x")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def fixed_loss(hnet: LoGAH, config: TrainConfig) -> float:
    """Mean loss of the networks a hypernetwork predicts, on fixed architectures and a fixed batch."""
    task = task_for(config.family)
    nets = [arch_graph(a, TINY.max_distance) for a in ArchSampler(get_family(config.family), seed=123).sample(4)]
    batch = task.batch(256, torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = hnet([g for _, g in nets])
        return sum(task.loss(net, p, batch).item() for (net, _), p in zip(nets, predicted, strict=True)) / len(nets)


def test_meta_training_lowers_the_loss_of_predicted_networks(tmp_path):
    config = tiny_config(tmp_path, steps=8, lr=1e-2, min_lr=1e-2, batch_size=32, checkpoint_every=8)
    torch.manual_seed(config.seed)
    before = fixed_loss(LoGAH(config.hypernet), config)
    after = fixed_loss(train(config, progress=False), config)
    assert after < before - 0.05, (before, after)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    recorded = replace(TINY, trained_max_dim=trained_max_dim(get_family(config.family)))
    assert LoGAH.from_pretrained(tmp_path / "hypernet").config == recorded


def test_killed_run_resumes_bit_exactly(tmp_path):
    whole = train(tiny_config(tmp_path / "whole"), progress=False)
    split = tiny_config(tmp_path / "split")
    train(split, stop_after=3, progress=False)  # dies one step after the checkpoint at step 2
    resumed = train(split, progress=False)
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    read = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in read("split")] == [r["loss"] for r in read("whole")]
    assert [r["step"] for r in read("split")] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="other settings"):
        train(replace(split, lr=1.0), progress=False)


def test_training_logs_the_spectral_penalty_and_keeps_base_gains_at_the_floor(tmp_path):
    hnet = train(tiny_config(tmp_path, spectral_penalty=0.5, base_gain_floor=1.5), progress=False)
    assert hnet.base_gain.min().item() == 1.5  # every gain starts at 1, below the floor
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["spectral_excess"] >= 0 for r in records)


def test_training_logs_the_stream_penalty_of_gpt2s_only(tmp_path):
    train(tiny_config(tmp_path, family="gpt2", stream_penalty=0.5, batch_size=2), progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["stream_excess"] >= 0 for r in records)
    with pytest.raises(ValueError, match="residual stream"):
        tiny_config(tmp_path, stream_penalty=0.5)


def test_runs_from_before_a_setting_existed_resume_with_its_default(tmp_path):
    config = tiny_config(tmp_path)
    train(config, stop_after=2, progress=False)
    saved = tmp_path / "checkpoint-2" / "config.json"
    meta = json.loads(saved.read_text())
    for setting in ("spectral_penalty", "stream_penalty", "base_gain_floor"):
        del meta["train"][setting]
    saved.write_text(json.dumps(meta))
    train(config, progress=False)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    hnet = train(tiny_config(out, steps=2), progress=False)
    save_file(hnet.state_dict(), f"{out}/rank{rank}.safetensors")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_end_with_identical_hypernetworks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2)
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    torch.manual_seed(0)
    initial = LoGAH(TINY).state_dict()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert not all(torch.equal(rank0[k], initial[k]) for k in rank0)
    assert sorted(p.name for p in (tmp_path / "checkpoint-2").iterdir()) == [
        "config.json",
        "model.safetensors",
        "rng-rank0.safetensors",
        "rng-rank1.safetensors",
    ]


def test_adamw_groups_name_unknown_fast_parameters():
    from hypernets.optim import adamw_groups

    with pytest.raises(ValueError, match="no parameters named alpha"):
        adamw_groups(LoGAH(TINY), 1e-3, 0.1, ["alpha"], 10.0)
