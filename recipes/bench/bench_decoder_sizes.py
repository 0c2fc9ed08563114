"""Decoder size against the widest tensor it must emit without tiling: LoGAH's low-rank decoder against
GHN-3's tiled one.

To emit a ``w x w`` tensor from one node embedding, a tiled decoder's last layer has ``w * w``
outputs, while a low-rank decoder emits ``A`` and ``B``, ``2 * w * r`` outputs. The counts come from
the decoders LoGAH really builds (``hypernets.nn``), not from a formula, and are printed as a table and
drawn to ``docs/img/decoder_sizes.png``.

    python recipes/bench/bench_decoder_sizes.py --hidden 128 --ranks 16 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from hypernets.nn import LowRankDecoder, TiledDecoder

WIDTHS = (256, 512, 1024, 2048, 4096, 8192)
GPT2_LARGE = 774_030_080
OUT = Path(__file__).resolve().parents[2] / "docs" / "img" / "decoder_sizes.png"


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sizes(hidden: int, rank: int, width: int) -> tuple[int, int]:
    """(low-rank, tiled) decoder parameters for tensors up to ``width`` wide; built on meta, so
    the 8192-wide tiled decoder (8.6 billion parameters at hidden 128) allocates nothing."""
    with torch.device("meta"):
        return count(LowRankDecoder(hidden, rank, width)), count(TiledDecoder(hidden, width))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128, help="node embedding size of the hypernetwork")
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64], help="ranks of the low-rank decoder")
    parser.add_argument("--plot", type=Path, default=OUT, help="PNG to draw")
    args = parser.parse_args()
    table = {w: [sizes(args.hidden, r, w) for r in args.ranks] for w in WIDTHS}
    header = " | ".join(f"LoGAH r={r}" for r in args.ranks)
    print(f"decoder parameters, hidden {args.hidden}, to emit a width x width tensor without tiling\n")
    print(f"| width | {header} | tiled (GHN-3) | tiled / LoGAH r={args.ranks[0]} | tiled / GPT-2 Large |")
    print("|---:|" + "---:|" * (len(args.ranks) + 3))
    for width, row in table.items():
        tiled = row[0][1]
        lowrank = " | ".join(f"{low:,}" for low, _ in row)
        print(f"| {width} | {lowrank} | {tiled:,} | {tiled / row[0][0]:.0f}x | {tiled / GPT2_LARGE:.2f}x |")

    figure, axes = plt.subplots(figsize=(6, 4))
    for i, rank in enumerate(args.ranks):
        axes.plot(WIDTHS, [table[w][i][0] for w in WIDTHS], "o-", label=f"LoGAH low-rank, r={rank}")
    axes.plot(WIDTHS, [table[w][0][1] for w in WIDTHS], "s-", label="tiled (GHN-3), one chunk")
    axes.axhline(GPT2_LARGE, color="grey", linestyle="--", label="GPT-2 Large itself")
    axes.set(xscale="log", yscale="log", xlabel="widest tensor emitted without tiling", ylabel="decoder parameters")
    axes.set_xticks(WIDTHS, [str(w) for w in WIDTHS])
    axes.set_title(f"decoder size, hidden {args.hidden}")
    axes.legend()
    figure.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=120)
    print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
