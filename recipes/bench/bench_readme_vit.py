"""The figures of the README's "Predicting parameters in Python" snippet: the shipped ``vit-mnist`` on the
snippet's own ViT (6 blocks, width 128: deeper and wider than any it was meta-trained on), beside the mean
over the held-out ViTs that ``hypernets evaluate --archs N`` scores, all at step 0 on the embedded MNIST.

    python recipes/bench/bench_readme_vit.py
"""

from __future__ import annotations

import argparse
from statistics import mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernet", default="vit-mnist", help="shipped name or checkpoint (default: %(default)s)")
    parser.add_argument("--heldout", type=int, default=8, help="held-out ViTs in the mean (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
    args = parser.parse_args()

    import torch

    from hypernets import LoGAH
    from hypernets.evaluate import initialize
    from hypernets.train import task_for
    from hypernets.zoo import ViTArch, get_family

    torch.set_num_threads(args.threads)
    hnet = LoGAH.from_pretrained(args.hypernet).eval()
    task = task_for("vit")
    snippet = ViTArch(depth=6, embed_dim=128, num_heads=4, mlp_ratio=4.0, patch_size=14, pool="avg")
    model = snippet.build()  # exactly as the README: built on the CPU, then filled in place
    hnet.predict_(model)
    print(f"README snippet ({snippet.name}), {args.hypernet}, step 0: {task.score(model.eval()):.1f}%")

    archs = get_family("vit").heldout_archs(args.heldout)
    scores = {a.name: task.score(initialize(a, hnet, seed=0).eval()) for a in archs}
    for name, score in scores.items():
        print(f"  {name}: {score:.1f}%")
    values = list(scores.values())
    print(f"mean over {len(archs)} held-out ViTs: {mean(values):.1f}% (from {min(values):.1f}% to {max(values):.1f}%)")


if __name__ == "__main__":
    main()
