"""Task-conditioned hypernetworks: a learned embedding per task in, every parameter of a target network out.

Two kinds share one interface, ``hypernet(tasks) -> [len(tasks), num_params]`` flat parameters in the
target's ``named_parameters`` order (:meth:`TaskHypernet.unflatten` gives exact shapes back):

- :class:`ChunkedHypernet` is the chunked MLP of von Oswald et al. (2020): a task embedding and a
  learned chunk embedding go through an MLP that emits one chunk of the flat parameter vector.
- :class:`LoGAHTaskHypernet` is :class:`hypernets.LoGAH` (graph encoder + low-rank decoder) reading
  the target's op graph, with a projection of the task embedding added to every node state the
  encoder returns, so the same graph decodes into a different network per task.

:class:`hypernets.continual.rnn.RNNHypernet` (Chandra et al. 2022) is the chunked one with an LSTM in place
of the MLP, so that each chunk depends on the ones generated before it.

Switches: ``mip`` encodes task embeddings with constant norm (``sqrt(dim)``), so no task gets a louder
input than another; ``residual`` predicts ``theta = theta_0 + h(task)`` around a fixed random init.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from hypernets.conditional.bodies import ChunkedBody
from hypernets.graph import to_op_graph
from hypernets.graph.inputs import Inputs
from hypernets.logah import LoGAH, LoGAHConfig

INITIAL_RESIDUAL_GAIN = 0.1  # with residual outputs, h starts at a tenth of its default scale


def relu_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLUs between them (none after the last)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def target_mlp(num_classes: int, hidden: Sequence[int] = (100, 100), inputs: int = 784) -> nn.Sequential:
    """The target network of the MNIST benchmarks: an MLP ``inputs - hidden... - num_classes``."""
    return relu_mlp([inputs, *hidden, num_classes])


def target_cnn(num_classes: int, channels: Sequence[int] = (16, 32), side: int = 28) -> nn.Sequential:
    """A small CNN target for flat ``[n, side * side]`` images: two 5x5 conv + ReLU + 2x2 max-pool stages."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, side, side))]
    for fan_in, fan_out in pairwise([1, *channels]):
        layers += [nn.Conv2d(fan_in, fan_out, 5), nn.ReLU(), nn.MaxPool2d(2)]
        side = (side - 4) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels[-1] * side * side, num_classes))


class TaskHypernet(nn.Module):
    """Shared bookkeeping: the target's parameter names and shapes, and one embedding per task.

    Embeddings are separate parameters so training task ``t`` can optimize ``t``'s alone and keep the
    earlier ones fixed (their outputs are what the regularizer protects).
    """

    def __init__(self, target: nn.Module, num_tasks: int, embedding_dim: int, mip: bool) -> None:
        super().__init__()
        named = list(target.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.num_params = sum(p.numel() for _, p in named)
        self.mip = mip
        self.embedding_dim = embedding_dim
        self.task_embeddings = nn.ParameterList([nn.Parameter(torch.randn(embedding_dim)) for _ in range(num_tasks)])

    def embed(self, tasks: Tensor) -> Tensor:
        """``[k]`` task ids -> ``[k, dim]`` embeddings, rescaled to norm ``sqrt(dim)`` under MIP."""
        e = torch.stack([self.task_embeddings[int(t)] for t in tasks])
        if self.mip:
            e = e * (math.sqrt(self.embedding_dim) / e.norm(dim=-1, keepdim=True).clamp(min=1e-6))
        return e

    def weights(self) -> list[nn.Parameter]:
        """Every parameter but the task embeddings: what all tasks share."""
        embeddings = {id(p) for p in self.task_embeddings}
        return [p for p in self.parameters() if id(p) not in embeddings]

    def trainable(self, task: int) -> list[nn.Parameter]:
        """What training task ``task`` moves: the shared weights and that task's embedding alone."""
        return [*self.weights(), self.task_embeddings[task]]

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """One flat ``[num_params]`` row -> ``{name: tensor}`` in the target's exact shapes."""
        sizes = [math.prod(s) for s in self.shapes]
        return {n: part.view(s) for n, s, part in zip(self.names, self.shapes, flat.split(sizes), strict=True)}

    def predict(self, task: int) -> dict[str, Tensor]:
        """All parameters of the target for one task."""
        return self.unflatten(self(torch.tensor([task]))[0])


class ChunkedHypernet(TaskHypernet):
    """von Oswald et al.'s chunked hypernetwork: ``MLP([task embedding, chunk embedding]) -> chunk``.

    ``ceil(num_params / chunk_size)`` chunk embeddings are learned and shared by all tasks; the last
    chunk is cut to length. Its size is independent of the target's, set by ``hidden`` and ``chunk_size``.
    ``body`` is :class:`hypernets.conditional.bodies.ChunkedBody` (the one chunked generator of the library) with
    no trunk, chunks over the flat parameter vector, and :meth:`make_head`'s head.
    """

    def __init__(
        self,
        target: nn.Module,
        num_tasks: int,
        embedding_dim: int = 32,
        chunk_embedding_dim: int = 32,
        chunk_size: int = 4096,
        hidden: Sequence[int] = (100, 100),
        mip: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__(target, num_tasks, embedding_dim, mip)
        self.body = ChunkedBody(
            embedding_dim,
            [self.num_params],
            (),
            chunk_size,
            chunk_embedding_dim,
            lambda fan_in, fan_out: self.make_head([fan_in, *hidden, fan_out]),
        )
        self.residual = residual
        if residual:
            theta0 = torch.cat([p.detach().reshape(-1) for p in target.parameters()])
            self.register_buffer("theta0", theta0.clone())
            with torch.no_grad():
                self.body.head[-1].weight.mul_(INITIAL_RESIDUAL_GAIN)
                self.body.head[-1].bias.mul_(INITIAL_RESIDUAL_GAIN)

    def make_head(self, sizes: Sequence[int]) -> nn.Sequential:
        """``[k, chunks, sizes[0]]`` inputs -> ``[k, chunks, sizes[-1]]`` chunks, ending in a linear layer.
        Here an MLP that makes every chunk on its own; :class:`~hypernets.continual.rnn.RNNHypernet` chains them."""
        return relu_mlp(sizes)

    @property
    def chunk_embeddings(self) -> nn.Parameter:
        """The ``[num_chunks, chunk_embedding_dim]`` learned chunk embeddings, shared by all tasks."""
        return self.body.chunk_embeddings

    def forward(self, tasks: Tensor) -> Tensor:
        """``[k]`` task ids -> ``[k, num_params]`` flat target parameters."""
        flat = self.body(self.embed(tasks))
        return flat + self.theta0 if self.residual else flat


class LoGAHTaskHypernet(TaskHypernet):
    """LoGAH conditioned on the task: ``node states += Linear(task embedding)`` before decoding.

    LoGAH is used unmodified, by composition: a forward hook on its encoder adds each graph's task
    projection to that graph's nodes (one copy of the target's op graph per requested task, batched).
    ``residual`` is LoGAH's ``mip`` switch, which gives ``theta = theta_0 + h`` (and MIP shape codes).
    """

    def __init__(
        self,
        target: nn.Module,
        num_tasks: int,
        inputs: Inputs,
        embedding_dim: int = 32,
        mip: bool = True,
        residual: bool = True,
        **logah_options,
    ) -> None:
        super().__init__(target, num_tasks, embedding_dim, mip)
        self.logah = LoGAH(LoGAHConfig(mip=residual, **logah_options))
        self.graph = to_op_graph(target, inputs, max_distance=self.logah.config.max_distance)
        self.project = nn.Linear(embedding_dim, self.logah.config.hidden)

    def forward(self, tasks: Tensor) -> Tensor:
        """``[k]`` task ids -> ``[k, num_params]`` flat target parameters."""
        shift = self.project(self.embed(tasks))

        def add_task(_module: nn.Module, args: tuple, nodes: Tensor) -> Tensor:
            return nodes + shift[args[0].batch]

        handle = self.logah.encoder.register_forward_hook(add_task)
        try:
            predicted = self.logah([self.graph] * len(shift))
        finally:
            handle.remove()
        return torch.stack([torch.cat([p[name].reshape(-1) for name in self.names]) for p in predicted])
