"""Prune a trained network the way a CI step does: ``python recipes/prune_in_ci.py``.

It stands in for your pipeline: a "training job" leaves ``model.safetensors`` + ``model.json``
(here: one small CNN trained on the embedded MNIST), a metanetwork is meta-trained once on a small
population of other networks (cached under --work), and then the CI step itself runs the
``metaprune prune`` command and acts on its exit status, as docs/ci/github-prune.yml does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from metaprune.metatrain import MetaTrainConfig, train_metanet
from metaprune.population import build_population, population_specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/prune_in_ci"), help="where everything is written")
    parser.add_argument("--speedup", type=float, default=2.0, help="required FLOPs speed-up")
    parser.add_argument("--max-acc-drop", type=float, default=1.0, help="allowed accuracy drop in points")
    parser.add_argument("--finetune-steps", type=int, default=300, help="fine-tuning budget after pruning")
    args = parser.parse_args()

    # What the training job and a one-off meta-training leave behind.
    (trained,) = build_population(args.work / "trained", population_specs(1, train_steps=600, seed=7))
    if not (args.work / "metanet" / "model.safetensors").is_file():
        build_population(args.work / "population", population_specs(8, train_steps=600))
        train_metanet(args.work / "population", args.work / "metanet", MetaTrainConfig(steps=300))

    # The CI step.
    arguments = [
        *("prune", "--model", str(trained / "model.safetensors"), "--config", str(trained / "model.json")),
        *("--metanet", str(args.work / "metanet"), "--speedup", str(args.speedup)),
        *("--finetune-steps", str(args.finetune_steps), "--max-acc-drop", str(args.max_acc_drop)),
        *("--out", str(args.work / "pruned"), "--report", str(args.work / "report.json"), "--overwrite"),
    ]
    print("$ metaprune", " ".join(arguments), flush=True)
    # The `metaprune` console script's entry point, run by this interpreter: found without an activated venv.
    status = subprocess.run([sys.executable, "-m", "metaprune.cli", *arguments], check=False).returncode
    if status == 0:
        print(f"pruned model in {args.work / 'pruned'}, report in {args.work / 'report.json'}")
    elif status == 1:
        reasons = json.loads((args.work / "report.json").read_text())["reasons"]
        print("pruning missed its target: " + "; ".join(reasons), file=sys.stderr)
    elif status == 2:
        print("bad input: the line above names the file or option to fix", file=sys.stderr)
    else:
        print(f"metaprune failed (exit {status}): a crash or a kill, not a verdict on the model", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
