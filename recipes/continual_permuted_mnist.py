"""Permuted-MNIST-10 (10 pixel permutations of MNIST, task identity given) with a task-conditioned hypernetwork.

    python recipes/continual_permuted_mnist.py --out runs/permuted
    python recipes/continual_permuted_mnist.py --lookahead --out runs/permuted_lookahead
    python recipes/continual_permuted_mnist.py --method separate --out runs/permuted_separate

Writes ``metrics.jsonl`` and the accuracy-matrix heat map ``accuracy.png`` to ``--out``.
"""

from hypernets.continual.experiment import Experiment, main

if __name__ == "__main__":
    main(Experiment(benchmark="permuted", beta=0.01, steps=1000), __doc__)
