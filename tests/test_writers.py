"""Predictions streamed to disk: the same values as predict(), files the target's own library loads, nothing
left behind on failure."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from hypernets import LoGAH, load_predicted, save_prediction
from hypernets.writers import TIED_KEY

SMALL = dict(hidden=32, layers=1, heads=4, rank=4, max_ck=64)


@pytest.fixture(scope="module")
def hnet() -> LoGAH:
    torch.manual_seed(0)
    return LoGAH(**SMALL).eval()


def _gpt2(device: str = "cpu") -> GPT2LMHeadModel:
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    with torch.device(device):
        return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_streamed_file_holds_exactly_what_predict_returns(hnet, tmp_path, dtype, monkeypatch):
    monkeypatch.setattr("hypernets.writers.PART_VALUES", 5000)  # many parts, and tensors larger than a part
    out = tmp_path / "gpt2.safetensors"
    written = save_prediction(hnet, _gpt2("meta"), out, dtype=dtype)
    expected = hnet.predict(_gpt2("meta"), dtype=dtype)
    stored = load_file(out)
    assert stored.keys() == expected.keys()  # tied lm_head stored once, as predict gives it
    for name, value in expected.items():  # parts batch the decoder heads differently: equal up to rounding
        assert stored[name].dtype == dtype, name
        torch.testing.assert_close(stored[name], value, msg=name)
    assert written.files == (out,) and written.tensors == len(expected)
    assert written.bytes == sum(v.numel() * v.element_size() for v in expected.values())
    header_bytes = int.from_bytes(out.read_bytes()[:8], "little")
    assert header_bytes % 8 == 0 and out.stat().st_size == 8 + header_bytes + written.bytes
    with safe_open(out, framework="pt") as handle:
        assert json.loads(handle.metadata()[TIED_KEY]) == {"lm_head.weight": "transformer.wte.weight"}
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2.safetensors"]


def test_load_predicted_restores_tied_weights_strictly_on_real_and_meta_models(hnet, tmp_path):
    out = tmp_path / "gpt2.safetensors"
    save_prediction(hnet, _gpt2("meta"), out)
    real = load_predicted(_gpt2(), out)
    meta = load_predicted(_gpt2("meta"), out)
    for model in (real, meta):
        assert model.lm_head.weight is model.transformer.wte.weight
        assert not any(p.is_meta for p in model.parameters())
    x = torch.randint(0, 100, (1, 8))
    torch.testing.assert_close(real(x).logits, meta(x).logits)
    with pytest.raises(RuntimeError, match=r"lm_head\.weight"):  # what the tied metadata is for
        _gpt2().load_state_dict(load_file(out), strict=True)


def test_a_hugging_face_directory_loads_with_from_pretrained_and_no_missing_keys(hnet, tmp_path):
    out = tmp_path / "gpt2"
    save_prediction(hnet, _gpt2("meta"), out, format="hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected = hnet.predict(_gpt2("meta"))
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=0, atol=0)


def test_a_large_model_is_sharded_with_an_index_as_save_pretrained_shards(hnet, tmp_path):
    out = tmp_path / "gpt2"
    save_prediction(hnet, _gpt2("meta"), out, format="hf", max_shard_size=40_000)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_a_timm_model_loads_the_file_with_timms_own_pretrained_loader(hnet, tmp_path):
    options = dict(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=5)
    out = tmp_path / "vit.safetensors"
    save_prediction(hnet, timm.create_model("vit_tiny_patch16_224", pretrained=False, **options), out)
    overlay = dict(file=str(out), num_classes=5)  # else timm drops a head it takes for ImageNet's
    model = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **options)
    stored = load_file(out)
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), stored[name]), name


def test_batch_norm_statistics_are_stored_so_a_cnn_loads_strictly(hnet, tmp_path):
    out = tmp_path / "resnet.safetensors"
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    save_prediction(hnet, model.to("meta"), out, inputs=(1, 3, 32, 32))
    state = load_file(out)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    model.load_state_dict(state, strict=True)
    bn = model.bn1
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var)) and bn.running_mean.abs().sum() == 0


def test_bad_requests_raise_and_leave_nothing(hnet, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(ValueError, match="format"):
        save_prediction(hnet, _gpt2("meta"), out, format="onnx")
    with pytest.raises(ValueError, match="needs a Hugging Face model"):
        save_prediction(hnet, torch.nn.Sequential(torch.nn.Linear(4, 4)), out, inputs=(1, 4), format="hf")
    broken = LoGAH(**SMALL).eval()
    with torch.no_grad():
        broken.vector_decoder.head[2].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_prediction(broken, _gpt2("meta"), out)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_stops_the_decoding_thread_and_leaves_nothing(hnet, tmp_path, monkeypatch):
    import threading

    import hypernets.writers as writers

    real, calls = writers._write_tensor, []

    def failing(file, tensor):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(file, tensor)

    monkeypatch.setattr(writers, "PART_VALUES", 5000)
    monkeypatch.setattr(writers, "_write_tensor", failing)
    with pytest.raises(OSError, match="No space left"):
        save_prediction(hnet, _gpt2("meta"), tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []
    assert not any(t.name == "hypernets-decode" for t in threading.enumerate())
