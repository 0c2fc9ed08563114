"""Initialize a ViT the hypernetwork never saw with predicted parameters, fine-tune it on MNIST, and
compare with the same ViT from timm's random init.

    python recipes/init_vit.py                     # the shipped vit-mnist hypernetwork
    python recipes/init_vit.py --hypernet vit-mnist-tiled   # the shipped tiled one: better on wide ViTs
    python recipes/init_vit.py --meta-steps 600    # meta-train a small LoGAH first (minutes)
    python recipes/init_vit.py --hypernet runs/vit-logah/hypernet --plot vit.png

Copy it: swap the architecture, the data or the hypernetwork checkpoint for your own.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from hypernets import LoGAH
from hypernets.evaluate import finetune
from hypernets.train import HYPERNET_DIR, TrainConfig, task_for, train
from hypernets.zoo import ViTArch

# Deeper (6 blocks) than any ViT the hypernetwork is trained on (up to 4); try embed_dim=128, wider than
# any training ViT, too.
HELD_OUT = ViTArch(depth=6, embed_dim=64, num_heads=4, mlp_ratio=2.0, patch_size=7, pool="token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernet", default="vit-mnist", help="a LoGAH checkpoint directory or shipped name")
    parser.add_argument("--meta-steps", type=int, help="meta-train a LoGAH for this many steps instead")
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    parser.add_argument("--plot", default="init_vit.png")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread beats contended ones

    if args.meta_steps is None:
        hnet = LoGAH.from_pretrained(args.hypernet)
    else:
        config = TrainConfig(family="vit", out="runs/init-vit", steps=args.meta_steps, archs_per_step=6, lr=3e-3)
        train(config)  # resumes if runs/init-vit holds a checkpoint
        hnet = LoGAH.from_pretrained(f"{config.out}/{HYPERNET_DIR}")

    task = task_for("vit")
    predicted = hnet.eval().predict_(HELD_OUT.build("meta"), device="cpu")  # no random init is ever made
    torch.manual_seed(0)
    random = HELD_OUT.build("cpu")
    curves = {}
    label = "LoGAH" if hnet.config.decoder == "lowrank" else "tiled"
    for name, model in ((label, predicted), ("random init", random)):
        curves[name] = finetune(model, task, args.steps, lr=5e-4, batch_size=64, seed=0)
        first, last = curves[name][1][0], curves[name][1][-1]
        print(f"{name:12s} accuracy at step 0: {first:5.1f}%, after {args.steps} steps: {last:5.1f}%")

    for name, (steps, scores) in curves.items():
        plt.plot(steps, scores, marker="o", label=name)
    plt.xlabel("fine-tuning steps")
    plt.ylabel("MNIST eval accuracy (%)")
    plt.title(HELD_OUT.name)
    plt.legend()
    plt.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
