"""The RNN hypernetwork (Chandra et al. 2022): every parameter of the target per task, chunks that depend on
the chunks before them (and only on those), its size worked by hand, the output regularizer holding an
earlier task, and the grid command running it."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from continual_helpers import check_outputs_every_parameter_per_task

from hypernets.cli import main
from hypernets.continual.hypernet import ChunkedHypernet, target_cnn, target_mlp
from hypernets.continual.learners import HypernetLearner
from hypernets.continual.rnn import RNNHypernet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(embedding_dim=4, chunk_embedding_dim=3, chunk_size=64, hidden=(6,))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("build", [lambda: target_mlp(3, hidden=(8,), inputs=784), lambda: target_cnn(3, (2, 4))])
def test_outputs_are_every_parameter_of_the_target_per_task(build) -> None:
    torch.manual_seed(0)
    target = build()
    check_outputs_every_parameter_per_task(target, lambda target: RNNHypernet(target, num_tasks=3, **TINY))


@pytest.mark.parametrize(
    ("build", "later_chunks_move"),
    [
        (RNNHypernet, True),
        (partial(RNNHypernet, chained=False), False),
        (ChunkedHypernet, False),
    ],
)
def test_a_change_to_chunk_k_reaches_the_chunks_after_it_and_none_before(build, later_chunks_move: bool) -> None:
    """Perturbing chunk ``k``'s input changes chunks ``k, k+1, ...`` of the RNN's output; without the chained
    state, and in the chunked MLP, chunk ``k + 1`` does not notice (each chunk is made on its own)."""
    torch.manual_seed(0)
    hypernet = build(target_mlp(3, hidden=(8,), inputs=784), num_tasks=2, **TINY)
    k, size = 5, TINY["chunk_size"]
    with torch.no_grad():
        before = hypernet(torch.tensor([1]))[0]
        hypernet.chunk_embeddings[k] += 1.0
        diff = (hypernet(torch.tensor([1]))[0] - before).abs()
    moved = [bool(diff[i * size : (i + 1) * size].max() > 0) for i in range(k + 3)]
    assert moved == [False] * k + [True] + [later_chunks_move] * 2


def test_unchained_it_is_the_same_lstm_run_on_each_chunk_alone() -> None:
    """Chunk ``k`` of the unchained RNN equals chunk 0 of the chained one fed chunk ``k``'s input first."""
    torch.manual_seed(0)
    chained = RNNHypernet(target_mlp(3, hidden=(8,), inputs=784), num_tasks=2, **TINY)
    unchained = RNNHypernet(target_mlp(3, hidden=(8,), inputs=784), num_tasks=2, **TINY, chained=False)
    unchained.load_state_dict(chained.state_dict())
    k, size = 4, TINY["chunk_size"]
    with torch.no_grad():
        expected = unchained(torch.tensor([1]))[0, k * size : (k + 1) * size]
        chained.chunk_embeddings[0] = chained.chunk_embeddings[k]
        assert torch.allclose(chained(torch.tensor([1]))[0, :size], expected, atol=1e-6)


def test_parameter_count_by_hand() -> None:
    """A 4-3-2 target has 4*3+3 + 3*2+2 = 23 parameters, 3 chunks of 10. Two task embeddings
    of 2 (4), three chunk embeddings of 3 (9), an LSTM 5 -> 5 (weights 4*5*5 twice, biases 4*5 twice: 240)
    and a head 5 -> 10 (60): 313. The chunked MLP with the same sizes has a 5 -> 5 layer (30) instead: 103."""
    target = target_mlp(2, hidden=(3,), inputs=4)
    sizes = dict(embedding_dim=2, chunk_embedding_dim=3, chunk_size=10, hidden=(5,))
    assert count(target) == 23
    assert count(RNNHypernet(target, num_tasks=2, **sizes)) == 313
    assert count(ChunkedHypernet(target, num_tasks=2, **sizes)) == 103


def test_at_its_defaults_it_has_no_more_weights_than_the_chunked_mlp() -> None:
    """The benchmark's 784-100-100-10 target, 10 tasks: LSTM 64 -> 90 (4*90*(64+90) + 8*90 = 56,160), head
    90 -> 4096 (372,736), 22 chunk and 10 task embeddings of 32 (1,024): 429,920. The chunked MLP
    64-100-100-4096: 6,500 + 10,100 + 413,696 + 1,024 = 431,320."""
    target = target_mlp(10)
    assert count(RNNHypernet(target, num_tasks=10)) == 429_920
    assert count(ChunkedHypernet(target, num_tasks=10)) == 431_320


def drift_of_task_zero(beta: float) -> float:
    """``|h(e_0) - theta*_0|^2`` after 10 steps on task 1 of a two-task run, from the same start."""
    torch.manual_seed(0)
    target = target_mlp(2, hidden=(8,), inputs=784)
    hypernet = RNNHypernet(target, num_tasks=2, **TINY)
    learner = HypernetLearner(hypernet, target, [(0, 1), (2, 3)], beta=beta)
    data = torch.Generator().manual_seed(1)
    learner.begin_task(0)
    for _ in range(5):
        learner.train_step(0, torch.rand(8, 784, generator=data), torch.randint(2, (8,), generator=data))
    learner.end_task(0, None)
    learner.begin_task(1)
    for _ in range(10):
        learner.train_step(1, torch.rand(8, 784, generator=data), torch.randint(2, (8,), generator=data))
    with torch.no_grad():
        return (hypernet(torch.tensor([0])) - learner.regularizer.targets).pow(2).sum().item()


def test_the_output_regularizer_holds_an_earlier_task() -> None:
    free, held = drift_of_task_zero(0.0), drift_of_task_zero(10.0)
    assert free > 0 and held < free / 2


def test_the_grid_command_runs_it(capsys) -> None:
    argv = ["continual", "--method", "hypernet-rnn,hypernet", "--benchmark", "split", "--seeds", "0"]
    assert main([*argv, "--steps", "3", "--num-tasks", "2"]) == 0
    table = capsys.readouterr().out
    assert "| split | task | hypernet-rnn | 3 | 1 |" in table and "| split | task | hypernet | 3 | 1 |" in table
