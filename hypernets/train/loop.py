"""Meta-training: each step predicts the parameters of a batch of sampled architectures in one
hypernetwork call, runs each on the same data batch, and backpropagates their mean loss into the
hypernetwork."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from hypernets.atomic import atomic_write
from hypernets.checkpoint import CheckpointError
from hypernets.logah import LoGAH, largest_dim
from hypernets.zoo.families import ArchSampler, Family, get_family

from .config import TrainConfig, lr_at, parameter_groups
from .distributed import setup
from .graphs import arch_graph
from .metrics import MetricsLog, plot_loss, read_metrics
from .spectra import residual_writes, spectral_excess, stream_excess
from .state import latest_checkpoint, load_state, save_state
from .tasks import Batch, ImageTask, TextTask, task_for

HYPERNET_DIR = "hypernet"  # LoGAH.from_pretrained reads the latest weights from here
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


class TrainingDiverged(ValueError):
    """The loss or gradient became NaN or infinite: settings the user can change, not a bug."""


def train(config: TrainConfig, stop_after: int | None = None, progress: bool = True) -> LoGAH:
    """Meta-train a hypernetwork, resuming from ``config.out`` when it holds a checkpoint.

    ``stop_after`` ends the run early at that step (after its checkpoint, if one falls there), as a
    kill would; a later call resumes it. Under ``torchrun`` each rank draws its own architectures
    and data, and DistributedDataParallel averages the gradients.
    """
    dist, device = setup(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)  # the same initial hypernetwork on every rank
    family = get_family(config.family)
    hnet = LoGAH(config.hypernet, trained_max_dim=trained_max_dim(family)).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(hnet, config), lr=config.lr)
    seed = config.seed * 1_000_003 + 7919 * dist.rank  # different architectures and data on every rank
    sampler = ArchSampler(family, seed=seed)
    data = torch.Generator().manual_seed(seed + 1)
    generators = {"arch": sampler.generator, "data": data}
    step = 0
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        step, saved = load_state(checkpoint, hnet, optimizer, generators, dist.rank, dist.world_size)
        saved = {**TrainConfig().to_dict(), **saved, "out": config.out}  # settings added since: defaults; moved
        if saved != config.to_dict():
            raise CheckpointError(f"{checkpoint} was written with other settings; use a new --out to change them")
    model = DistributedDataParallel(hnet) if dist.enabled else hnet
    task = task_for(config.family)
    log = MetricsLog(out / METRICS_FILE, step) if dist.is_main else None
    bf16 = config.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", torch.bfloat16) if bf16 else nullcontext()
    last = min(config.steps, stop_after or config.steps)
    bar = _progress(step, config.steps, progress and dist.is_main)
    while step < last:
        start = time.perf_counter()
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        archs = sampler.sample(config.archs_per_step)
        nets, op_graphs = zip(*(arch_graph(a, config.hypernet.max_distance) for a in archs), strict=True)
        x, y = (t.to(device) for t in task.batch(config.batch_size, data))
        with autocast:
            predicted = model(list(op_graphs))
            loss, stream = _losses(task, nets, predicted, (x, y), streams=config.stream_penalty > 0)
        terms = {"stream_excess": stream} if stream is not None else {}
        if config.spectral_penalty:
            terms["spectral_excess"] = spectral_excess(predicted, op_graphs)
        weights = {"spectral_excess": config.spectral_penalty, "stream_excess": config.stream_penalty}
        optimizer.zero_grad(set_to_none=True)
        (loss + sum(weights[name] * term for name, term in terms.items())).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(hnet.parameters(), config.grad_clip)
        if not torch.isfinite(grad_norm):  # all ranks see the same averaged gradient, so all stop here
            raise TrainingDiverged(
                f"meta-training diverged at step {step + 1}: the gradient norm is {grad_norm.item()} (loss "
                f"{loss.item():.4g}); lower --lr or lengthen --warmup. The last checkpoint in {out} is intact"
            )
        optimizer.step()
        if config.base_gain_floor and hnet.config.mip:
            with torch.no_grad():
                hnet.base_gain.clamp_(min=config.base_gain_floor)
        step += 1
        mean_loss = dist.mean(loss)
        if log is not None:
            seconds = time.perf_counter() - start
            record = {"step": step, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm.item(), "seconds": seconds}
            log.write({**record, **{name: dist.mean(term) for name, term in terms.items()}})
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
            bar.update()
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_state(
                out, step, config.to_dict(), hnet, optimizer, generators, dist.rank, dist.world_size, dist.barrier
            )
            if dist.is_main:
                _publish(hnet, out, config.family)
    bar.close()
    return hnet


def _losses(
    task: ImageTask | TextTask,
    nets: Sequence[nn.Module],
    predicted: Sequence[dict[str, Tensor]],
    batch: Batch,
    streams: bool,
) -> tuple[Tensor, Tensor | None]:
    """The predicted networks' mean loss on ``batch`` and, with ``streams``, their mean
    :func:`~hypernets.train.spectra.stream_excess`."""
    losses, excesses = [], []
    for net, params in zip(nets, predicted, strict=True):
        with residual_writes(net) if streams else nullcontext({}) as found:
            losses.append(task.loss(net, params, batch))
        if streams:
            excesses.append(stream_excess(found))
    return torch.stack(losses).mean(), torch.stack(excesses).mean() if streams else None


def trained_max_dim(family: Family) -> int:
    """The largest tensor dimension in ``family``'s training space, recorded in the hypernetwork's config so
    that a prediction for anything wider warns. The widest architectures hold it; built on ``meta``."""
    choices = ArchSampler(family).choices
    widest = max(a.width for a in choices)
    return max(largest_dim(a.build("meta")) for a in choices if a.width == widest)


def _publish(hnet: LoGAH, out: Path, family: str) -> None:
    """The latest hypernetwork where ``hypernets predict`` and ``evaluate`` read it, and the loss curve so far."""
    hnet.save_pretrained(out / HYPERNET_DIR)
    metrics = read_metrics(out / METRICS_FILE)
    atomic_write(out / LOSS_PLOT, lambda path: plot_loss(metrics, path, f"meta-training on the {family} family"))


def _progress(step: int, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=step, disable=not enabled, desc="meta-training", unit="step")
