"""Permuted-MNIST-10 (10 pixel permutations of MNIST) with a task-conditioned hypernetwork or a baseline.

    python recipes/continual_permuted_mnist.py --out runs/permuted
    python recipes/continual_permuted_mnist.py --lookahead --out runs/permuted_lookahead
    python recipes/continual_permuted_mnist.py --method ewc --out runs/permuted_ewc
    python recipes/continual_permuted_mnist.py --setting class --out runs/permuted_inferred   # task not given

Prints a line as each task is learned, then the summary; writes ``metrics.jsonl`` and the accuracy-matrix
heat map ``accuracy.png`` to ``--out``. Several methods and seeds at once: ``hypernets continual``.
"""

from hypernets.continual.experiment import Experiment, main

if __name__ == "__main__":
    main(Experiment(benchmark="permuted", beta=0.01, steps=1000), __doc__)
