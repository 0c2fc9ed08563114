"""Benchmark fused ragged low-rank decoding on GPT-2 Large shapes against unfused baselines (CUDA only).

Decoding a whole model is memory-bound: the kernel must write every parameter once (and read theta0 once
for a residual), while the factors are tiny.  Every variant is timed in the same process with CUDA events
(warm-up, then the median of many reps), next to a write-bandwidth floor measured with a large ``fill_``:

    fused     hypernets.kernels.decode(backend="triton"): one launch, epilogue fused, one flat buffer
    eager     per tensor ``theta0_i + scale_i * (A_i @ B_i.T)`` then ``.to(dtype)``
    bmm       same-shape tensors stacked and multiplied with torch.bmm, then a separate epilogue
              (theta0 pre-arranged per group outside the timed region, which favours the baseline)
    compile   torch.compile of the eager loop
    backward  fused autograd.Function vs autograd through the eager loop

    python recipes/bench/bench_kernels.py                     # ranks 16 and 64, fp32 and bf16
    python recipes/bench/bench_kernels.py --n-layer 4 --skip compile backward   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from hypernets.kernels import DecodeLayout, decode, split

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BASELINES = ("eager", "bmm", "compile", "backward")


def gpt2_layout(n_layer: int = 36, d: int = 1280, vocab: int = 50257, n_ctx: int = 1024) -> DecodeLayout:
    """Every GPT-2 parameter (defaults: Large): 2-D weights as (d_in, d_out) Conv1D shapes, then 1-D ones."""
    matrices = [(vocab, d), (n_ctx, d)]  # wte, wpe
    vectors = []
    for _ in range(n_layer):
        matrices += [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]  # c_attn, attn c_proj, c_fc, mlp c_proj
        vectors += [d, d, 3 * d, d, d, d, 4 * d, d]  # ln_1 w/b, their biases, ln_2 w/b, their biases
    vectors += [d, d]  # ln_f
    return DecodeLayout.from_shapes(matrices, vectors)


@dataclass(frozen=True)
class Case:
    rank: int
    dtype: torch.dtype
    residual: bool

    def __str__(self) -> str:
        name = next(k for k, v in DTYPES.items() if v == self.dtype)
        return f"r={self.rank} {name}{' +theta0' if self.residual else ''}"


@dataclass
class Inputs:
    a: Tensor
    b: Tensor
    scale: Tensor
    theta0: Tensor | None
    vectors: Tensor

    def differentiable(self) -> list[Tensor]:
        return [t for t in (self.a, self.b, self.theta0, self.vectors) if t is not None]


def make_inputs(layout: DecodeLayout, case: Case, requires_grad: bool = False, device: str = "cuda") -> Inputs:
    """Factors, vectors and theta0 in the case dtype; fan-in scaling ``1/sqrt(d_in)`` for matrices."""

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device, dtype=case.dtype).requires_grad_(requires_grad)

    fan_in = [c**-0.5 for c in layout.cols] + [1.0] * len(layout.vector_sizes)
    return Inputs(
        a=randn(layout.row_offsets[-1], case.rank),
        b=randn(layout.col_offsets[-1], case.rank),
        scale=torch.tensor(fan_in, device=device),
        theta0=randn(layout.total) if case.residual else None,
        vectors=randn(layout.vector_offsets[-1]),
    )


def cuda_time_ms(fn: Callable[[], object], warmup: int, reps: int) -> float:
    """Median of ``reps`` CUDA-event timings after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def fill_bandwidth(warmup: int, reps: int, gib: float = 4.0) -> float:
    """Achievable write bandwidth in bytes/ms, from ``fill_`` on a buffer far larger than L2."""
    buf = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    ms = cuda_time_ms(lambda: buf.fill_(1), warmup, reps)
    return buf.numel() / ms


def eager_decoder(layout: DecodeLayout, x: Inputs) -> Callable[[], list[Tensor]]:
    """The unfused baseline: one matmul and one epilogue per tensor (host-side prep stays outside)."""
    scales = x.scale.tolist()
    thetas = split(x.theta0, layout) if x.theta0 is not None else [None] * layout.n_segments

    def run() -> list[Tensor]:
        raws = [a_i @ b_i.T for a_i, b_i in zip(x.a.split(layout.rows), x.b.split(layout.cols), strict=True)]
        raws += x.vectors.split(layout.vector_sizes)
        return [
            (s * raw if theta is None else theta + s * raw).to(x.a.dtype)
            for raw, s, theta in zip(raws, scales, thetas, strict=True)
        ]

    return run


def bmm_decoder(layout: DecodeLayout, x: Inputs) -> Callable[[], list[Tensor]]:
    """Same-shape matrices stacked into one ``torch.bmm`` per shape, then a separate epilogue."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, shape in enumerate(zip(layout.rows, layout.cols, strict=True)):
        groups[shape].append(i)
    a_parts, b_parts = x.a.split(layout.rows), x.b.split(layout.cols)
    thetas = split(x.theta0, layout) if x.theta0 is not None else None
    group_theta = {k: torch.stack([thetas[i] for i in idx]) for k, idx in groups.items()} if thetas else {}
    scale = x.scale.to(x.a.dtype)  # keep the epilogue in the model dtype, like the eager loop's float scales
    group_scale = {k: scale[idx].view(-1, 1, 1) for k, idx in groups.items()}
    vec_scale = scale[layout.n_matrices :].repeat_interleave(torch.tensor(layout.vector_sizes, device=x.a.device))
    vec_theta = x.theta0[layout.matrix_numel :] if x.theta0 is not None else 0

    def run() -> list[Tensor]:
        outs = []
        for key, idx in groups.items():
            w = group_scale[key] * torch.bmm(
                torch.stack([a_parts[i] for i in idx]), torch.stack([b_parts[i] for i in idx]).transpose(1, 2)
            )
            outs.append((group_theta[key] + w if key in group_theta else w).to(x.a.dtype))
        outs.append((vec_theta + vec_scale * x.vectors).to(x.a.dtype))
        return outs

    return run


def fused_decode(layout: DecodeLayout, x: Inputs) -> Tensor:
    return decode(x.a, x.b, layout, x.scale, x.theta0, x.vectors, backend="triton")


def backward_timer(forward: Callable[[], Tensor | list[Tensor]], inputs: list[Tensor], layout: DecodeLayout):
    """Times one ``autograd.grad`` through an already-built graph (retained so it can be replayed)."""
    out = forward()
    grad = torch.randn(layout.total, device=inputs[0].device, dtype=inputs[0].dtype)
    grads = grad if isinstance(out, Tensor) else split(grad, layout)
    return lambda: torch.autograd.grad(out, inputs, grads, retain_graph=True)


def bench_case(layout: DecodeLayout, case: Case, args: argparse.Namespace, bandwidth: float) -> dict[str, float]:
    """Times for one case in ms, the floors, and a max-abs-difference sanity check against eager."""
    x = make_inputs(layout, case)
    timed = lambda fn: cuda_time_ms(fn, args.warmup, args.reps)
    fused, eager = (lambda: fused_decode(layout, x)), eager_decoder(layout, x)
    out_bytes = layout.total * case.dtype.itemsize * (2 if case.residual else 1)  # write out (+ read theta0)
    in_bytes = sum(t.numel() * t.element_size() for t in (x.a, x.b, x.vectors))
    row = {"floor": (out_bytes + in_bytes) / bandwidth, "fused": timed(fused)}
    reference = torch.cat([w.reshape(-1) for w in eager()])
    row["max_err"] = (fused().float() - reference.float()).abs().max().item()
    del reference
    if "eager" not in args.skip:
        row["eager"] = timed(eager)
    if "bmm" not in args.skip:
        row["bmm"] = timed(bmm_decoder(layout, x))
    if "compile" not in args.skip:
        torch._dynamo.reset()  # each case is a fresh compile, not a recompile against the cache limit
        row["compile"] = timed(torch.compile(eager))
    if "backward" not in args.skip:
        xg = make_inputs(layout, case, requires_grad=True)
        row["bwd_floor"] = layout.matrix_numel * case.dtype.itemsize / bandwidth  # G read once
        row["bwd_fused"] = timed(backward_timer(lambda: fused_decode(layout, xg), xg.differentiable(), layout))
        row["bwd_eager"] = timed(backward_timer(eager_decoder(layout, xg), xg.differentiable(), layout))
    return row


def format_table(rows: list[tuple[Case, dict[str, float]]]) -> str:
    """Markdown table: times in ms, ``x`` = baseline time / fused time, ``%floor`` = floor / fused time."""
    cols = ["case", "fused ms", "%floor", "eager ms", "x eager", "bmm ms", "x bmm", "compile ms", "x compile"]
    cols += ["bwd fused ms", "%bwd floor", "bwd eager ms", "x bwd eager", "max abs diff vs eager"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for case, r in rows:
        cells = [str(case), f"{r['fused']:.3f}", f"{100 * r['floor'] / r['fused']:.0f}%"]
        for name in ("eager", "bmm", "compile"):
            cells += [f"{r[name]:.3f}", f"{r[name] / r['fused']:.2f}"] if name in r else ["-", "-"]
        if "bwd_fused" in r:
            cells += [f"{r['bwd_fused']:.3f}", f"{100 * r['bwd_floor'] / r['bwd_fused']:.0f}%"]
            cells += [f"{r['bwd_eager']:.3f}", f"{r['bwd_eager'] / r['bwd_fused']:.2f}"]
        else:
            cells += ["-"] * 4
        cells.append(f"{r['max_err']:.2e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64], help="low-rank r (default: 16 64)")
    parser.add_argument(
        "--dtypes", nargs="+", default=["fp32", "bf16"], choices=DTYPES, help="dtype of factors, theta0 and output"
    )
    parser.add_argument("--residual", nargs="+", default=["off", "on"], choices=["off", "on"], help="theta0 base")
    parser.add_argument("--n-layer", type=int, default=36, help="GPT-2 blocks (36 = Large)")
    parser.add_argument("--d-model", type=int, default=1280, help="GPT-2 width (1280 = Large)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before measuring")
    parser.add_argument("--reps", type=int, default=50, help="timed calls; the median is reported")
    parser.add_argument(
        "--tf32", action="store_true", help="fp32 matmuls in TF32 for every variant (default: IEEE fp32)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=BASELINES, help="baselines to leave out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py times CUDA kernels and needs a CUDA GPU; none is visible to torch.")
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")  # the fused kernel follows it too
    layout = gpt2_layout(args.n_layer, args.d_model)
    bandwidth = fill_bandwidth(args.warmup, args.reps)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    print(f"# GPT-2 n_layer={args.n_layer} d={args.d_model}: {layout.n_matrices} matrices + ", end="")
    print(f"{len(layout.vector_sizes)} vectors = {layout.total / 1e6:.1f}M parameters")
    print(f"# fill_ write bandwidth {bandwidth / 1e6:.0f} GB/s | fp32 matmul: {'TF32' if args.tf32 else 'IEEE'}\n")
    cases = [Case(r, DTYPES[d], res == "on") for r in args.ranks for d in args.dtypes for res in args.residual]
    rows = []
    for case in cases:
        rows.append((case, bench_case(layout, case, args, bandwidth)))
        print(f"done: {case}", file=sys.stderr)
        torch.cuda.empty_cache()
    print(format_table(rows))


if __name__ == "__main__":
    main()
