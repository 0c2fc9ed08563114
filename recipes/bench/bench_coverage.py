"""Converter coverage on a broad zoo built from code: which model families each graph view handles.

Every model is built from a tiny configuration with random weights (nothing is downloaded), and each is
tried five ways:

- **op graph**: ``to_op_graph(model, inputs)`` builds;
- **neuron round trip**: ``from_neuron_graph(to_neuron_graph(model, inputs))`` gives back every parameter
  (and batch-norm statistic) bit for bit;
- **predict**: ``LoGAH(small config).predict(model, inputs)`` gives every parameter, in its shape;
- **prune**: ``metaprune.prune(model, example, speedup=1.3)`` with ``prune_model``'s defaults (FLOPs, its
  default layers kept whole, global ranking for models with timm-style attention) gives a model with fewer
  parameters that runs and answers in the same shape;
- **unchanged by tracing**: after all of the above, the model's real forward equals that of an untouched
  copy, both for a model converted before its first forward and for one converted after it (eval-mode
  caches such as LeViT's attention biases are filled by the first forward).

It prints a markdown table, family by view, with ``ok`` or the first line of the error, and totals. Then it
times the conversion of two large models on the ``meta`` device (GPT-2 Large and a 1.1B-parameter Llama,
op graph and neuron-graph structure), each in a fresh process so that the peak resident set (Linux's
``VmHWM``) is that conversion's, by wall clock and by the process's CPU time (which the load of a shared
machine does not inflate).

    OMP_NUM_THREADS=1 python recipes/bench/bench_coverage.py  # the documented run, a few minutes on 2 cores
    python recipes/bench/bench_coverage.py --families bloom "timm swin" --no-large
    python recipes/bench/bench_coverage.py --no-zoo           # only the large models
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

VIEWS = ("op graph", "neuron round trip", "predict", "prune", "unchanged by tracing")
PRUNE_SPEEDUP = 1.3
VOCAB = 100
IMAGE = 32
LARGE = ("gpt2-large", "llama-1b")
LARGE_VIEWS = ("op", "neuron")
TARGET_SECONDS, TARGET_PEAK_MB = 2.0, 1024
ERROR_WIDTH = 160  # characters of an error's first line shown in a table cell


@dataclass(frozen=True)
class Family:
    """One model family of the zoo: how to build its tiny model and the inputs it runs on."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], Any]


def _image() -> Tensor:
    return torch.randn(1, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


def _tokens() -> dict[str, Tensor]:
    return {"input_ids": torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))}


# -- the zoo --------------------------------------------------------------------------------------------


def _timm(name: str, **options: Any) -> Callable[[], nn.Module]:
    """timm's model ``name`` with ``options`` in place of its architecture's own (depth, widths, ...)."""

    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **options)

    return build


# Built from their classes where the registered models fix the options shrunk here (depths, widths, patch size).
_MIXER = dict(num_classes=10, img_size=IMAGE, patch_size=8, num_blocks=2, embed_dim=32)
_METAFORMER = dict(num_classes=10, depths=(1, 1, 1, 1), dims=(16, 16, 32, 32))


def _timm_mixer() -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(**_MIXER)


def _timm_resmlp() -> nn.Module:
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    return MlpMixer(**_MIXER, mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine)


def _timm_gmlp() -> nn.Module:
    from timm.layers import GatedMlp
    from timm.models.mlp_mixer import MlpMixer, SpatialGatingBlock

    return MlpMixer(**_MIXER, mlp_ratio=6, block_layer=SpatialGatingBlock, mlp_layer=GatedMlp)


def _timm_poolformer() -> nn.Module:
    from timm.models.metaformer import GroupNorm1, MetaFormer

    return MetaFormer(
        **_METAFORMER, downsample_norm=None, mlp_act=nn.GELU, mlp_bias=True, norm_layers=GroupNorm1,
        layer_scale_init_values=1e-5, res_scale_init_values=None, use_mlp_head=False,
    )  # fmt: skip


def _timm_caformer() -> nn.Module:
    from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv

    return MetaFormer(
        **_METAFORMER, token_mixers=[SepConv, SepConv, Attention, Attention],
        norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2,
    )  # fmt: skip


def _timm_convmixer() -> nn.Module:
    from timm.models.convmixer import ConvMixer

    return ConvMixer(dim=32, depth=2, kernel_size=3, patch_size=4, num_classes=10)


def _timm_pvt_v2() -> nn.Module:
    from timm.models.pvt_v2 import PyramidVisionTransformerV2

    return PyramidVisionTransformerV2(
        depths=(1, 1, 1, 1), embed_dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2), num_classes=10
    )


def _vit_options(**extra: Any) -> dict[str, Any]:
    return {"img_size": IMAGE, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, **extra}


TIMM = {
    "vit": _timm("vit_tiny_patch16_224", **_vit_options()),
    "deit": _timm("deit_tiny_distilled_patch16_224", **_vit_options()),
    "levit": _timm(
        "levit_128s", img_size=IMAGE, embed_dim=(16, 32), key_dim=8, depth=(1, 1), num_heads=(2, 2), distilled=False
    ),
    "swin": _timm(
        "swin_tiny_patch4_window7_224", img_size=IMAGE, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4
    ),
    "beit": _timm("beit_base_patch16_224", **_vit_options()),
    "eva02": _timm("eva02_tiny_patch14_224", **_vit_options(ref_feat_shape=(4, 4))),
    "mixer": _timm_mixer,
    "resmlp": _timm_resmlp,
    "gmlp": _timm_gmlp,
    "deit3": _timm("deit3_small_patch16_224", **_vit_options()),
    "poolformer": _timm_poolformer,
    "caformer": _timm_caformer,
    "convmixer": _timm_convmixer,
    "pvt_v2": _timm_pvt_v2,
    "coatnet": _timm(
        "coatnet_nano_rw_224", img_size=IMAGE, embed_dim=(32, 32, 64, 64), depths=(1, 1, 1, 1), stem_width=16
    ),
    "convnext": _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(16, 16, 32, 32)),
    "efficientnet": _timm("test_efficientnet"),
    "resnet": _timm("resnet10t"),
    "regnet": _timm("regnetx_002"),
    "mobilenetv3": _timm("mobilenetv3_small_050"),
}


def _torchvision_efficientnet() -> nn.Module:
    from torchvision.models import efficientnet

    setting, last_channel = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return efficientnet.EfficientNet(setting, dropout=0.2, num_classes=10, last_channel=last_channel)


def _torchvision_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)], num_classes=10)


def _torchvision(name: str, **options: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(num_classes=10, **options)

    return build


def _torchvision_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], num_classes=10)


def _torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(IMAGE, 8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)


TORCHVISION = {
    "resnet18": _torchvision("resnet18"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small", width_mult=0.5),
    "shufflenet_v2_x0_5": _torchvision("shufflenet_v2_x0_5"),
    "efficientnet_b0": _torchvision_efficientnet,
    "convnext_tiny": _torchvision_convnext,
    "swin_t": _torchvision_swin,
    "vit_b_16": _torchvision_vit,
}

_DECODER = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=32,
)  # fmt: skip


def _hf(model_class: str, config_class: str, **options: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_class)(**options)
        return getattr(transformers, model_class)(config)

    return build


HF = {
    "gpt2": _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32),
    "opt": _hf(
        "OPTForCausalLM",
        "OPTConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=32,
    ),
    "bert": _hf(
        "BertModel",
        "BertConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    ),
    "gpt-neo": _hf(
        "GPTNeoForCausalLM",
        "GPTNeoConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        max_position_embeddings=32,
        window_size=4,
    ),
    "bloom": _hf("BloomForCausalLM", "BloomConfig", vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
    "gpt-neox": _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", **_DECODER),
    "gpt-j": _hf(
        "GPTJForCausalLM", "GPTJConfig", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, rotary_dim=4
    ),
    "phi": _hf("PhiForCausalLM", "PhiConfig", **_DECODER),
    "falcon": _hf(
        "FalconForCausalLM",
        "FalconConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
    ),
    "llama": _hf("LlamaForCausalLM", "LlamaConfig", **_DECODER, num_key_value_heads=2),
    "mistral": _hf("MistralForCausalLM", "MistralConfig", **_DECODER, num_key_value_heads=2),
    "qwen2": _hf("Qwen2ForCausalLM", "Qwen2Config", **_DECODER, num_key_value_heads=2),
    "gemma": _hf("GemmaForCausalLM", "GemmaConfig", **_DECODER, num_key_value_heads=2, head_dim=8),
    "t5-encoder": _hf(
        "T5EncoderModel", "T5Config", vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4
    ),
    "mpt": _hf("MptForCausalLM", "MptConfig", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=32),
    "stablelm": _hf("StableLmForCausalLM", "StableLmConfig", **_DECODER, num_key_value_heads=2),
    "olmo": _hf("OlmoForCausalLM", "OlmoConfig", **_DECODER),
    "olmo2": _hf("Olmo2ForCausalLM", "Olmo2Config", **_DECODER, num_key_value_heads=2),
    "phi3": _hf("Phi3ForCausalLM", "Phi3Config", **_DECODER, num_key_value_heads=2, pad_token_id=0),
    "qwen3": _hf("Qwen3ForCausalLM", "Qwen3Config", **_DECODER, num_key_value_heads=2, head_dim=8),
    "starcoder2": _hf("Starcoder2ForCausalLM", "Starcoder2Config", **_DECODER, num_key_value_heads=2),
    "gemma2": _hf("Gemma2ForCausalLM", "Gemma2Config", **_DECODER, num_key_value_heads=2, head_dim=8),
    "gpt-bigcode": _hf(
        "GPTBigCodeForCausalLM",
        "GPTBigCodeConfig",
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        multi_query=True,
    ),
}

ZOO: tuple[Family, ...] = (
    *(Family(f"timm {name}", build, _image) for name, build in TIMM.items()),
    *(Family(f"torchvision {name}", build, _image) for name, build in TORCHVISION.items()),
    *(Family(f"hf {name}", build, _tokens) for name, build in HF.items()),
)


# -- the five views ---------------------------------------------------------------------------------------


def check_op_graph(model: nn.Module, inputs: Any) -> None:
    from hypernets.graph import to_op_graph

    to_op_graph(model, inputs)


def check_round_trip(model: nn.Module, inputs: Any) -> None:
    """Every parameter and buffer the graph places comes back bit for bit; every parameter is placed."""
    from hypernets.graph import from_neuron_graph, to_neuron_graph

    tensors = from_neuron_graph(to_neuron_graph(model, inputs))
    state = model.state_dict()
    missing = [name for name, _ in model.named_parameters(remove_duplicate=False) if name not in tensors]
    if missing:
        raise AssertionError(f"not in the neuron graph: {', '.join(missing[:3])} ({len(missing)} parameters)")
    wrong = [name for name, value in tensors.items() if not torch.equal(value, state[name])]
    if wrong:
        raise AssertionError(f"read back differently: {', '.join(wrong[:3])} ({len(wrong)} tensors)")


def check_predict(model: nn.Module, inputs: Any) -> None:
    """One tensor of the right shape for every (untied) parameter."""
    predicted = _hypernetwork().predict(model, inputs)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    got = {name: tuple(t.shape) for name, t in predicted.items()}
    if got != expected:
        wrong = sorted(set(expected.items()) ^ set(got.items()))
        raise AssertionError(f"predicted {len(got)} tensors for {len(expected)} parameters; differ: {wrong[:3]}")


def check_prune(model: nn.Module, inputs: Any) -> None:
    """A pruned copy with fewer parameters that runs and answers in the dense model's shape."""
    from metaprune.pipeline import default_global_pruning
    from metaprune.prune import prune

    example = inputs["input_ids"] if isinstance(inputs, dict) else inputs
    global_pruning = default_global_pruning(model)
    result = prune(model, example, speedup=PRUNE_SPEEDUP, counter="flops", global_pruning=global_pruning)
    if not result.params < result.base_params:
        raise AssertionError(f"pruned nothing ({result.params} of {result.base_params} parameters left)")
    dense, pruned = forward(model, inputs), forward(result.model, inputs)
    if pruned.shape != dense.shape:
        raise AssertionError(f"the pruned model answers in shape {tuple(pruned.shape)}, not {tuple(dense.shape)}")


_LOGAH: list[nn.Module] = []


def _hypernetwork() -> nn.Module:
    """A small random LoGAH (its predictions' values do not matter here, only that it places them)."""
    if not _LOGAH:
        from hypernets.logah import LoGAH

        torch.manual_seed(0)
        _LOGAH.append(LoGAH(hidden=32, layers=1, heads=2, rank=4, max_ck=64).eval())
    return _LOGAH[0]


def forward(model: nn.Module, inputs: Any) -> Tensor:
    with torch.no_grad():
        output = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if isinstance(output, Tensor):
        return output
    return output[0] if isinstance(output, tuple) else next(iter(output.values()))


def check_unchanged(family: Family, convert: Callable[[nn.Module, Any], None]) -> None:
    """Converted before its first forward and again after it, the model computes what an untouched copy does."""
    torch.manual_seed(0)
    model = family.build().eval()
    reference = copy.deepcopy(model)
    inputs = family.inputs()
    convert(model, inputs)
    expected = forward(reference, inputs)
    for when in ("before its first forward", "after a forward"):
        if when == "after a forward":
            convert(model, inputs)
        output = forward(model, inputs)
        if type(output) is not Tensor or not torch.equal(output, expected):
            raise AssertionError(f"the output changed when converted {when} ({type(output).__name__})")


def _convert_every_way(model: nn.Module, inputs: Any) -> None:
    """Every conversion, failing or not: their own columns report failures, here only what they leave behind counts."""
    for check in (check_op_graph, check_round_trip, check_predict, check_prune):
        with contextlib.suppress(Exception):
            check(model, inputs)


def run_family(family: Family) -> dict[str, str]:
    """View -> "ok" or the first line of the error it raised."""
    torch.manual_seed(0)
    try:
        model = family.build().eval()
    except Exception as err:  # a model this library version cannot build is reported, not fatal
        return dict.fromkeys(VIEWS, f"cannot build: {type(err).__name__}: {err}")
    inputs = family.inputs()
    checks: dict[str, Callable[[], None]] = {
        "op graph": lambda: check_op_graph(model, inputs),
        "neuron round trip": lambda: check_round_trip(model, inputs),
        "predict": lambda: check_predict(model, inputs),
        "prune": lambda: check_prune(model, inputs),
        "unchanged by tracing": lambda: check_unchanged(family, _convert_every_way),
    }
    return {view: _outcome(check) for view, check in checks.items()}


def _outcome(check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as err:  # every failure is a table entry
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return "ok"


# -- the table ----------------------------------------------------------------------------------------------


def table(results: dict[str, dict[str, str]]) -> str:
    header = "| family | " + " | ".join(VIEWS) + " |"
    rows = [header, "|---|" + "---|" * len(VIEWS)]
    for name, outcome in results.items():
        rows.append(f"| {name} | " + " | ".join(_cell(outcome[view]) for view in VIEWS) + " |")
    totals = [sum(outcome[view] == "ok" for outcome in results.values()) for view in VIEWS]
    rows.append(f"| **ok, of {len(results)}** | " + " | ".join(f"**{n}**" for n in totals) + " |")
    return "\n".join(rows)


def _cell(outcome: str) -> str:
    if outcome == "ok":
        return "ok"
    text = outcome if len(outcome) <= ERROR_WIDTH else outcome[: ERROR_WIDTH - 3] + "..."
    return text.replace("|", "\\|")


# -- large models on meta, one process each ----------------------------------------------------------------


def build_large(name: str) -> nn.Module:
    """GPT-2 Large (774M) or TinyLlama's 1.1B configuration, on ``meta``: nothing is allocated."""
    if name == "gpt2-large":
        from hypernets.models import build_model

        return build_model("gpt2:large", device="meta")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, max_position_embeddings=2048,
    )  # fmt: skip
    with torch.device("meta"):
        return LlamaForCausalLM(config).eval()


def large_worker(name: str, view: str, repeats: int) -> dict[str, Any]:
    """Build on meta, convert once to warm up, then time ``repeats`` conversions; peak RSS of this process."""
    from hypernets.graph import to_neuron_graph, to_op_graph

    model = build_large(name)
    convert = to_op_graph if view == "op" else to_neuron_graph
    graph = convert(model)
    times, cpu_times = [], []
    for _ in range(repeats):
        del graph
        start, cpu_start = time.perf_counter(), time.process_time()
        graph = convert(model)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "nodes": graph.num_nodes,
        "edges": graph.edge_index.shape[1],
        "seconds": statistics.median(times),
        "cpu_seconds": statistics.median(cpu_times),
        "peak_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set. ``ru_maxrss`` keeps the high-water mark of the process image an
    ``exec`` replaced (the parent at fork time, here the whole zoo), so Linux's VmHWM of the current image
    is read first."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next((line for line in status.read_text().splitlines() if line.startswith("VmHWM:")), None)
        if line is not None:
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure_large(name: str, view: str, repeats: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", name, view, "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def large_table(results: dict[tuple[str, str], dict[str, Any]], repeats: int) -> str:
    rows = [
        "| model (meta) | view | parameters | nodes | edges | time (s) | CPU time (s) | peak RSS (MB) | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (name, view), r in results.items():
        label = "op graph" if view == "op" else "neuron graph structure"
        if "error" in r:
            rows.append(f"| {name} | {label} | | | | | | | {_cell(r['error'])} |")
            continue
        met = r["seconds"] < TARGET_SECONDS and r["peak_mb"] < TARGET_PEAK_MB
        rows.append(
            f"| {name} | {label} | {r['parameters'] / 1e6:,.0f}M | {r['nodes']:,} | {r['edges']:,} "
            f"| {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['peak_mb']:.0f} | {'met' if met else 'missed'} |"
        )
    note = (
        f"Time: median of {repeats} conversions after one warm-up, wall clock (CPU time: this process's alone, "
        f"what other jobs on the machine do not inflate); target under {TARGET_SECONDS:.0f} s of wall clock and "
    )
    return "\n".join(rows) + f"\n\n{note}{TARGET_PEAK_MB / 1024:.0f} GB peak RSS (whole process, model included)."


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other jobs on the machine slow the timings below
    return (
        f"{date.today().isoformat()}, {platform.machine()}, {len(os.sched_getaffinity(0))} usable CPU cores "
        f"({cpu}), load average {load}, no GPU used, Python {platform.python_version()}, torch {torch.__version__}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [family.name.split(" ", 1)[1] for family in ZOO] + [family.name for family in ZOO]
    parser.add_argument(
        "--families", nargs="+", metavar="NAME", help=f"only these (e.g. bloom, 'timm swin'); of {names}"
    )
    parser.add_argument("--no-large", action="store_true", help="skip timing GPT-2 Large and the 1B Llama")
    parser.add_argument("--no-zoo", action="store_true", help="only time GPT-2 Large and the 1B Llama")
    parser.add_argument("--repeats", type=int, default=3, help="timed conversions of each large model")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "VIEW"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_zoo(families: Sequence[Family]) -> None:
    """Try every family five ways, printing progress, then the table."""
    results: dict[str, dict[str, str]] = {}
    start = time.perf_counter()
    for family in families:
        began = time.perf_counter()
        results[family.name] = run_family(family)
        failed = [view for view, outcome in results[family.name].items() if outcome != "ok"]
        verdict = "failed: " + ", ".join(failed) if failed else "ok"
        print(f"  {family.name:32} {time.perf_counter() - began:5.1f} s  {verdict}", flush=True)
    print(f"\n{len(families)} models in {time.perf_counter() - start:.0f} s\n")
    print(table(results))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.worker:
        print(json.dumps(large_worker(*args.worker, args.repeats)))
        return 0
    print(machine(), flush=True)
    if not args.no_zoo:
        wanted = set(args.families or [])
        run_zoo([f for f in ZOO if not wanted or f.name in wanted or f.name.split(" ", 1)[1] in wanted])
    if not args.no_large:
        large = {(name, view): measure_large(name, view, args.repeats) for name in LARGE for view in LARGE_VIEWS}
        print()
        print(large_table(large, args.repeats))
        print(f"Load average after the large models: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
