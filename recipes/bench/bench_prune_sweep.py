"""Prune timm models at their default size, one family after another: which families ``metaprune`` handles.

Each model is built from code with random weights and 10 classes (nothing is downloaded), given one example
of its default input size, and pruned with ``metaprune.prune.prune(model, x, speedup=...)`` in a process of its
own, under a time limit, so that one model's hang or memory cannot spoil the next. It prints one markdown row
per model as it goes (``ok`` with the speed-up reached, the modules repaired and the seconds, or the error's
class and first line), and the totals. The default list is the families of the sweeps in docs/metaprune.md.

    OMP_NUM_THREADS=1 python recipes/bench/bench_prune_sweep.py           # about an hour on the 2-core box
    python recipes/bench/bench_prune_sweep.py --models caformer_s18 focalnet_tiny_srf --timeout 600
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MODELS = [
    # the fourth sweep's families named in docs/metaprune.md
    "twins_svt_small",
    "gcvit_xxtiny",
    "nf_resnet26",
    "dm_nfnet_f0",
    "edgenext_xx_small",
    "crossvit_tiny_240",
    "efficientformer_l1",
    "tiny_vit_5m_224",
    "dpn68",
    "sequencer2d_s",
    "tresnet_m",
    "tnt_s_patch16_224",
    "coat_lite_tiny",
    "pit_ti_224",
    "efficientvit_m0",
    "swin_tiny_patch4_window7_224",
    "poolformerv2_s12",
    "skresnet18",
    "mixnet_s",
    "nest_tiny",
    "lambda_resnet26t",
    "caformer_s18",
    "focalnet_tiny_srf",
    # the fifth sweep
    "mobilenetv4_conv_small",
    "hgnetv2_b0",
    "repghostnet_050",
    "mambaout_femto",
    "starnet_s1",
    "rdnet_tiny",
    "vitamin_small_224",
    "davit_tiny",
    "maxvit_tiny_tf_224",
    "maxxvit_rmlp_nano_rw_256",
    "swinv2_cr_tiny_224",
    "swinv2_tiny_window8_256",
    "volo_d1_224",
    "mvitv2_tiny",
    "inception_next_tiny",
    "ghostnetv2_100",
    "convnextv2_atto",
    "efficientformerv2_s0",
    "nextvit_small",
    "mobileone_s0",
    "ese_vovnet19b_dw",
    "hiera_tiny_224",
    "halonet26t",
    "botnet26t_256",
    "sebotnet33ts_256",
    "eca_halonext26ts",
    "haloregnetz_b",
]


def prune_one(name: str, speedup: float) -> dict:
    """Build ``name`` and prune it; what happened, as a JSON-able record."""
    import timm
    import torch

    from metaprune.prune import prune

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    start = time.monotonic()
    try:
        result = prune(model, x, speedup=speedup)
    except Exception as err:  # the sweep reports every failure and goes on
        first_line = (str(err).splitlines() or [""])[0]
        return {"ok": False, "error": f"{type(err).__name__}: {first_line[:200]}", "seconds": time.monotonic() - start}
    return {
        "ok": True,
        "speedup": result.speedup,
        "repaired": len(result.repaired),
        "seconds": time.monotonic() - start,
    }


def run(name: str, speedup: float, timeout: float) -> dict:
    """:func:`prune_one` in a fresh process, or why it gave no record (time limit, crash)."""
    command = [sys.executable, __file__, "--one", name, "--speedup", str(speedup)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"over the {timeout:g} s limit"}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        return {"ok": False, "error": f"process exited {done.returncode}: {last[:200]}"}
    return json.loads(lines[-1])


def row(name: str, record: dict) -> str:
    if record["ok"]:
        repaired = f", {record['repaired']} repaired" if record["repaired"] else ""
        return f"| {name} | ok: {record['speedup']:.2f}x{repaired} | {record['seconds']:.0f} |"
    seconds = f"{record['seconds']:.0f}" if "seconds" in record else ""
    return f"| {name} | {record['error'].replace('|', '/')} | {seconds} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help="timm model names (default: the sweeps' list)")
    parser.add_argument("--speedup", type=float, default=1.5, help="FLOPs target (default: 1.5)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model (default: 300)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: prune this model, print its record
    args = parser.parse_args()
    if args.one:
        print(json.dumps(prune_one(args.one, args.speedup)))
        return
    print(f"speed-up {args.speedup:g}, {args.timeout:g} s per model\n")
    print("| model | result | seconds |\n|---|---|---:|")
    passed = 0
    for name in args.models:
        record = run(name, args.speedup, args.timeout)
        passed += record["ok"]
        print(row(name, record), flush=True)
    print(f"\n{passed} of {len(args.models)} pruned")


if __name__ == "__main__":
    main()
