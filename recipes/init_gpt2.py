"""Initialize a byte-level GPT-2 the hypernetwork never saw with predicted parameters, fine-tune it on
the embedded text corpus, and compare with the same GPT-2 from Hugging Face's random init.

    python recipes/init_gpt2.py                     # the shipped gpt2-pydoc hypernetwork
    python recipes/init_gpt2.py --meta-steps 600    # meta-train a small LoGAH first (minutes)
    python recipes/init_gpt2.py --hypernet runs/gpt2-logah/hypernet --plot gpt2.png

Copy it: swap the architecture, the text or the hypernetwork checkpoint for your own.
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
from hypernets.zoo import GPT2Arch

# Deeper (6 layers) and wider (128) than any GPT-2 the hypernetwork is trained on (up to 4 layers of 96).
HELD_OUT = GPT2Arch(n_layer=6, n_embd=128, n_head=4, n_positions=128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernet", default="gpt2-pydoc", help="a LoGAH checkpoint directory or shipped name")
    parser.add_argument("--meta-steps", type=int, help="meta-train a LoGAH for this many steps instead")
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    parser.add_argument("--plot", default="init_gpt2.png")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread beats contended ones

    if args.meta_steps is None:
        hnet = LoGAH.from_pretrained(args.hypernet)
    else:
        config = TrainConfig(family="gpt2", out="runs/init-gpt2", steps=args.meta_steps, archs_per_step=4, lr=3e-3)
        train(config)  # resumes if runs/init-gpt2 holds a checkpoint
        hnet = LoGAH.from_pretrained(f"{config.out}/{HYPERNET_DIR}")

    task = task_for("gpt2")
    predicted = hnet.eval().predict_(HELD_OUT.build("meta"), device="cpu")  # no random init is ever made
    torch.manual_seed(0)
    random = HELD_OUT.build("cpu")
    curves = {}
    for name, model in (("LoGAH", predicted), ("random init", random)):
        curves[name] = finetune(model, task, args.steps, lr=5e-4, batch_size=32, seed=0)
        first, last = curves[name][1][0], curves[name][1][-1]
        print(f"{name:12s} eval loss at step 0: {first:.3f}, after {args.steps} steps: {last:.3f}")

    for name, (steps, losses) in curves.items():
        plt.plot(steps, losses, marker="o", label=name)
    plt.xlabel("fine-tuning steps")
    plt.ylabel("eval loss (nats per byte)")
    plt.title(HELD_OUT.name)
    plt.legend()
    plt.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
