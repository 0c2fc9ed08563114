"""The ``metaprune`` command: only its help for now; the pruning commands arrive with the metaprune issue."""

import argparse
from collections.abc import Sequence

DESCRIPTION = (
    "Prune networks with a GNN metanetwork that rewrites their neuron graph (see 'hypernets graph --view neuron'). "
    "The pruning commands arrive with the metaprune issue; until then this command only prints this help."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaprune", description=DESCRIPTION)
    parser.parse_args(argv)
    parser.print_help()
    return 0
