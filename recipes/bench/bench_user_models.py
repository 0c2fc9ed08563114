"""metaprune on models no zoo builds, against the plain Torch-Pruning script a user would write.

Everything a user has is made here, under --work: an image folder of the embedded MNIST
(``WORK/digits/{train,val}/<digit>/<i>.png``), a user module ``WORK/usermodels.py`` with two factories
(``resnet18_mnist``: torchvision's ResNet-18 with a 1-channel stem; ``residual_cnn``: a small residual CNN),
a timm ViT built from a spec, and a Hugging Face ``LlamaForCausalLM`` trained byte-level on Python's pydoc text
(``WORK/pydoc.txt``, saved with ``save_pretrained``). Each model is trained per seed by a plain PyTorch loop
(ImageFolder + Grayscale + ToTensor + Normalize(0.1307, 0.3081)), then pruned at each speed-up and seed by:

  (a) plain:    Torch-Pruning as its README shows a user: MetaPruner + GroupMagnitudeImportance(p=2), stepped
                until tp.utils.count_ops_and_params MACs reach the target, then a plain fine-tuning loop with
                metaprune's defaults (SGD, lr 0.01, momentum 0.9, weight decay 5e-4, cosine, batch 128);
  (a') plain_tp_flops: the same script stopped on metaprune's FLOPs count (metaprune.flops.count_flops)
                instead of Torch-Pruning's MACs, so both meet the same target as metaprune counts it;
  (b) metaprune: metaprune.prune_model(...) with group_norm, per-layer pruning, no metanetwork, and for
                the ViT also with global_pruning=True (metaprune_global) and with head_dims=True, per layer
                and global (metaprune_head_dims, metaprune_global_head_dims);
  (c) metanet:  prune_model(..., metanet=<shipped>) when metaprune/pretrained/<family>/model.safetensors exists,
                with prune_model's default ranking (global for the ViT), as `metaprune prune --metanet` runs it
                (skipped with a note otherwise).

Every pipeline gets the same fine-tuning steps. Accuracy (loss for the LM) is measured on the val split by one
function, FLOPs speed-up by metaprune.flops.count_flops (dense / pruned) for all. It prints a table of mean
± std over seeds with wall seconds per phase, writes WORK/results.json (every run and every aggregate) and
WORK/table.md, and times the CI example (``metaprune prune`` as a subprocess with 2 threads).

    python recipes/bench/bench_user_models.py --work runs/user_models                  # the documented run
    python recipes/bench/bench_user_models.py --work /tmp/um --quick                    # smoke run, minutes
    python recipes/bench/bench_user_models.py --models residual_cnn --seeds 0 --no-ci   # one model
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("resnet18_mnist", "residual_cnn", "vit", "llama")
# prune_model's options of each metaprune pipeline (per layer, as prune_model's default was when the first figures
# were taken; it is now global for ViTs); the ones with head options run on the ViT only
METAPRUNE = {
    "metaprune": {"global_pruning": False},
    "metaprune_global": {"global_pruning": True},
    "metaprune_head_dims": {"global_pruning": False, "head_dims": True},
    "metaprune_global_head_dims": {"global_pruning": True, "head_dims": True},
}
VIT_ONLY = ("metaprune_global", "metaprune_head_dims", "metaprune_global_head_dims")
PIPELINES = ("plain_tp", "plain_tp_flops", *METAPRUNE, "metanet")
MEAN, STD = 0.1307, 0.3081

USER_MODULE = '''"""What a user writes: model factories for 1x28x28 digits (metaprune --model usermodels:NAME)."""

import torchvision
from torch import nn


def resnet18_mnist():
    """torchvision's ResNet-18 for 10 classes, its 7x7 stride-2 stem taking one channel."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(y)) + self.short(x)).relu()


class ResidualCNN(nn.Module):
    def __init__(self, width=32, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 2 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


def residual_cnn(width=32):
    return ResidualCNN(width)
'''


# --- what the user has: data, a module of factories, trained weights -------------------------------------------


def write_digits(root: Path, n_train: int, n_val: int) -> Path:
    """The embedded MNIST as PNGs in an image folder, written once (a marker records the counts)."""
    from PIL import Image

    from hypernets.data import load_mnist

    marker = root / "complete.json"
    wanted = {"train": n_train, "val": n_val}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    for split, source in (("train", "train"), ("val", "eval")):
        data = load_mnist(source)
        for i in range(min(wanted[split], len(data))):
            image, label = data[i]
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (image[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    marker.write_text(json.dumps(wanted))
    return root


def user_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.Grayscale(1), transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])


def image_sets(digits: Path):
    from torchvision.datasets import ImageFolder

    return ImageFolder(digits / "train", transform=user_transform()), ImageFolder(
        digits / "val", transform=user_transform()
    )


def build(name: str, work: Path, vit_depth: int, cnn_width: int = 32) -> nn.Module:
    """The model as the user's own code builds it."""
    if name in ("resnet18_mnist", "residual_cnn"):
        sys.path.insert(0, str(work))
        try:
            import usermodels
        finally:
            sys.path.remove(str(work))
        return usermodels.residual_cnn(width=cnn_width) if name == "residual_cnn" else usermodels.resnet18_mnist()
    if name == "vit":
        import timm

        return timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=28,
            patch_size=4,
            in_chans=1,
            num_classes=10,
            depth=vit_depth,
        )
    raise ValueError(name)


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )


def cosine(opt, steps):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


def loader(dataset, batch_size: int, seed: int):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )


def forever(batches):
    while True:
        yield from batches


def train_user_model(name: str, args, train_set, seed: int) -> tuple[nn.Module, float]:
    """A user's training job: seeded, a fixed number of steps (SGD for the CNNs, AdamW for the ViT)."""
    from safetensors.torch import load_file, save_file

    folder = args.work / "models" / name / f"seed{seed}"
    meta = {
        "steps": args.train_steps[name],
        "vit_depth": args.vit_depth if name == "vit" else None,
        "width": args.cnn_width if name == "residual_cnn" else None,
    }
    torch.manual_seed(seed)
    model = build(name, args.work, args.vit_depth, args.cnn_width)
    if (folder / "model.safetensors").is_file() and json.loads((folder / "train.json").read_text())["meta"] == meta:
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model.eval(), json.loads((folder / "train.json").read_text())["seconds"]
    start = time.perf_counter()
    steps = meta["steps"]
    if name == "vit":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = cosine(opt, steps)
    model.train()
    batches = forever(loader(train_set, 128, seed))
    for _ in range(steps):
        images, labels = next(batches)
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "train.json").write_text(json.dumps({"meta": meta, "seconds": seconds, "last_loss": loss.item()}))
    return model.eval(), seconds


def train_llama(args, text_data, seed: int) -> tuple[Path, float]:
    """A byte-level LlamaForCausalLM trained with AdamW on the pydoc windows, saved with save_pretrained."""
    from transformers import LlamaForCausalLM

    folder = args.work / "llama" / f"seed{seed}"
    meta = {"steps": args.train_steps["llama"]}
    done = folder / "train.json"
    if done.is_file() and json.loads(done.read_text())["meta"] == meta:
        return folder, json.loads(done.read_text())["seconds"]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config())
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = cosine(opt, meta["steps"])
    model.train()
    text_data.train.generator.manual_seed(seed)
    batches = forever(text_data.train)
    for _ in range(meta["steps"]):
        ids, targets = next(batches)
        logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    seconds = time.perf_counter() - start
    model.save_pretrained(folder, safe_serialization=True)
    done.write_text(json.dumps({"meta": meta, "seconds": seconds, "last_loss": loss.item()}))
    return folder, seconds


# --- (a) the plain Torch-Pruning script ------------------------------------------------------------------------


def plain_torch_pruning(
    name: str, model: nn.Module, example, speedup: float, train, steps: int, seed: int, args, counter: str = "macs"
):
    """What a user writes from Torch-Pruning's README (and its timm / LLM examples): returns the model and seconds
    per phase. It stops on Torch-Pruning's MACs, or with ``counter="flops"`` on metaprune's every-op FLOPs."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    seconds = {}
    start = time.perf_counter()
    torch.manual_seed(seed)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    num_heads, extra = {}, {}
    if name == "vit":
        from timm.models.vision_transformer import Attention

        for m in model.modules():
            if isinstance(m, Attention):
                num_heads[m.qkv] = m.num_heads
        ignored = [model.head]
    elif name == "llama":
        model.config.use_cache = False  # as TP's LLM example: a KV cache in the outputs breaks the trace
        attention = [m for n, m in model.named_modules() if ".self_attn." in n and isinstance(m, nn.Linear)]
        ignored = [model.lm_head, model.model.embed_tokens, *attention]  # MLPs only, as metaprune does
        extra["output_transform"] = lambda out: out.logits
    else:
        ignored = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]  # the classifier

    def cost() -> int:
        return tp.utils.count_ops_and_params(model, example)[0] if counter == "macs" else flops(model, example)

    base_cost = cost()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        imp,
        iterative_steps=args.prune_steps,
        pruning_ratio=1.0,
        ignored_layers=ignored,
        num_heads=num_heads,
        **extra,
    )
    for _ in range(args.prune_steps):
        pruner.step()
        if name == "vit":  # as TP's timm example (after every step); timm 1.x also keeps attn_dim for a reshape
            for m in model.modules():
                if isinstance(m, Attention):
                    m.num_heads = pruner.num_heads[m.qkv]
                    m.head_dim = m.qkv.out_features // (3 * m.num_heads)
                    m.attn_dim = m.num_heads * m.head_dim
        if base_cost / cost() >= speedup:
            break
    seconds["prune"] = time.perf_counter() - start

    start = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    if args.lm_optimizer == "adamw" and name == "llama":
        opt = torch.optim.AdamW(model.parameters(), lr=args.lm_lr, weight_decay=5e-4)
    schedule = cosine(opt, steps)
    model.train()
    torch.manual_seed(seed)
    if name == "llama":
        train.generator.manual_seed(seed)
        batches = forever(train)
    else:
        batches = forever(loader(train, args.batch_size, seed))
    for _ in range(steps):
        inputs, targets = next(batches)
        if name == "llama":
            out = model(input_ids=inputs).logits
            loss = F.cross_entropy(out.flatten(0, 1), targets.flatten())
        else:
            loss = F.cross_entropy(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    seconds["finetune"] = time.perf_counter() - start
    return model.eval(), seconds


# --- measuring -------------------------------------------------------------------------------------------------


def score(model: nn.Module, val, task: str) -> float:
    from metaprune.task import evaluate

    return evaluate(model.eval(), val, task)


def flops(model: nn.Module, example) -> int:
    from metaprune.flops import count_flops

    return count_flops(model, example)


def check_build_data(digits: Path, model: nn.Module, val_set) -> dict:
    """Does ``build_data("imagefolder:...")`` feed what the user's training saw? Max |difference| of the first
    val images with and without --mean/--std."""
    from hypernets.data.spec import build_data

    mine = torch.stack([val_set[i][0] for i in range(8)])
    found = {}
    for label, options in (("default", {}), ("mean_std", {"mean": (MEAN,), "std": (STD,)})):
        data = build_data(f"imagefolder:{digits}", model=model, batch_size=8, **options)
        theirs = next(iter(data.val))[0]
        found[label] = (
            float((theirs - mine).abs().max()) if theirs.shape == mine.shape else f"shape {tuple(theirs.shape)}"
        )
    return found


def metanet_for(model: nn.Module, speedup: float):
    """The shipped metanetwork for the model and its calibrated strength, or (None, note)."""
    from metaprune.pretrained import family_of, shipped_path
    from metaprune.strength import Calibration

    family = family_of(model)
    if family is None:
        return None, None, "no shipped metanetwork reads this kind of model"
    directory = shipped_path(family)
    if not (directory / "model.safetensors").is_file():
        return None, None, f"{directory}/model.safetensors does not exist (yet)"
    from metaprune.metanet import Metanet

    calibration = Calibration.load(directory)
    strength = 1.0 if calibration is None else calibration.strength(speedup, None)
    return Metanet.from_pretrained(directory).eval(), strength, f"shipped {family!r}, strength {strength:g}"


# --- the benchmark ---------------------------------------------------------------------------------------------


def run_model(name: str, args, results: list, notes: list) -> None:
    from hypernets.data.spec import build_data
    from hypernets.models import build_model
    from metaprune.pipeline import prune_model

    lm = name == "llama"
    task = "causal_lm" if lm else "classification"
    speedups = args.lm_speedups if lm else args.speedups
    steps = {"vit": args.vit_finetune_steps, "llama": args.lm_finetune_steps}.get(name, args.finetune_steps)
    if lm:
        text = args.work / "pydoc.txt"
        if not text.is_file():
            from hypernets.data import load_text_corpus

            text.write_text(load_text_corpus())
    else:
        train_set, val_set = image_sets(args.digits)
    for seed in args.seeds:
        if lm:
            from transformers import LlamaForCausalLM

            probe = LlamaForCausalLM(llama_config())
            data = build_data(f"text:{text}", model=probe, batch_size=args.lm_batch_size, seed=seed)
            folder, train_seconds = train_llama(args, data, seed)
            model = build_model(f"hf:{folder}").eval()  # as `metaprune prune --model hf:DIR` loads it
            train, val, example = data.train, data.val, data.example
        else:
            model, train_seconds = train_user_model(name, args, train_set, seed)
            train, val = train_set, val_set
            example = val_set[0][0].unsqueeze(0)
            if seed == args.seeds[0]:
                check = check_build_data(args.digits, model, val_set)
                notes.append(f"{name}: build_data('imagefolder:') vs the user's transform, max |diff|: {check}")
                print(notes[-1], flush=True)
        start = time.perf_counter()
        dense_score, dense_flops = score(model, val, task), flops(model, example)
        dense = {
            "score": dense_score,
            "flops": dense_flops,
            "train_seconds": train_seconds,
            "measure_seconds": time.perf_counter() - start,
        }
        results.append({"model": name, "pipeline": "dense", "seed": seed, **dense})
        print(
            f"{name} seed {seed}: dense {task} score {dense_score:.4f}, {dense_flops:,} FLOPs, trained in "
            f"{train_seconds:.0f} s",
            flush=True,
        )
        batch = args.lm_batch_size if lm else args.batch_size
        lr, optimizer = (args.lm_lr, args.lm_optimizer) if lm else (args.lr, "sgd")
        for speedup in speedups:
            # (a) plain Torch-Pruning, stopped on its MACs or on metaprune's FLOPs
            for label, counter in (("plain_tp", "macs"), ("plain_tp_flops", "flops")):
                if label not in args.pipelines:
                    continue
                pruned, seconds = plain_torch_pruning(
                    name, model, example, speedup, train, steps, seed, args, counter=counter
                )
                start = time.perf_counter()
                value, pruned_flops = score(pruned, val, task), flops(pruned, example)
                seconds["measure"] = time.perf_counter() - start
                seconds["total"] = sum(seconds.values())
                record(results, name, label, seed, speedup, value, dense, pruned_flops, seconds)
            # (b) metaprune.prune_model (per layer; for the ViT also global and with head dims), (c) with a metanetwork
            variants = [
                (label, options)
                for label, options in METAPRUNE.items()
                if label in args.pipelines and (name == "vit" or label not in VIT_ONLY)
            ]
            metanet, strength, note = metanet_for(model, speedup)
            if metanet is not None and "metanet" in args.pipelines:
                options = {
                    "metanet": metanet,
                    "rewrite_strength": strength,
                    "sparse_steps": args.metanet_sparse_steps,
                }  # ranking as prune_model's default: global for the ViT, per layer for the CNNs
                variants.append(("metanet", options))
            if seed == args.seeds[0] and speedup == speedups[0]:
                notes.append(f"{name}: metanet pipeline: {note}")
                print(notes[-1], flush=True)
            for label, options in variants:
                start = time.perf_counter()
                out = prune_model(
                    model,
                    train=train,
                    val=val,
                    example_inputs=example,
                    task=task,
                    speedup=speedup,
                    finetune_steps=steps,
                    seed=seed,
                    progress=False,
                    batch_size=batch,
                    lr=lr,
                    optimizer=optimizer,
                    **options,
                )
                total = time.perf_counter() - start
                mine = score(out.model, val, task)
                walls = dict(out.report["wall_seconds"])
                walls["total"] = total
                record(
                    results,
                    name,
                    label,
                    seed,
                    speedup,
                    mine,
                    dense,
                    flops(out.model, example),
                    walls,
                    reported=out.report["after"]["accuracy" if not lm else "loss"],
                    rewrite_strength=out.report.get("rewrite_strength"),
                )
        save(args, results, notes)


def record(results, name, pipeline, seed, speedup, value, dense, pruned_flops, seconds, **extra) -> None:
    row = {
        "model": name,
        "pipeline": pipeline,
        "seed": seed,
        "target": speedup,
        "score": value,
        "flops": pruned_flops,
        "flops_speedup": dense["flops"] / pruned_flops,
        "seconds": seconds,
        **extra,
    }
    results.append(row)
    print(
        f"  {name} {pipeline:16s} x{speedup:g} seed {seed}: score {value:.4f}, FLOPs speed-up "
        f"{row['flops_speedup']:.2f}x, {seconds['total']:.0f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in seconds.items() if k != 'total')})",
        flush=True,
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(results: list) -> list[dict]:
    rows = []
    keys = []
    for r in results:
        key = (r["model"], r["pipeline"], r.get("target"))
        if key not in keys:
            keys.append(key)
    for model, pipeline, target in keys:
        runs = [r for r in results if (r["model"], r["pipeline"], r.get("target")) == (model, pipeline, target)]
        row = {"model": model, "pipeline": pipeline, "target": target, "seeds": [r["seed"] for r in runs]}
        row["score"] = mean_std([r["score"] for r in runs])
        if pipeline == "dense":
            row["train_seconds"] = mean_std([r["train_seconds"] for r in runs])
        else:
            row["flops_speedup"] = mean_std([r["flops_speedup"] for r in runs])
            phases = sorted({k for r in runs for k in r["seconds"]})
            row["seconds"] = {k: mean_std([r["seconds"].get(k, 0.0) for r in runs]) for k in phases}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        lm = model == "llama"
        what = "val loss (nats/byte)" if lm else "val accuracy (%)"
        lines += [
            f"\n### {model}\n",
            f"| pipeline | target | {what} | FLOPs speed-up | wall s (total) | wall s per phase |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            if r["model"] != model:
                continue
            scale = 1 if lm else 100
            m, s = r["score"]
            value = f"{scale * m:.{3 if lm else 2}f} ± {scale * s:.{3 if lm else 2}f}"
            if r["pipeline"] == "dense":
                t = r["train_seconds"]
                lines.append(f"| dense | - | {value} | 1.00 | {t[0]:.0f} (training) | - |")
                continue
            f, fs = r["flops_speedup"]
            total = r["seconds"]["total"]
            phases = ", ".join(f"{k} {v[0]:.1f}" for k, v in r["seconds"].items() if k != "total" and v[0] >= 0.05)
            lines.append(
                f"| {r['pipeline']} | {r['target']:g}x | {value} | {f:.2f} ± {fs:.2f} "
                f"| {total[0]:.0f} ± {total[1]:.0f} | {phases} |"
            )
    return "\n".join(lines)


def save(args, results, notes, ci=None) -> dict:
    rows = aggregate(results)
    import torch_pruning

    out = {
        "argv": sys.argv,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_pruning": torch_pruning.__version__,
            "threads": torch.get_num_threads(),
        },
        "notes": notes,
        "runs": results,
        "aggregate": rows,
        "ci": ci,
    }
    (args.work / f"results{args.tag}.json").write_text(json.dumps(out, indent=1))
    return out


# --- the CI example --------------------------------------------------------------------------------------------


def run_ci(args) -> dict:
    """``metaprune prune`` on the user's ResNet-18 as a CI job would run it: a subprocess with 2 threads."""
    ci = args.work / "ci"
    ci.mkdir(exist_ok=True)
    weights = args.work / "models" / "resnet18_mnist" / f"seed{args.seeds[0]}" / "model.safetensors"
    command = [
        sys.executable,
        "-m",
        "metaprune.cli",
        "prune",
        "--model",
        "usermodels:resnet18_mnist",
        "--weights",
        str(weights),
        "--data",
        f"imagefolder:{args.digits}",
        "--mean",
        str(MEAN),
        "--std",
        str(STD),
        "--speedup",
        "2",
        "--finetune-steps",
        str(args.ci_finetune_steps),
        "--out",
        str(ci / "pruned"),
        "--report",
        str(ci / "report.json"),
        "--summary",
        str(ci / "summary.md"),
        "--junit",
        str(ci / "junit.xml"),
        "--overwrite",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=args.work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    result = {"command": " ".join(command[1:]), "exit": done.returncode, "seconds": seconds, "output": tail}
    if (ci / "report.json").is_file() and done.returncode in (0, 1):
        report = json.loads((ci / "report.json").read_text())
        result["report"] = {k: report[k] for k in ("speedup", "passed", "reasons", "wall_seconds")}
        result["report"]["accuracy"] = [report["before"]["accuracy"], report["after"]["accuracy"]]
    print(
        f"CI example: exit {done.returncode} in {seconds:.1f} s (target: under 300 s)\n  " + "\n  ".join(tail),
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/user_models"), help="cache and results directory")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--speedups", type=float, nargs="+", default=[2.0, 4.0], help="image models, FLOPs")
    parser.add_argument("--lm-speedups", type=float, nargs="+", default=[1.3, 1.6], help="the LM (MLPs only)")
    parser.add_argument("--finetune-steps", type=int, default=100, help="CNNs, every pipeline")
    parser.add_argument("--vit-finetune-steps", type=int, default=60, help="the ViT, every pipeline")
    parser.add_argument("--lm-finetune-steps", type=int, default=100, help="the LM, every pipeline")
    parser.add_argument("--ci-finetune-steps", type=int, default=300)
    parser.add_argument(
        "--train-steps",
        type=int,
        nargs=4,
        metavar=("RESNET", "CNN", "VIT", "LM"),
        default=[150, 150, 200, 300],
        help="training steps of the user's jobs",
    )
    parser.add_argument("--vit-depth", type=int, default=2, help="blocks of the ViT (embed 192, 3 heads)")
    parser.add_argument("--cnn-width", type=int, default=16, help="residual_cnn(width=...)")
    parser.add_argument("--prune-steps", type=int, default=100, help="iterative steps of the plain script")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning lr (metaprune's default)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lm-batch-size", type=int, default=32)
    parser.add_argument("--lm-optimizer", choices=("sgd", "adamw"), default="adamw")
    parser.add_argument("--lm-lr", type=float, default=1e-3)
    parser.add_argument("--images", type=int, nargs=2, default=[8000, 2000], metavar=("TRAIN", "VAL"))
    parser.add_argument(
        "--metanet-sparse-steps", type=int, default=100, help="(c): what `metaprune prune --metanet` runs"
    )
    parser.add_argument(
        "--pipelines",
        nargs="+",
        choices=PIPELINES,
        default=[p for p in PIPELINES if p != "plain_tp_flops"],
        help="default: all but plain_tp_flops; the global and head_dims ones run on the ViT only",
    )
    parser.add_argument("--tag", default="", help="suffix of results.json and table.md, to keep an extra run apart")
    parser.add_argument("--no-ci", action="store_true", help="skip timing the CI example")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the benchmark itself")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data and budgets")
    args = parser.parse_args()
    if args.quick:
        args.images = [512, 256]
        args.train_steps = [10, 10, 10, 10]
        args.finetune_steps = args.vit_finetune_steps = args.lm_finetune_steps = args.ci_finetune_steps = 3
        args.vit_depth = 1
        args.prune_steps = 20
        args.metanet_sparse_steps = 3
    args.train_steps = dict(zip(MODELS, args.train_steps, strict=True))
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.work = args.work.resolve()
    (args.work / "usermodels.py").write_text(USER_MODULE)
    start = time.perf_counter()
    args.digits = write_digits(args.work / "digits", *args.images)
    notes = [f"image folder ready in {time.perf_counter() - start:.1f} s"]
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)", flush=True
    )
    results: list = []
    for name in args.models:
        start = time.perf_counter()
        run_model(name, args, results, notes)
        notes.append(f"{name}: {time.perf_counter() - start:.0f} s in all")
        print(notes[-1], flush=True)
    ci = None if args.no_ci or "resnet18_mnist" not in args.models else run_ci(args)
    out = save(args, results, notes, ci)
    text = table(out["aggregate"])
    (args.work / f"table{args.tag}.md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {args.work / f'results{args.tag}.json'} and {args.work / f'table{args.tag}.md'}")


if __name__ == "__main__":
    main()
