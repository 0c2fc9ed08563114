"""Predicting GPT-2 Large and XL straight to disk, beside the I/O floor measured in the same run.

Each measurement runs in a fresh Python process, so that its peak resident set (``ru_maxrss``) is its own:

- *predict*: ``hypernets.save_prediction`` of a ``meta``-built target into one safetensors file, timed from
  the op graph to the published file (tracing, encoding, decoding part by part, writing);
- *I/O floor*: ``safetensors.torch.save_file`` of zero tensors of the same names, shapes and dtype to the
  same directory, timing the write alone (the zeros are allocated before the clock starts).

Outputs are deleted after each measurement. ``--repeats`` runs each pair that many times (floor first, then
predict, alternating) and reports the median and the range, with the CPU seconds of every thread beside the
wall time (on a shared machine the load stretches wall time far more than CPU time).

    python recipes/bench/bench_predict_disk.py
    python recipes/bench/bench_predict_disk.py --targets gpt2:large --dtypes float32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

MB = 2**20


def measure(kind: str, target: str, dtype: str, hypernet: str, work: Path) -> dict:
    """One measurement in this process; the output file is removed afterwards."""
    from hypernets import LoGAH, save_prediction
    from hypernets.models import build_model

    out = work / f"{kind}.safetensors"
    model = build_model(target, device="meta")
    hnet = LoGAH.from_pretrained(hypernet).eval()
    if kind == "floor":
        from safetensors.torch import save_file

        predicted = {e.name: e.shape for e in _entries(hnet, model)}
        zeros = {name: torch.zeros(shape, dtype=getattr(torch, dtype)) for name, shape in predicted.items()}
        start, cpu = time.perf_counter(), time.process_time()
        save_file(zeros, out)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        size = out.stat().st_size
    else:
        start, cpu = time.perf_counter(), time.process_time()
        written = save_prediction(hnet, model, out, dtype=getattr(torch, dtype))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        size = out.stat().st_size
        assert written.files == (out,)
    out.unlink()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "kind": kind,
        "target": target,
        "dtype": dtype,
        "seconds": seconds,
        "cpu_seconds": cpu,  # every thread's, user and system: what a loaded machine stretches least
        "bytes": size,
        "peak_rss_mb": rss,
    }


def _entries(hnet, model):
    from hypernets.nn.plan import plan_entries

    return plan_entries(hnet.op_graphs([model], None))


def child(kind: str, target: str, dtype: str, hypernet: str, work: Path, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--targets", target, "--dtypes", dtype]
    command += ["--hypernet", hypernet, "--work", str(work), "--threads", str(threads)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=["gpt2:large", "gpt2:xl"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    parser.add_argument("--hypernet", default="gpt2-pydoc", help="checkpoint directory or shipped name")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-predict-disk"), help="where files go")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--child", choices=("floor", "predict"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(measure(args.child, args.targets[0], args.dtypes[0], args.hypernet, args.work)))
        return
    rows = []
    for target in args.targets:
        for dtype in args.dtypes:
            runs: dict[str, list[dict]] = {"floor": [], "predict": []}
            for _ in range(args.repeats):
                for kind in runs:
                    runs[kind].append(child(kind, target, dtype, args.hypernet, args.work, args.threads))
            rows.append((target, dtype, runs))
            print(json.dumps({"target": target, "dtype": dtype, **runs}), flush=True)
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads; hypernetwork {args.hypernet}\n")
    print(
        "| target | dtype | size (GB) | predict to disk (s) | I/O floor (s) | predict / floor "
        "| CPU: predict (s) | CPU: floor (s) | peak RSS (MB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for target, dtype, runs in rows:
        predict = [r["seconds"] for r in runs["predict"]]
        floor = [r["seconds"] for r in runs["floor"]]
        rss = max(r["peak_rss_mb"] for r in runs["predict"])
        cpu = {kind: _spread([r["cpu_seconds"] for r in runs[kind]]) for kind in runs}
        ratio = statistics.median(predict) / statistics.median(floor)
        print(
            f"| {target} | {dtype} | {runs['predict'][0]['bytes'] / 1e9:.2f} | {_spread(predict)} | {_spread(floor)} "
            f"| {ratio:.2f} | {cpu['predict']} | {cpu['floor']} | {rss:,.0f} |"
        )


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f} to {max(values):.1f})"


if __name__ == "__main__":
    main()
