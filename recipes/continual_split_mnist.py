"""Split-MNIST (5 two-digit tasks, task identity given at test time) with a task-conditioned hypernetwork.

    python recipes/continual_split_mnist.py --out runs/split
    python recipes/continual_split_mnist.py --hypernet logah --mip --residual --out runs/split_logah
    python recipes/continual_split_mnist.py --method finetune --out runs/split_finetune

Writes ``metrics.jsonl`` and the accuracy-matrix heat map ``accuracy.png`` to ``--out``.
"""

from hypernets.continual.experiment import Experiment, main

if __name__ == "__main__":
    main(Experiment(benchmark="split", beta=0.01, steps=500), __doc__)
