"""hypernetize under the PyTorch machinery the issue promises: torch.compile and DistributedDataParallel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hypernets.conditional import Hypernetized, hypernetize

WORLD_SIZE = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def gradients(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])  # graph capture and autograd; then code generation
def test_torch_compile_matches_eager_for_one_condition_and_a_batch_of_them(backend: str) -> None:
    torch.manual_seed(0)
    model = hypernetize(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)), params="0.*")
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 3)
    for condition in (torch.tensor(0.3), torch.tensor([0.0, 0.2, 0.7, 1.0])):
        eager, graph = model(x, condition=condition), compiled(x, condition=condition)
        assert torch.allclose(graph, eager, atol=1e-6)
        expected, found = gradients(model, eager.square().sum()), gradients(model, graph.square().sum())
        assert all(torch.allclose(found[name], grad, atol=1e-6) for name, grad in expected.items())


def ddp_model() -> Hypernetized:
    """A CNN with some parameters predicted and some kept, so DDP reduces both kinds."""
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.Flatten(), nn.Linear(54, 3)
    )
    return hypernetize(cnn, params=["0.*", "4.weight"])


def ddp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight images and one condition per image (the model runs them under torch.vmap)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 8, 8, generator=generator), torch.rand(8, generator=generator)


def ddp_rank(rank: int, init_file: str, out: str) -> None:
    """One rank: its half of the batch through DDP, then its (all-reduced) gradients to ``rank{rank}``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        model = DistributedDataParallel(ddp_model())
        images, conditions = ddp_batch()
        mine = slice(rank * len(images) // WORLD_SIZE, (rank + 1) * len(images) // WORLD_SIZE)
        model(images[mine], condition=conditions[mine]).square().mean().backward()
        save_file({name: p.grad for name, p in model.module.named_parameters()}, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.start_processes(ddp_rank, (str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn")
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(WORLD_SIZE)]
    model = ddp_model()
    images, conditions = ddp_batch()
    expected = gradients(model, model(images, condition=conditions).square().mean())
    assert set(ranks[0]) == set(expected) and any(name.startswith("module.") for name in expected)
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in expected)  # all-reduced: identical
    assert all(torch.allclose(ranks[0][name], grad, atol=1e-6) for name, grad in expected.items())
