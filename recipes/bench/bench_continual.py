"""Benchmark continual learning: ``hypernets continual`` over a grid of methods, benchmarks and settings,
3 seeds, and the wall time and machine of the whole grid.

    python recipes/bench/bench_continual.py --out runs/bench_continual                # Split-MNIST, both settings
    python recipes/bench/bench_continual.py --benchmark permuted,rotated --method hypernet,ewc,si,finetune \\
        --steps 300 --out runs/bench_continual_perm

Any ``hypernets continual`` option may follow; it overrides the defaults below. Prints the command's
table (mean ± std over seeds), then one line with the wall time and the machine.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import torch

from hypernets.cli import main

DEFAULTS = ["--method", "hypernet,ewc,si,finetune,separate", "--benchmark", "split", "--setting", "task,class"]
DEFAULTS += ["--seeds", "0,1,2", "--threads", "1"]


if __name__ == "__main__":
    start = time.perf_counter()
    status = main(["continual", *DEFAULTS, *sys.argv[1:]])
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, 1 thread"
    print(f"\nwall time {time.perf_counter() - start:.0f} s ({machine})")
    sys.exit(status)
