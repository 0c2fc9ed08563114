"""Draw the LoGAH schematic of docs/hypernets.md: ``python recipes/draw_logah.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "logah.png"
BOXES = {  # name: (x, y, text, colour)
    "model": (0.0, 2.0, "target model\n(timm ViT, GPT-2, CNN)\non the meta device", "#dddddd"),
    "graph": (2.2, 2.0, "op graph\nop kind + shape\nper node", "#c6dbef"),
    "encoder": (4.4, 2.0, "graph transformer\nattention biased by\nshortest-path distance", "#9ecae1"),
    "a": (6.8, 3.2, "A head\nblocks of max_ck x r", "#fdd0a2"),
    "b": (6.8, 2.0, "B head\nblocks of max_ck x r", "#fdd0a2"),
    "v": (6.8, 0.8, "vector head\nbiases, norm weights", "#fdae6b"),
    "decode": (9.2, 2.0, "one fused decode\nW = theta0 + g s A B^T\nv = theta0 + s v", "#a1d99b"),
    "params": (11.4, 2.0, "every parameter\nexact shapes,\nin place", "#dddddd"),
}
ARROWS = [("model", "graph"), ("graph", "encoder"), ("encoder", "a"), ("encoder", "b"), ("encoder", "v")]
ARROWS += [("a", "decode"), ("b", "decode"), ("v", "decode"), ("decode", "params")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT, help="the PNG to write (default: %(default)s)")
    out = parser.parse_args().out
    figure, axes = plt.subplots(figsize=(12, 4))
    for x, y, text, colour in BOXES.values():
        axes.text(x, y, text, ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc=colour, ec="k"))
    for start, end in ARROWS:
        (x0, y0, *_), (x1, y1, *_) = BOXES[start], BOXES[end]
        axes.annotate("", (x1 - 0.95, y1), (x0 + 0.95, y0), arrowprops=dict(arrowstyle="->", lw=1.2))
    mip = "MIP: theta0 = seeded init x learned gain;\nthe decoded part starts at 0.1 of the init scale"
    axes.text(10.3, 0.8, mip, ha="center", fontsize=9)
    axes.set(xlim=(-1.2, 12.6), ylim=(0.2, 4.0))
    axes.axis("off")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
