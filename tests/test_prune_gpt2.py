"""GPT-2's MLPs pruned through Torch-Pruning's customized-pruner extension point (``metaprune.conv1d``): the shapes,
the pruned model against the dense one with the removed hidden units zeroed, the reload, and the CI command."""

from __future__ import annotations

import json

import pytest
import torch

from hypernets.models import build_model
from metaprune.cli import main
from metaprune.prune import prune
from metaprune.store import load_pruned, save_pruned

# GPT-2's 50,257-token head would be 97% of this width-64 model's FLOPs; byte-level text needs 256 tokens.
SPEC = "gpt2:n_layer=2,n_embd=64,n_head=4,vocab_size=256"
HIDDEN = 256  # 4 * n_embd


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    with torch.no_grad():  # unequal columns, so that the ranking is not decided by ties
        for block in model.transformer.h:
            block.mlp.c_fc.weight.mul_(torch.linspace(0.2, 2, HIDDEN)[torch.randperm(HIDDEN)])
    return model


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def pruned(dense, tokens):
    return prune(dense, tokens[:1], speedup=1.3, counter="flops").model.eval()


def test_only_the_mlp_hidden_units_are_removed(dense, pruned) -> None:
    for block in pruned.transformer.h:
        fc, proj = block.mlp.c_fc, block.mlp.c_proj
        assert fc.nf == proj.nx < HIDDEN
        assert fc.weight.shape == (64, fc.nf) and fc.bias.shape == (fc.nf,) and proj.weight.shape == (fc.nf, 64)
        assert block.attn.c_attn.weight.shape == (64, 192) and block.attn.c_proj.weight.shape == (64, 64)
    assert pruned.transformer.wte.weight.shape == dense.transformer.wte.weight.shape
    assert pruned.lm_head.weight is pruned.transformer.wte.weight  # still tied


def _kept_units(dense_fc, pruned_fc) -> list[int]:
    """Which dense hidden units survived: pruning keeps them in order, so match the columns one by one."""
    kept, start = [], 0
    for column in pruned_fc.weight.T:
        start += next(i for i, c in enumerate(dense_fc.weight.T[start:]) if torch.equal(c, column))
        kept.append(start)
        start += 1
    return kept


def test_the_pruned_model_is_the_dense_one_with_the_weakest_units_zeroed(dense, pruned, tokens) -> None:
    zeroed = build_model(SPEC).eval()
    zeroed.load_state_dict(dense.state_dict())
    blocks = zip(dense.transformer.h, pruned.transformer.h, zeroed.transformer.h, strict=True)
    for dense_block, pruned_block, zeroed_block in blocks:
        fc, proj = dense_block.mlp.c_fc, dense_block.mlp.c_proj
        kept = _kept_units(fc, pruned_block.mlp.c_fc)
        removed = sorted(set(range(HIDDEN)) - set(kept))
        # group_norm by hand: a unit's squared L2 norm over its c_fc column and its c_proj row
        norms = fc.weight.pow(2).sum(0) + proj.weight.pow(2).sum(1)
        assert set(removed) == set(norms.argsort()[: len(removed)].tolist())
        with torch.no_grad():
            zeroed_block.mlp.c_proj.weight[removed] = 0
    with torch.no_grad():
        torch.testing.assert_close(pruned(tokens).logits, zeroed(tokens).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(dense(tokens).logits, zeroed(tokens).logits, atol=1e-3)


def test_the_pruned_gpt2_reloads_from_its_spec(pruned, tokens, tmp_path) -> None:
    save_pruned(pruned, tmp_path, spec=SPEC)
    loaded = load_pruned(SPEC, tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert loaded.transformer.h[0].mlp.c_fc.nf == pruned.transformer.h[0].mlp.c_fc.nf
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, pruned(tokens).logits, atol=0, rtol=0)


def test_the_ci_command_prunes_a_gpt2_on_a_text_file(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(__doc__ * 60)
    out, report_path = tmp_path / "pruned", tmp_path / "report.json"
    options = ["--model", SPEC, "--data", f"text:{corpus}", "--block-size", "32", "--speedup", "1.3"]
    options += ["--max-loss-increase", "5", "--finetune-steps", "3", "--batch-size", "8", "--optimizer", "adamw"]
    options += ["--lr", "1e-3", "--out", str(out), "--report", str(report_path)]
    assert main(["prune", *options]) == 0
    report = json.loads(report_path.read_text())
    assert report["task"] == "causal_lm" and report["speedup"] >= 1.3
    model = load_pruned(None, out)
    assert model.transformer.h[0].mlp.c_fc.nf < HIDDEN
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]
