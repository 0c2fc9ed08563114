"""Meta-training: teach a metanetwork to rewrite trained networks so their channels are easy to prune.

Each step samples a member of the population, rewrites its neuron graph with the metanetwork and
minimises ``task loss on an MNIST batch + lambda * group lasso`` of the rewritten network, so the
metanetwork learns to push whole channel groups towards zero while keeping the network's function.
Members' graphs and channel groups are built once and reused. Metrics go to ``metrics.jsonl`` (one
object per step) and the metanetwork to ``config.json`` + ``model.safetensors``, written atomically.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from tqdm.auto import tqdm

from hypernets.atomic import atomic_write
from hypernets.graph import to_neuron_graph
from hypernets.optim import adamw_groups

from .metanet import GraphLayout, Metanet, MetanetConfig, graph_state
from .objective import ChannelGroups, ObjectiveConfig, group_penalty, objective_terms
from .population import INPUT_SHAPE, list_members, load_member, mnist

METRICS_FILE = "metrics.jsonl"
TRAIN_CONFIG_FILE = "metatrain.json"


@dataclass(frozen=True)
class MetaTrainConfig:
    """Optimisation settings; the metanetwork's and the objective's live in their own configs."""

    steps: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    alpha_lr_scale: float = 30.0  # the residual scales (two scalars, starting at 1e-3) learn this much faster
    weight_decay: float = 1e-2  # on weight matrices only
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    metanet: MetanetConfig = field(default_factory=MetanetConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


@dataclass
class Member:
    """A population member prepared once: model, neuron graph, layout, groups and its own penalty."""

    name: str
    model: nn.Module
    graph: Data
    layout: GraphLayout
    groups: ChannelGroups
    penalty: Tensor

    @classmethod
    def load(
        cls, directory: str | os.PathLike, device: str | torch.device = "cpu", penalty: str = ObjectiveConfig.penalty
    ) -> Member:
        model, _ = load_member(directory)
        for param in model.parameters():
            param.requires_grad_(False)
        graph = to_neuron_graph(model, INPUT_SHAPE).to(device)  # built on the CPU, where all its tensors agree
        model.to(device)
        groups = ChannelGroups.of(graph)
        return cls(
            Path(directory).name, model, graph, GraphLayout.of(graph), groups, group_penalty(graph, groups, penalty)
        )

    def evaluate(self, metanet: Metanet, batch: tuple[Tensor, Tensor], config: ObjectiveConfig) -> dict[str, Tensor]:
        """The objective's terms for this member rewritten by ``metanet``."""
        transformed = metanet(self.graph, self.layout)
        state = graph_state(transformed)
        return objective_terms(self.model, state, transformed, self.groups, batch, config, self.penalty)


def train_metanet(
    population: str | os.PathLike, output: str | os.PathLike, config: MetaTrainConfig, progress: bool = True
) -> Metanet:
    """Meta-train a fresh metanetwork on every member under ``population``; saves it to ``output``."""
    directories = list_members(population)
    if not directories:
        raise ValueError(f"{population} holds no population members (NAME/model.json); build one first")
    torch.manual_seed(config.seed)
    sampler = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    members = [Member.load(d, config.device, config.objective.penalty) for d in directories]
    images, labels = (t.to(config.device) for t in mnist("train").tensors)
    metanet = Metanet(config.metanet).to(config.device)
    # alpha scales every rewrite; at the base rate it could grow only a few percent in a short run
    groups = adamw_groups(metanet, config.lr, config.weight_decay, ["alpha"], config.alpha_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with (output / METRICS_FILE).open("w") as log:
        for step in tqdm(range(config.steps), desc="metatrain", disable=not progress):
            member = sampler.choice(members)
            index = torch.randint(len(labels), (config.batch_size,), generator=generator).to(config.device)
            terms = member.evaluate(metanet, (images[index], labels[index]), config.objective)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            grad_norm = nn.utils.clip_grad_norm_(metanet.parameters(), config.grad_clip)
            optimizer.step()
            record = {"step": step, "member": member.name, "grad_norm": float(grad_norm)}
            record |= {name: value.item() for name, value in terms.items()}
            log.write(json.dumps(record) + "\n")
            log.flush()
    metanet.save_pretrained(output)
    text = json.dumps(asdict(config), indent=2) + "\n"
    atomic_write(output / TRAIN_CONFIG_FILE, lambda path: Path(path).write_text(text))
    return metanet
