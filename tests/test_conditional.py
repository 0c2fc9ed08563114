"""hypernetize: selection, exact shapes, gradients, from_existing, vmap over conditions, checkpoints, training."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torchvision
from torch import nn

from hypernets.checkpoint import CheckpointError
from hypernets.conditional import Hypernetized, hypernetize
from hypernets.conditional.bodies import ChunkedBody
from hypernets.conditional.label_smoothing import expected_calibration_error

pytestmark = pytest.mark.usefixtures("one_thread")


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.GroupNorm(2, 6),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 3),
    )


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_gradient_reaches_the_hypernetwork_and_not_the_frozen_parameters() -> None:
    model = hypernetize(small_cnn(), params=["0.*", "5.weight"])
    remaining = dict(model.module.named_parameters())
    assert sorted(remaining) == ["2.bias", "2.weight", "3.bias", "3.weight", "5.bias"]  # no longer leaves of it
    model.module.requires_grad_(False)
    model(images(), condition=0.4).square().mean().backward()
    hypernet = model.hypernet_parameters()
    assert hypernet and all(p.grad is not None and p.grad.abs().sum() > 0 for p in hypernet)
    assert all(p.grad is None for p in remaining.values())


def test_unfrozen_remaining_parameters_train_as_usual() -> None:
    model = hypernetize(small_cnn(), params="0.weight")
    model(images(), condition=0.4).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.module.parameters())


@pytest.mark.parametrize("body", ["mlp", "chunked"])
def test_predicted_names_and_shapes_match_the_module_exactly(body: str) -> None:
    expected = {name: p.shape for name, p in small_cnn().named_parameters()}
    model = hypernetize(small_cnn(), body=body, chunk_size=16)
    single = model.predict(0.25)
    assert list(single) == list(expected)
    assert {name: value.shape for name, value in single.items()} == expected
    batch = model.predict(torch.tensor([0.0, 0.5, 1.0]))
    assert {name: value.shape for name, value in batch.items()} == {n: (3, *s) for n, s in expected.items()}
    weights = hypernetize(small_cnn(), params=["*.weight"]).predict(0.5)
    assert list(weights) == ["0.weight", "2.weight", "3.weight", "5.weight"]


def test_hypernetwork_sizes_worked_by_hand() -> None:
    """small_cnn has 439 values in 8 tensors; a 2-layer, 64-wide MLP body. Under MIP theta0 is the offset of
    every tensor, so the heads have no bias; plain, the heads' biases are the only offsets."""
    values, tensors, trunk = 439, 8, 64 * 64 + 64
    mip = hypernetize(small_cnn(), body="mlp")
    assert sum(p.numel() for p in mip.hypernet_parameters()) == (2 * 64 + 64 + trunk) + 64 * values + tensors + values
    plain = hypernetize(small_cnn(), body="mlp", mip=False)
    assert sum(p.numel() for p in plain.hypernet_parameters()) == (1 * 64 + 64 + trunk) + 65 * values + tensors


def test_from_existing_with_zero_output_reproduces_the_module_bit_exactly() -> None:
    original = small_cnn(seed=3)
    model = hypernetize(copy.deepcopy(original), from_existing=True)
    with torch.no_grad():
        model.gain.zero_()
    x = images()
    assert torch.equal(model(x, condition=0.9), original(x))
    fresh = hypernetize(copy.deepcopy(original))  # a fresh theta0 is a different network
    with torch.no_grad():
        fresh.gain.zero_()
    assert not torch.allclose(fresh(x, condition=0.9), original(x))


def test_patterns_that_match_nothing_raise_naming_them() -> None:
    with pytest.raises(ValueError, match=r"'encoder\.\*\.weight', 'head\.bias'") as error:
        hypernetize(small_cnn(), params=["0.weight", "encoder.*.weight", "head.bias"])
    assert "'0.weight'" not in str(error.value)


def test_conditions_of_the_wrong_shape_range_or_type_raise() -> None:
    model = hypernetize(small_cnn())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(images(), condition=1.5)
    with pytest.raises(ValueError, match="shape"):
        model(images(), condition=torch.rand(2, 2))
    with pytest.raises(ValueError, match="argument 0 has shape"):
        model(images(4), condition=torch.rand(3))
    with pytest.raises(ValueError, match="integer ids"):
        hypernetize(small_cnn(), condition="task:3")(images(), condition=1.0)
    with pytest.raises(ValueError, match="from_existing"):
        hypernetize(small_cnn(), mip=False, from_existing=True)


def test_task_embeddings_are_the_table_each_task_id_reads() -> None:
    model = hypernetize(small_cnn(), params=["0.weight"], condition="task:3", embedding_dim=4)
    table = model.task_embeddings
    assert table.shape == (3, 4)
    with torch.no_grad():
        table[1] += 1.0  # only task 1's prediction may change
    after = {t: model.predict(t)["0.weight"] for t in range(3)}
    with torch.no_grad():
        table[1] -= 1.0
    assert torch.equal(after[0], model.predict(0)["0.weight"])
    assert torch.equal(after[2], model.predict(2)["0.weight"])
    assert not torch.equal(after[1], model.predict(1)["0.weight"])
    with pytest.raises(ValueError, match="no task embeddings"):
        _ = hypernetize(small_cnn(), condition="scalar").task_embeddings


@pytest.mark.parametrize(
    ("condition", "conditions", "options"),
    [
        ("scalar", torch.tensor([0.0, 0.3, 1.0]), {}),
        ("scalar:2", torch.tensor([[0.1, 0.9], [0.5, 0.5], [1.0, 0.0]]), {"body": "chunked", "chunk_size": 16}),
        ("task:3", torch.tensor([2, 0, 1]), {"mip": False}),
    ],
)
def test_a_batch_of_conditions_equals_a_loop_over_single_ones(condition, conditions, options) -> None:
    model = hypernetize(small_cnn(), condition=condition, **options)
    x = images(3)
    batched = model(x, condition=conditions)
    loop = torch.cat([model(x[i : i + 1], condition=c) for i, c in enumerate(conditions)])
    assert torch.allclose(batched, loop, atol=1e-6)
    params = model.hypernet_parameters()
    batched_grads = torch.autograd.grad(batched.square().sum(), params)
    loop_grads = torch.autograd.grad(loop.square().sum(), params)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(batched_grads, loop_grads, strict=True))


def test_tied_parameters_are_predicted_once_and_stay_tied() -> None:
    torch.manual_seed(0)
    embed, head = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
    head.weight = embed.weight
    net = nn.Sequential(embed, head)
    model = hypernetize(net, condition="task:2")
    assert list(model.predict(1)) == ["0.weight"]
    tokens = torch.tensor([[0, 3]])
    expected = model.predict(1)["0.weight"][tokens] @ model.predict(1)["0.weight"].T
    assert torch.allclose(model(tokens, condition=1), expected)


def test_every_trunk_unit_passes_a_gradient_to_the_head_at_init() -> None:
    """The trunk is leaky: with ReLU, units off for every condition at init (a fifth of them in the benchmark)
    leave all-zero head columns, zeros in Adam's second moments that made CPU ``sqrt`` 3x slower
    (docs/conditional.md). With ReLU this fails here."""
    model = hypernetize(small_cnn(), body="mlp", hidden=64)
    model(images(), condition=0.0).square().mean().backward()
    assert model.body.head.weight.grad.ne(0).any(dim=0).all()


def test_save_and_load_round_trip_is_bit_exact(tmp_path) -> None:
    model = hypernetize(small_cnn(), params=["0.*", "5.*"], condition="task:4", body="chunked", chunk_size=32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # neither a fresh init nor the module's own values
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kind"] == "hypernets.Hypernetized" and config["params"] == ["0.*", "5.*"]
    loaded = Hypernetized.from_pretrained(tmp_path, small_cnn(seed=7))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    x = images()
    assert torch.equal(loaded(x, condition=torch.tensor([3, 0, 1, 2])), model(x, condition=torch.tensor([3, 0, 1, 2])))
    wider = nn.Sequential(*small_cnn()[:-1], nn.Linear(54, 4))
    with pytest.raises(CheckpointError, match=r"5\.weight: \[3, 54\] in the checkpoint, \[4, 54\] in the module"):
        Hypernetized.from_pretrained(tmp_path, wider)


def test_training_on_a_condition_dependent_regression_lowers_the_loss() -> None:
    """y = sin(3x + pi c): no single network fits every c, the hypernetized one must use the condition."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    model = hypernetize(net)
    x = torch.linspace(-1, 1, 64)[:, None]
    grid = torch.linspace(0, 1, 9)

    def loss_over_grid() -> float:
        with torch.no_grad():
            return sum((model(x, condition=c) - torch.sin(3 * x + math.pi * c)).square().mean() for c in grid) / 9

    before = loss_over_grid()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        c = torch.rand(len(x))  # one condition per example: trains through vmap
        loss = (model(x, condition=c) - torch.sin(3 * x + math.pi * c[:, None])).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = loss_over_grid()
    unconditioned = torch.stack([torch.sin(3 * x + math.pi * c) for c in grid]).var(0).mean()  # best c-blind fit
    assert after < 0.1 * before and after < 0.2 * unconditioned


def test_resnet18_gets_a_chunked_hypernetwork_a_fraction_of_its_size() -> None:
    """hyperlight's default MLP hypernetwork for resnet18 has 1.44 B parameters; ours picks the chunked body."""
    resnet = torchvision.models.resnet18(num_classes=10)
    target = sum(p.numel() for p in resnet.parameters())
    model = hypernetize(resnet, from_existing=True)
    body = sum(p.numel() for p in model.body.parameters())
    assert model.config.body == "chunked"
    assert body < 0.05 * target, f"body of {body:,} parameters for a {target:,}-parameter target"
    assert model.theta0.numel() == target


@pytest.mark.parametrize(
    ("sizes", "owners", "offsets"),
    [([5], [0, 0, 1, 1, 2], [0, 1, 0, 1, 0]), ([3, 2], [0, 0, 1, 2, 2], [0, 1, 0, 0, 1])],
)
def test_chunked_body_cuts_chunks_of_one_flat_vector_or_per_tensor(sizes, owners, offsets) -> None:
    """With no trunk the head reads ``[x, c_k]`` as they are (von Oswald et al.). Chunks of 2: one size of 5 is
    3 chunks cut to 5 values (the continual hypernetworks' chunking); sizes 3 and 2 are 2 + 1 chunks, tensor 0
    taking chunk 0 and the first value of chunk 1 (hypernetize's). Value ``j`` is ``chunks[owners[j]][offsets[j]]``."""
    torch.manual_seed(0)
    body = ChunkedBody(2, sizes, (), chunk_size=2, chunk_dim=1, make_head=nn.Linear)
    x = torch.randn(3, 2)
    chunks = [body.head(torch.cat([x, c.expand(3, 1)], -1)) for c in body.chunk_embeddings]
    expected = torch.stack([chunks[k][:, i] for k, i in zip(owners, offsets, strict=True)], 1)
    assert len(body.chunk_embeddings) == len(set(owners)) and torch.equal(body(x), expected)


def test_expected_calibration_error_on_a_hand_worked_case() -> None:
    # four predictions at 90% confidence, three right: one bin, |0.75 - 0.9| = 0.15; two at 60%, both right: 0.4
    probabilities = torch.tensor([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx((4 * 0.15 + 2 * 0.4) / 6)
