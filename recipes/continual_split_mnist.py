"""Split-MNIST (5 two-digit tasks) with a task-conditioned hypernetwork or a baseline.

    python recipes/continual_split_mnist.py --out runs/split
    python recipes/continual_split_mnist.py --hypernet logah --mip --residual --out runs/split_logah
    python recipes/continual_split_mnist.py --setting class --out runs/split_class   # entropy task inference
    python recipes/continual_split_mnist.py --method si --setting class --num-tasks 3

``--setting class`` hides the task at test time: the hypernetwork then answers with the network of the
most confident task, single-network baselines with one 10-way head. ``--num-tasks N`` keeps the first N
digit pairs. Prints a line as each task is learned, then the summary; writes ``metrics.jsonl`` and the
accuracy-matrix heat map ``accuracy.png`` to ``--out``. Several methods and seeds: ``hypernets continual``.
"""

from hypernets.continual.experiment import Experiment, main

if __name__ == "__main__":
    main(Experiment(benchmark="split", beta=0.01, steps=500), __doc__)
