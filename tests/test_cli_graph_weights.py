"""``hypernets graph --weights``: the neuron graph of the user's trained model, not of a random init."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import hypernets.graph
from hypernets.cli import main
from hypernets.models import build_model

SPEC = "zoo:small_cnn"


@pytest.fixture
def trained(tmp_path):
    """A weights file whose values no random init gives: every tensor filled with its own index + 0.5."""
    model = build_model(SPEC)
    state = {name: torch.full_like(value, i + 0.5) for i, (name, value) in enumerate(model.state_dict().items())}
    path = tmp_path / "trained.safetensors"
    save_file(state, path)
    return path, state


@pytest.fixture
def graphed(monkeypatch):
    """The models the command turns into neuron graphs."""
    seen = []
    convert = hypernets.graph.to_neuron_graph

    def spy(model, *args, **kwargs):
        seen.append(model)
        return convert(model, *args, **kwargs)

    monkeypatch.setattr(hypernets.graph, "to_neuron_graph", spy)
    return seen


def test_the_neuron_view_carries_the_trained_weights(trained, graphed, capsys):
    path, state = trained
    assert main(["graph", SPEC, "--view", "neuron", "--weights", str(path)]) == 0
    assert f"weights: {path}, loaded strictly" in capsys.readouterr().out
    (model,) = graphed
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_without_weights_the_neuron_view_is_a_random_init(trained, graphed):
    _, state = trained
    assert main(["graph", SPEC, "--view", "neuron"]) == 0
    (model,) = graphed
    name, value = next(iter(model.state_dict().items()))
    assert not torch.equal(value, state[name])


def test_the_op_view_checks_the_weights_fit(trained, capsys):
    path, _ = trained
    assert main(["graph", SPEC, "--weights", str(path)]) == 0
    assert "loaded strictly" in capsys.readouterr().out


@pytest.mark.parametrize("view", ["op", "neuron"])
def test_weights_of_another_model_are_a_usage_error_naming_the_file(tmp_path, capsys, view):
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(2, 3)}, path)
    assert main(["graph", SPEC, "--view", view, "--weights", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err


def test_a_missing_weights_file_is_a_usage_error_naming_the_option(tmp_path, capsys):
    assert main(["graph", SPEC, "--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "--weights" in capsys.readouterr().err
