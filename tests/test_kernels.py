"""Ragged low-rank decoding: reference vs an independent loop, gradients, host tile tables, the Triton kernels
(under the interpreter, in a subprocess) and every argument error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernels_helpers import DTYPES, GROUPS, make_inputs, naive_decode, tolerance

from hypernets.kernels import DecodeLayout, accumulate_decoded_, decode, split, tiles

HERE = Path(__file__).parent

# --------------------------------------------------------------------------------------------- layout


def test_layout_offsets_and_hash():
    layout = DecodeLayout.from_shapes([(2, 3), (4, 5)], [6, 1])
    assert layout.row_offsets == (0, 2, 6)
    assert layout.col_offsets == (0, 3, 8)
    assert layout.vector_offsets == (0, 6, 7)
    assert layout.out_offsets == (0, 6, 26, 32, 33)
    assert (layout.total, layout.matrix_numel, layout.n_segments) == (33, 26, 4)
    assert layout == DecodeLayout((2, 4), (3, 5), (6, 1))
    assert hash(layout) == hash(DecodeLayout([2, 4], [3, 5], [6, 1]))


def test_split_returns_views_in_layout_order():
    layout = GROUPS["ragged"]
    flat = torch.arange(layout.total, dtype=torch.float32)
    parts = split(flat, layout)
    assert [tuple(p.shape) for p in parts] == list(layout.segment_shapes)
    assert all(p.data_ptr() == flat[start:].data_ptr() for p, start in zip(parts, layout.out_offsets, strict=False))
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in parts]), flat)


# ------------------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("group", GROUPS)
def test_in_place_accumulation_equals_decode_in_the_same_buffer(group):
    layout = GROUPS[group]
    inputs = make_inputs(layout, 7, with_scale=True, with_theta0=True, seed=3)
    expected = decode(inputs.a, inputs.b, layout, inputs.scale, inputs.theta0, inputs.vectors, backend="torch")
    buffer = inputs.theta0.clone()
    result = accumulate_decoded_(buffer, inputs.a, inputs.b, layout, inputs.scale, inputs.vectors)
    assert result.data_ptr() == buffer.data_ptr()  # no second buffer
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.double(), naive_decode(layout, inputs), rtol=1e-5, atol=1e-5)


OPTIONS = {"plain": (False, False), "scale": (True, False), "theta0": (False, True), "both": (True, True)}


@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: f"{d[0]}-{d[1]}".replace("torch.", ""))
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("rank", [1, 7, 16, 128])
@pytest.mark.parametrize("group", GROUPS)
def test_reference_matches_naive_loop(group, rank, option, dtypes):
    in_dtype, out_dtype = dtypes
    layout = GROUPS[group]
    with_scale, with_theta0 = OPTIONS[option]
    inputs = make_inputs(layout, rank, in_dtype, with_scale=with_scale, with_theta0=with_theta0, seed=rank)
    out = decode(*inputs[:2], layout, *inputs[2:], out_dtype=out_dtype, backend="torch")
    assert out.shape == (layout.total,) and out.dtype == out_dtype
    torch.testing.assert_close(out.double(), naive_decode(layout, inputs), **tolerance(out_dtype))


def test_default_out_dtype_is_input_dtype():
    inputs = make_inputs(GROUPS["ragged"], 4, torch.bfloat16)
    assert decode(*inputs[:2], GROUPS["ragged"], *inputs[2:]).dtype == torch.bfloat16


GRADCHECK_LAYOUTS = {
    "small_ragged": DecodeLayout.from_shapes([(1, 1), (3, 5), (4, 2)], [3, 1]),
    "vectors_only": GROUPS["vectors_only"],
}


@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("name", GRADCHECK_LAYOUTS)
def test_reference_gradcheck(name, with_scale):
    layout = GRADCHECK_LAYOUTS[name]
    inputs = make_inputs(layout, 2, torch.float64, with_scale=with_scale, requires_grad=True)
    scale = None if inputs.scale is None else inputs.scale.double()

    def fn(a, b, theta0, vectors):
        return decode(a, b, layout, scale, theta0, vectors, backend="torch")

    assert torch.autograd.gradcheck(fn, (inputs.a, inputs.b, inputs.theta0, inputs.vectors))


# ---------------------------------------------------------------------------------------- tile tables


def _coverage(layout: DecodeLayout, blocks: tuple[int, int], table: tiles.TileTable, set_index: int) -> torch.Tensor:
    """How many times each output element (forward) is written by tile set ``set_index``."""
    seg_table = tiles.segment_table(layout, torch.device("cpu")).tolist()
    start = int(table.starts[set_index])
    hits = torch.zeros(layout.total, dtype=torch.int64)
    block_m, block_n = blocks
    for seg, kind, i, j in table.tiles[start : start + table.counts[set_index]].tolist():
        _, _, rows, cols, out = seg_table[seg]
        if kind == tiles.MATRIX:
            r = torch.arange(i * block_m, min((i + 1) * block_m, rows))
            c = torch.arange(j * block_n, min((j + 1) * block_n, cols))
            idx = out + (r[:, None] * cols + c[None, :]).reshape(-1)
        else:
            idx = out + torch.arange(i * block_m * block_n, min((i + 1) * block_m * block_n, cols))
        assert idx.numel() > 0, "every tile must own at least one element"
        hits[idx] += 1
    return hits


def _reduction_coverage(layout: DecodeLayout, blocks: tuple[int, int], table: tiles.TileTable, set_index: int):
    """How many times each element of G is read by grad-A tiles and by grad-B tiles of one tile set."""
    seg_table = tiles.segment_table(layout, torch.device("cpu")).tolist()
    start = int(table.starts[set_index])
    hits = torch.zeros(2, layout.matrix_numel, dtype=torch.int64)
    block_m, split_k = blocks
    for seg, kind, i, chunk in table.tiles[start : start + table.counts[set_index]].tolist():
        _, _, rows, cols, out = seg_table[seg]
        out_rows, red_rows = (rows, cols) if kind == tiles.GRAD_A else (cols, rows)
        m = torch.arange(i * block_m, min((i + 1) * block_m, out_rows))
        k = torch.arange(chunk * split_k, min((chunk + 1) * split_k, red_rows))
        r, c = (m[:, None], k[None, :]) if kind == tiles.GRAD_A else (k[:, None], m[None, :])
        hits[kind, (out + r * cols + c).reshape(-1)] += 1
    return hits


def test_forward_tiles_cover_every_output_element_once():
    layout = GROUPS["ragged"]
    blocks = ((16, 16), (32, 64), (64, 128))
    table = tiles.forward_tiles(layout, blocks, torch.device("cpu"))
    assert int(table.starts[-1]) + table.counts[-1] == len(table.tiles)
    for s, block in enumerate(blocks):
        assert torch.equal(_coverage(layout, block, table, s), torch.ones(layout.total, dtype=torch.int64))


def test_backward_tiles_cover_every_gradient_element_once():
    layout = GROUPS["ragged"]
    blocks = ((16, 32), (64, 64))
    table = tiles.backward_tiles(layout, blocks, torch.device("cpu"))
    for s, block in enumerate(blocks):
        hits = _reduction_coverage(layout, block, table, s)
        assert torch.equal(hits, torch.ones_like(hits))


def test_tile_tables_are_cached_per_layout_blocks_and_device():
    layout, cpu = GROUPS["ragged"], torch.device("cpu")
    same = DecodeLayout(layout.rows, layout.cols, layout.vector_sizes)
    assert tiles.forward_tiles(layout, ((32, 32),), cpu) is tiles.forward_tiles(same, ((32, 32),), cpu)
    assert tiles.forward_tiles(layout, ((32, 32),), cpu) is not tiles.forward_tiles(layout, ((64, 64),), cpu)


# ------------------------------------------------------------------------------------------- triton


def test_triton_matches_reference_in_interpreter():
    """TRITON_INTERPRET must be set before triton is imported, so these cases run in a fresh interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cases = str(HERE / "kernels_interpreter_cases.py")
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", cases]
    result = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def _compile_for_hopper(kernel, pointers: dict[str, str], constexprs: dict, config):
    """Lower one autotune config of ``kernel`` to an sm_90 cubin with the real compiler: no GPU needed."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    fn, constexprs = kernel.fn, {**constexprs, **config.kwargs}
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in fn.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n in pointers}  # as torch
    source = ASTSource(fn, signature, constexprs=constexprs, attrs=aligned)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return compile(source, target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.parametrize(("in_type", "out_type"), [("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16")])
def test_triton_kernels_compile_for_hopper(in_type, out_type):
    """The interpreter skips the GPU compiler entirely, so compile each kernel for sm_90 as well."""
    pytest.importorskip("triton")
    from hypernets.kernels import triton_decode as td

    if td.INTERPRET:
        pytest.skip("kernels were built for the interpreter (TRITON_INTERPRET=1)")
    inputs = {"a_ptr": f"*{in_type}", "b_ptr": f"*{in_type}", "vectors_ptr": f"*{in_type}", "scale_ptr": "*fp32"}
    tables = {"segment_ptr": "*i64", "tile_ptr": "*i32", "starts_ptr": "*i64"}
    meta = {"R_PAD": 32, "INPUT_PRECISION": "ieee", "ALIGNED": True}
    forward = {**inputs, **tables, "theta0_ptr": f"*{out_type}", "out_ptr": f"*{out_type}"}
    compiled = _compile_for_hopper(td._forward_kernel, forward, meta, td._forward_kernel.configs[0])
    assert "st.global.v4" in compiled.asm["ptx"], "aligned segments should get vectorised stores"
    backward = {**inputs, **tables, "grad_ptr": f"*{out_type}", "grad_a_ptr": "*fp32", "grad_b_ptr": "*fp32"}
    for config in td._backward_kernel.configs[:2]:
        _compile_for_hopper(td._backward_kernel, backward, meta, config)


# ------------------------------------------------------------------------------------------- errors


@pytest.fixture
def setup():
    layout = GROUPS["ragged"]
    return layout, make_inputs(layout, 4)


def test_empty_layout_is_rejected():
    with pytest.raises(ValueError, match="DecodeLayout is empty"):
        DecodeLayout.from_shapes([])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rows": (2, 0), "cols": (1, 1)}, r"DecodeLayout.rows\[1\] = 0; every size must be >= 1"),
        ({"rows": (2,), "cols": (1, 1)}, "got 1 rows and 2 cols"),
        ({"rows": (2,), "cols": (1,), "vector_sizes": (-3,)}, r"vector_sizes\[0\] = -3"),
    ],
)
def test_bad_layout_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodeLayout(**kwargs)


@pytest.mark.parametrize(
    ("field", "bad", "match"),
    [
        ("a", torch.zeros(5, 4), r"a has shape \(5, 4\), expected \(150, 4\) = \(sum\(layout.rows\), rank\)"),
        ("b", torch.zeros(98, 4), r"b has shape \(98, 4\), expected \(99, 4\) = \(sum\(layout.cols\), rank\)"),
        ("a", torch.zeros(150), r"a must be 2-D \[rows, rank\], got shape \(150,\)"),
        ("b", torch.zeros(99, 3), r"rank mismatch: a has rank 4 \(a.shape\[1\]\) but b has rank 3"),
        ("theta0", torch.zeros(3), r"theta0 has shape \(3,\), expected \(8829,\) = \(layout.total,\)"),
        ("vectors", torch.zeros(70), r"vectors has shape \(70,\), expected \(71,\) = \(sum\(layout.vector_sizes\),\)"),
        ("vectors", None, r"vectors is required: layout has 2 vector segments \(71 elements in total\)"),
        ("scale", torch.ones(5), r"scale has shape \(5,\), expected \(6,\) = \(layout.n_segments,\)"),
        ("scale", torch.ones(6, requires_grad=True), "scale is a constant multiplier and must not require grad"),
        ("a", torch.zeros(150, 4, dtype=torch.int64), "a and b must share one floating-point dtype"),
    ],
)
def test_argument_errors_name_the_argument_and_shapes(setup, field, bad, match):
    layout, inputs = setup
    args = inputs._replace(**{field: bad})
    with pytest.raises((ValueError, TypeError), match=match):
        decode(*args[:2], layout, *args[2:])


def test_vectors_without_vector_segments_is_rejected():
    layout = GROUPS["aligned"]
    inputs = make_inputs(layout, 4)
    with pytest.raises(ValueError, match=r"vectors was given \(shape \(2,\)\) but layout has no vector segments"):
        decode(inputs.a, inputs.b, layout, vectors=torch.zeros(2))


def test_unknown_backend(setup):
    layout, inputs = setup
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; choose one of \('auto', 'triton', 'torch'\)"):
        decode(*inputs[:2], layout, *inputs[2:], backend="cuda")


def test_triton_on_cpu_without_interpreter_says_how_to_enable_it(setup, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layout, inputs = setup
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors, got tensors on cpu.*set TRITON_INTERPRET=1"):
        decode(*inputs[:2], layout, *inputs[2:], backend="triton")


def test_triton_rejects_unsupported_rank_and_dtype(monkeypatch):
    monkeypatch.setattr("hypernets.kernels.dispatch._interpreting", lambda: True)
    layout = GROUPS["aligned"]
    wide = make_inputs(layout, 129)
    with pytest.raises(ValueError, match=r"backend='triton' supports rank <= 128, got 129; use backend='torch'"):
        decode(wide.a, wide.b, layout, backend="triton")
    f64 = make_inputs(layout, 4, torch.float64)
    with pytest.raises(TypeError, match=r"backend='triton' supports a/b and out_dtype in .*got a.dtype=torch.float64"):
        decode(f64.a, f64.b, layout, backend="triton")


def test_split_rejects_wrong_size():
    layout = GROUPS["ragged"]
    with pytest.raises(ValueError, match=r"flat has shape \(3,\), expected \(8829,\) = \(layout.total,\)"):
        split(torch.zeros(3), layout)
