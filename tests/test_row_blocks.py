"""A matrix too large for one part is decoded in row blocks that hold exactly the whole decode's values, so
that writing a prediction to disk needs memory for a block, not for GPT-2's embedding."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from hypernets import LoGAH, save_prediction
from hypernets.nn.plan import TargetPlan, TensorEntry, row_blocks
from hypernets.writers import _all_finite

MAX_CK = 64


@pytest.fixture(scope="module")
def hnet() -> LoGAH:
    torch.manual_seed(0)
    return LoGAH(hidden=32, layers=1, heads=4, rank=4, max_ck=MAX_CK).eval()


def _gpt2(vocab: int = 1001, width: int = 40) -> GPT2LMHeadModel:
    """1001 x 40 = 40,040 embedding values: not a multiple of 16, so torch's last group of normals is redrawn."""
    config = GPT2Config(n_layer=1, n_embd=width, n_head=4, vocab_size=vocab, n_positions=16, bos_token_id=0)
    config.eos_token_id = 0
    with torch.device("meta"):
        return GPT2LMHeadModel(config)


def _matrix(rows: int, cols: int) -> TensorEntry:
    return TensorEntry(0, "w", (rows, cols), 0, "linear", rows, cols, 0.02, 0.0, fan_in=cols)


def test_row_blocks_cover_the_rows_in_max_ck_multiples_each_within_max_values():
    blocks = row_blocks(_matrix(1001, 40), max_values=10_000, max_ck=MAX_CK)
    assert [(b.row_start, b.rows) for b in blocks] == [
        (0, 192),
        (192, 192),
        (384, 192),
        (576, 192),
        (768, 192),
        (960, 41),
    ]
    assert all(b.shape == (b.rows, 40) and b.whole_rows == 1001 for b in blocks)
    assert row_blocks(_matrix(100, 40), max_values=10_000, max_ck=MAX_CK) == [_matrix(100, 40)]  # small: whole


def test_a_last_block_under_16_values_joins_the_one_before():
    """torch draws fewer than 16 normals by another method: such a block could not continue the stream."""
    blocks = row_blocks(_matrix(129, 8), max_values=512, max_ck=MAX_CK)  # 64 + 64 + 1 row of 8 values
    assert [(b.row_start, b.rows) for b in blocks] == [(0, 64), (64, 65)]


@pytest.mark.parametrize(("rows", "cols", "max_values"), [(1001, 40, 10_000), (129, 8, 512), (300, 7, 700)])
def test_the_random_base_of_the_blocks_is_the_whole_matrix_base(rows, cols, max_values):
    whole = TargetPlan([_matrix(rows, cols)], 1, MAX_CK).matrix_base(seed=3)
    blocks = [
        TargetPlan([b], 1, MAX_CK).matrix_base(seed=3) for b in row_blocks(_matrix(rows, cols), max_values, MAX_CK)
    ]
    assert len(blocks) > 1
    assert torch.equal(torch.cat(blocks), whole)


def test_blocks_decoded_out_of_order_are_refused():
    blocks = row_blocks(_matrix(1001, 40), max_values=10_000, max_ck=MAX_CK)
    TargetPlan([blocks[0]], 1, MAX_CK).matrix_base(seed=0)
    with pytest.raises(RuntimeError, match="in order"):
        TargetPlan([blocks[2]], 1, MAX_CK).matrix_base(seed=0)


def _decoded(hnet: LoGAH, plans: list[TargetPlan]) -> dict[str, torch.Tensor]:
    """Every tensor of the plans' predictions, row blocks joined."""
    parts: dict[str, list[torch.Tensor]] = {}
    for (part,) in hnet.predictions(hnet.op_graphs([_gpt2()], None), plans=plans):
        for name, tensor in part.items():
            parts.setdefault(name, []).append(tensor)
    return {name: torch.cat(blocks) for name, blocks in parts.items()}


@torch.no_grad()
def test_a_matrix_decoded_in_row_blocks_equals_its_whole_decode_bit_for_bit(hnet):
    graphs = hnet.op_graphs([_gpt2()], None)
    split = TargetPlan.for_graphs(graphs, MAX_CK, 10_000, split_rows=True)
    whole = TargetPlan.for_graphs(graphs, MAX_CK, 10_000)
    assert [e.rows for e in split[0].entries] == [192] and len(split) == len(whole) + 5  # the embedding in 6
    expected, got = _decoded(hnet, whole), _decoded(hnet, split)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_the_written_file_holds_the_whole_decode_bit_for_bit(hnet, tmp_path, monkeypatch):
    monkeypatch.setattr("hypernets.writers.PART_VALUES", 10_000)
    out = tmp_path / "gpt2.safetensors"
    save_prediction(hnet, _gpt2(), out)
    with torch.no_grad():
        expected = _decoded(hnet, TargetPlan.for_graphs(hnet.op_graphs([_gpt2()], None), MAX_CK, 10_000))
    stored = load_file(out)
    assert stored["transformer.wte.weight"].shape == (1001, 40)
    for name, value in expected.items():
        assert torch.equal(stored[name], value), name


def test_all_finite_finds_nan_and_infinities_and_accepts_a_sum_that_overflows():
    big = torch.full((8,), 3e38)
    assert not math.isfinite(big.sum().item()) and _all_finite(big)
    assert _all_finite(torch.randn(100).to(torch.bfloat16))
    for bad in (float("nan"), float("inf"), -float("inf")):
        values = torch.randn(100)
        values[37] = bad
        assert not _all_finite(values) and not _all_finite(values.to(torch.bfloat16))
