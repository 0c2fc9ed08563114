"""Draw the pictures of docs/graphs.md from real converted models: ``python recipes/draw_graphs.py``.

Drawing depends only on graph structure, never on parameter values, so the pictures are reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hypernets.graph import to_neuron_graph, to_op_graph
from hypernets.graph.draw import draw_neuron_graph, draw_op_graph
from hypernets.models import DEFAULT_SPEC, build_model, example_input_shape

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
RESNET_SPEC = "zoo:cifar_resnet?depth=8&width=4&num_classes=4"  # stem, one residual block per stage, 4 classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="folder the three PNGs go to (default: %(default)s)")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    vit = build_model(DEFAULT_SPEC, device="meta")
    draw_op_graph(to_op_graph(vit), out / "vit_op_graph.png", title="op graph of a 2-block ViT (hypernets graph)")
    resnet = build_model(RESNET_SPEC)
    draw_op_graph(
        to_op_graph(resnet, example_input_shape(RESNET_SPEC, resnet)),
        out / "resnet8_op_graph.png",
        title="op graph of a ResNet-8 (3 residual blocks)",
    )
    draw_neuron_graph(
        to_neuron_graph(resnet, example_input_shape(RESNET_SPEC, resnet)),
        out / "resnet8_neuron_graph.png",
        title="neuron graph of a ResNet-8, 4 channels wide",
    )
    print(f"wrote {out}/vit_op_graph.png, resnet8_op_graph.png and resnet8_neuron_graph.png")


if __name__ == "__main__":
    main()
