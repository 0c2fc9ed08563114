"""LoGAH at scale: a hypernetwork under 1% of GPT-2 Large's size predicts every parameter of GPT-2 Large
and GPT-2 XL, on this machine's CPU (and on a GPU when one is at hand).

Each target runs in a fresh Python process so that its peak resident set (``ru_maxrss``) is its own.
The target is built on the ``meta`` device and materialized by ``predict_`` with predicted values:
no random initialization is ever allocated. Time is the wall clock of ``predict_`` (tracing, the
graph transformer, decoding, writing into the model); a forward pass of the predicted model on 8
tokens then checks that it computes finite logits.

    python recipes/bench/bench_logah_scale.py
    python recipes/bench/bench_logah_scale.py --targets gpt2:large --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

from hypernets import LoGAH
from hypernets.models import build_model

# A LoGAH sized for GPT-2: 128 hidden, 3 layers, rank 16, blocks of 1024 rows.
HYPERNET = dict(hidden=128, layers=3, heads=8, rank=16, max_ck=1024)
REFERENCE_PARAMETERS = 774_030_080  # GPT-2 Large, the budget's reference: 1% of it is 7.74M
MB = 2**20


def measure(target: str, device: str) -> dict:
    """Predict ``target`` in this process and return what was measured."""
    torch.manual_seed(0)
    hnet = LoGAH(**HYPERNET).to(device).eval()
    model = build_model(target, device="meta")
    start = time.perf_counter()
    hnet.predict_(model, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = model(torch.zeros(1, 8, dtype=torch.long, device=device)).logits
    return {
        "target": target,
        "target_parameters": sum(p.numel() for p in model.parameters()),
        "hypernet_parameters": sum(p.numel() for p in hnet.parameters()),
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / MB if device.startswith("cuda") else float("nan"),
        "finite": bool(torch.isfinite(logits).all()) and all(torch.isfinite(p).all() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=["gpt2:large", "gpt2:xl"], help="model specs to predict")
    parser.add_argument("--device", default="cpu", help="where the hypernetwork and the predicted model live")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.targets[0], args.device)))
        return
    rows = []
    for target in args.targets:
        command = [sys.executable, __file__, "--child", "--device", args.device, "--targets", target]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    hypernet = rows[0]["hypernet_parameters"]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}")
    print(f"LoGAH {HYPERNET}: {hypernet:,} parameters = {100 * hypernet / REFERENCE_PARAMETERS:.2f}% of GPT-2 Large")
    print()
    print("| target | parameters | hypernet / target | predict_ (s) | peak RSS (MB) | peak GPU (MB) | finite |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        share = 100 * r["hypernet_parameters"] / r["target_parameters"]
        print(
            f"| {r['target']} | {r['target_parameters']:,} | {share:.2f}% "
            f"| {r['seconds']:.1f} | {r['peak_rss_mb']:,.0f} | {r['peak_gpu_mb']:,.0f} | {r['finite']} |"
        )


if __name__ == "__main__":
    main()
