"""The dependency-preserving RNN hypernetwork of Chandra et al. (WACV 2023, *Continual Learning with
Dependency Preserving Hypernetworks*, arXiv 2209.07712).

A chunked hypernetwork (von Oswald et al. 2020) makes every chunk of the target's flat parameter vector
on its own, so the weights of one layer know nothing of the layers generated before it. Chandra et al.
replace its MLP by a recurrent network that emits the chunks in order: its state after chunk ``k`` is an
input to chunk ``k + 1``, so later layers depend on earlier ones at the same parameter budget.

What was checked: only the paper's abstract was retrievable here (arXiv, Papers with Code and Hugging Face
pages; the full-text copy found returned its introduction only). The abstract fixes the idea above and says
the paper adds "novel regularisation and network growth techniques" for the RNN hypernetwork, without
their details. Built here, the closest faithful version: an LSTM over the chunk sequence, whose input at
step ``k`` is the task embedding and a learned chunk embedding (as the chunked MLP's), and a linear head
from its state to chunk ``k``. It is trained with von Oswald's output regularizer unchanged
(:class:`~hypernets.continual.regularizer.OutputRegularizer`); the paper's own regularizer and its network
growth are not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from hypernets.continual.hypernet import ChunkedHypernet


class LSTMLayer(nn.Module):
    """An LSTM over the chunk axis of ``[k, chunks, features]`` that returns its state at every step.
    ``chained = False`` starts every chunk from the zero state: the same weights, no dependency between chunks."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, batch_first=True)
        self.chained = True

    def forward(self, x: Tensor) -> Tensor:
        if self.chained:
            return self.lstm(x)[0]
        k, chunks, features = x.shape
        return self.lstm(x.reshape(k * chunks, 1, features))[0].reshape(k, chunks, -1)


class RNNHypernet(ChunkedHypernet):
    """:class:`ChunkedHypernet` with a recurrent body: ``LSTM([task embedding, chunk embedding]_k) -> chunk k``.

    ``hidden`` lists the state sizes of stacked LSTM layers (one entry: one layer); a linear head maps the
    last one's state to ``chunk_size`` outputs. Everything else (chunking, MIP, residual outputs, the
    interface) is the chunked hypernetwork's. The default, one layer of 90, is the widest at which it has no
    more weights than the chunked MLP at its defaults for the 784-100-100-10 target (429,920 against 431,320).
    ``chained=False`` is the ablation: the same network with the state reset before every chunk.
    """

    def __init__(
        self,
        target: nn.Module,
        num_tasks: int,
        embedding_dim: int = 32,
        chunk_embedding_dim: int = 32,
        chunk_size: int = 4096,
        hidden: Sequence[int] = (90,),
        mip: bool = False,
        residual: bool = False,
        chained: bool = True,
    ) -> None:
        super().__init__(target, num_tasks, embedding_dim, chunk_embedding_dim, chunk_size, hidden, mip, residual)
        for layer in self.body.head[:-1]:
            layer.chained = chained

    def make_head(self, sizes: Sequence[int]) -> nn.Sequential:
        """LSTM layers for ``sizes[:-1]``, then the linear head to ``sizes[-1]``."""
        layers = [LSTMLayer(fan_in, fan_out) for fan_in, fan_out in pairwise(sizes[:-1])]
        return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))
