"""LoGAH against the tiled GHN-3 decoder of the same parameter count and against random init, on
architectures no training step sampled (reserved in-range settings, deeper and wider networks).

Both hypernetworks are meta-trained with the same settings, data and architecture stream (each run
resumes if its directory already holds a checkpoint), then every held-out architecture is scored at
step 0 and along ``--finetune-steps`` steps of AdamW from each of the three initializations. Writes
``OUT/results/results.md`` (the table), ``results.json`` and ``curves.png``.

    python recipes/bench/bench_init.py --family vit --steps 3000 --out runs/bench-vit
    python recipes/bench/bench_init.py --family vit --steps 4000 --parallel   # both at once, one core each
    python recipes/bench/bench_init.py --family gpt2 --steps 2000 --out runs/bench-gpt2
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch

from hypernets import LoGAH
from hypernets.evaluate import compare_inits, write_report
from hypernets.train import HYPERNET_DIR, TrainConfig, task_for, train
from hypernets.train.baseline import count_parameters, tiled_baseline
from hypernets.train.config import HYPERNET_DEFAULTS, hypernet_config
from hypernets.zoo import get_family


def timed_train(config: TrainConfig, threads: int, progress: bool) -> float:
    """Meta-train (or resume) one run; the minutes it took."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    train(config, progress=progress)
    return (time.perf_counter() - start) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("vit", "gpt2"), default="vit")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-init"))
    parser.add_argument("--steps", type=int, default=3000, help="meta-training steps of each hypernetwork")
    parser.add_argument("--archs-per-step", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=HYPERNET_DEFAULTS["hidden"])
    parser.add_argument("--rank", type=int, default=HYPERNET_DEFAULTS["rank"])
    parser.add_argument(
        "--shape-frequencies", type=int, default=HYPERNET_DEFAULTS["shape_frequencies"], help="of the shape encoding"
    )
    parser.add_argument("--heldout", type=int, default=8, help="held-out architectures to score")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds both runs (architectures, data, init): repeat to see the spread"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (tiny models: 1 is fastest)")
    parser.add_argument("--parallel", action="store_true", help="meta-train both hypernetworks at once, a process each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lowrank = hypernet_config(hidden=args.hidden, rank=args.rank, shape_frequencies=args.shape_frequencies)
    base = TrainConfig(
        family=args.family,
        steps=args.steps,
        archs_per_step=args.archs_per_step,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.lr / 10,
        seed=args.seed,
        device=args.device,
    )
    runs = {
        name: replace(base, out=str(args.out / name), hypernet=config)
        for name, config in (("LoGAH", lowrank), ("tiled", tiled_baseline(lowrank)))
    }
    if args.parallel:  # no progress bars: two would overwrite each other
        with ProcessPoolExecutor(len(runs), mp_context=get_context("spawn")) as pool:
            jobs = {name: pool.submit(timed_train, run, args.threads, False) for name, run in runs.items()}
            minutes = {name: job.result() for name, job in jobs.items()}
    else:
        minutes = {name: timed_train(run, args.threads, True) for name, run in runs.items()}
    hypernets = {}
    for name, run in runs.items():
        print(f"{name}: {count_parameters(run.hypernet):,} parameters, {args.steps} steps in {minutes[name]:.1f} min")
        hypernets[name] = LoGAH.from_pretrained(args.out / name / HYPERNET_DIR)

    archs = get_family(args.family).heldout_archs(args.heldout)
    curves = compare_inits(archs, hypernets, args.family, args.finetune_steps, args.finetune_lr)
    print(write_report(curves, args.out / "results", task_for(args.family).metric, overwrite=True))
    print(f"wrote {args.out / 'results'}/results.md and curves.png")


if __name__ == "__main__":
    main()
