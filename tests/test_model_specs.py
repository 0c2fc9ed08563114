"""Model specs beyond the built-in families: ``hf:DIR``, ``PKG.MODULE:CALLABLE`` factories, and ``weights=``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hypernets.models import SPEC_FORMS, ModelSpecError, build_model, example_input_shape, spec_family

ZOO_MLP = "zoo:mlp"


def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    return LlamaForCausalLM(config)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(autouse=True)
def forget_user_modules():
    """Each test writes its own ``usernet``/``pkg``: drop them from the import cache afterwards."""
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in ("usernet", "pkg", "broken", "badsyntax")]:
        del sys.modules[name]


# --- spec_family and help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "family"),
    [
        ("timm:resnet18", "timm"),
        ("gpt2:small", "gpt2"),
        ("torchvision:resnet18", "torchvision"),
        ("zoo:mlp", "zoo"),
        ("hf:/some/dir", "hf"),
        ("usernet:make", "factory"),
        ("pkg.models:Net.create?width=8", "factory"),
    ],
)
def test_spec_family(spec, family):
    assert spec_family(spec) == family


@pytest.mark.parametrize("spec", ["resnet18", ":make", "my-pkg:make", "./x.py:make"])
def test_spec_family_rejects_what_no_family_or_module_path_names(spec):
    with pytest.raises(ModelSpecError, match="unknown model spec"):
        spec_family(spec)


def test_spec_forms_list_the_new_forms_with_examples():
    assert any(form.startswith("hf:DIR ") and "e.g. hf:" in form for form in SPEC_FORMS)
    assert any(form.startswith("PKG.MODULE:CALLABLE") and "e.g. " in form for form in SPEC_FORMS)


# --- hf:DIR -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_hf_dir_round_trips_weights_and_class(tmp_path, make):
    torch.manual_seed(0)
    original = make()
    original.save_pretrained(tmp_path)
    model = build_model(f"hf:{tmp_path}")
    assert type(model) is type(original)
    assert_same_state(model, original)
    assert not model.training
    assert example_input_shape(f"hf:{tmp_path}", model) is None


def test_hf_dir_on_meta_reads_no_weights(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage: would fail if read")
    model = build_model(f"hf:{tmp_path}", device="meta")
    assert isinstance(model, LlamaForCausalLM)
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_hf_dir_without_architectures_falls_back_to_causal_lm(tmp_path):
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    config.architectures = None
    config.save_pretrained(tmp_path)
    assert isinstance(build_model(f"hf:{tmp_path}", device="meta"), GPT2LMHeadModel)


def test_hf_dir_with_only_a_pickle_is_refused(tmp_path):
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelSpecError, match=r"only pickled \.bin.*safe_serialization") as info:
        build_model(f"hf:{tmp_path}")
    assert str(tmp_path) in str(info.value)


def test_hf_missing_dir_or_config_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelSpecError, match="not a directory") as info:
        build_model(f"hf:{missing}")
    assert str(missing) in str(info.value)
    with pytest.raises(ModelSpecError, match=r"has no config\.json") as info:
        build_model(f"hf:{tmp_path}")
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ModelSpecError, match="names no directory"):
        build_model("hf:")


def test_hf_unknown_architecture_is_named(tmp_path):
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2)
    config.architectures = ["NoSuchModelForCausalLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError, match="'NoSuchModelForCausalLM'") as info:
        build_model(f"hf:{tmp_path}", device="meta")
    assert str(tmp_path) in str(info.value)


def test_hf_weights_that_do_not_match_the_config_are_refused(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path)
    bigger = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    bigger.config.save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError, match=r"missing keys.*h\.1\.") as info:
        build_model(f"hf:{tmp_path}")
    assert str(tmp_path) in str(info.value)


def test_hf_weights_with_nan_are_refused(tmp_path):
    model = tiny_gpt2()
    with torch.no_grad():
        model.transformer.h[0].ln_1.weight[0] = float("inf")
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError, match=r"'transformer\.h\.0\.ln_1\.weight' holds 1 NaN or infinite") as info:
        build_model(f"hf:{tmp_path}")
    assert str(tmp_path) in str(info.value)


def test_weights_replace_the_hf_dirs_own(tmp_path):
    torch.manual_seed(0)
    tiny_gpt2().save_pretrained(tmp_path / "dir")
    torch.manual_seed(1)
    other = tiny_gpt2()
    other.save_pretrained(tmp_path / "other")  # stores the tied lm_head.weight once
    model = build_model(f"hf:{tmp_path / 'dir'}", weights=tmp_path / "other" / "model.safetensors")
    assert_same_state(model, other)
    assert model.lm_head.weight is model.transformer.wte.weight


# --- PKG.MODULE:CALLABLE ----------------------------------------------------------------------------------

USERNET = """
from torch import nn

def make(width=4, depth=1):
    return nn.Sequential(nn.Linear(3, width), *[nn.Linear(width, width) for _ in range(depth - 1)])

class Net(nn.Linear):
    @classmethod
    def create(cls, width=2):
        return cls(5, width)

def boom():
    raise RuntimeError("out of cheese")

def not_a_model():
    return [1, 2]

CONSTANT = 3
"""


@pytest.fixture
def in_user_dir(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(USERNET)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "models.py").write_text(USERNET)
    (tmp_path / "broken.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "badsyntax.py").write_text("def (:\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_factory_from_cwd_gets_its_kwargs_and_restores_sys_path(in_user_dir):
    before = list(sys.path)
    model = build_model("usernet:make?width=8&depth=2")
    assert sys.path == before
    assert [layer.out_features for layer in model] == [8, 8]
    assert not model.training
    assert example_input_shape("usernet:make", model) is None


def test_factory_in_a_package_with_a_dotted_callable(in_user_dir):
    assert build_model("pkg.models:make")[0].out_features == 4
    net = build_model("pkg.models:Net.create?width=3", device="meta")
    assert (net.in_features, net.out_features, net.weight.device.type) == (5, 3, "meta")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule:make", "unknown model spec 'nosuchmodule:make': no family and no module 'nosuchmodule'"),
        ("pkg.nosuch:make", "no module 'pkg.nosuch'"),
        ("broken:make", "importing module 'broken' failed: No module named 'no_such_dependency_xyz'"),
        ("badsyntax:make", "importing module 'badsyntax' failed: SyntaxError"),
        ("usernet:nothing", "module 'usernet' has no attribute 'nothing'"),
        ("usernet:Net.nothing", "module 'usernet' has no attribute 'Net.nothing'"),
        ("usernet:CONSTANT", "usernet:CONSTANT is a int, not callable"),
        ("usernet:boom", r"usernet:boom\(\) raised RuntimeError: out of cheese"),
        ("usernet:make?colour=red", r"usernet:make\(colour='red'\) raised TypeError"),
        ("usernet:not_a_model", "usernet:not_a_model returned a list, not a torch.nn.Module"),
        ("usernet:", "names no callable"),
        ("usernet:make?width", "expected key=value"),
    ],
)
def test_factory_errors_name_the_module_and_callable(in_user_dir, spec, message):
    before = list(sys.path)
    with pytest.raises(ModelSpecError, match=message):
        build_model(spec)
    assert sys.path == before


# --- weights= ---------------------------------------------------------------------------------------------


def test_weights_load_into_a_spec_built_from_code(tmp_path):
    torch.manual_seed(0)
    source = build_model(ZOO_MLP)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    model = build_model(ZOO_MLP, weights=str(tmp_path / "w.safetensors"))
    assert_same_state(model, source)


def test_weights_into_a_factory(in_user_dir):
    torch.manual_seed(0)
    source = build_model("usernet:make?width=8")
    save_file(source.state_dict(), in_user_dir / "w.safetensors")
    assert_same_state(build_model("usernet:make?width=8", weights=in_user_dir / "w.safetensors"), source)


def _bad_state(kind: str) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in build_model(ZOO_MLP).state_dict().items()}
    first = next(iter(state))
    if kind == "shape":
        state[first] = torch.zeros(3, 3)
    elif kind == "missing":
        del state[first]
    elif kind == "unexpected":
        state["extra.weight"] = torch.zeros(1)
    elif kind == "nan":
        state[first][0] = float("nan")
    return state


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("shape", "shape \\(3, 3\\) in file"),
        ("missing", "missing "),
        ("unexpected", "unexpected extra.weight"),
        ("nan", "NaN or infinite"),
    ],
)
def test_weights_that_do_not_fit_are_refused_naming_the_file(tmp_path, kind, message):
    path = tmp_path / "w.safetensors"
    save_file(_bad_state(kind), path)
    with pytest.raises(ModelSpecError, match=message) as info:
        build_model(ZOO_MLP, weights=path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("content", "message"), [(None, "no such weights file"), (b"not safetensors", "not a readable safetensors")]
)
def test_weights_file_missing_or_not_safetensors(tmp_path, content, message):
    path = tmp_path / "w.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelSpecError, match=message) as info:
        build_model(ZOO_MLP, weights=path)
    assert str(info.value).startswith(str(path))


def test_weights_on_meta_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="meta") as info:
        build_model(ZOO_MLP, device="meta", weights=tmp_path / "w.safetensors")
    assert not isinstance(info.value, ModelSpecError)


def test_weights_are_checked_before_the_model_is_built(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text("def make():\n    raise AssertionError('built')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSpecError, match="no such weights file"):
        build_model("usernet:make", weights=Path("absent.safetensors"))
