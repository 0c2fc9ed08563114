"""LoGAH: a low-rank graph hypernetwork that predicts every parameter of a ViT, GPT-2 or CNN.

A graph transformer reads the target's op graph; per node, a low-rank decoder emits factors
``A``, ``B`` so that ``W = A @ B.T``, and a small decoder emits 1-D tensors. With MIP on, inputs
are encoded with constant norm and outputs are residual: ``theta = theta_0 + h(graph)``, where
``theta_0`` is a reproducible random init (seeded by parameter name) times a learned gain per op
kind, and ``h`` starts at a tenth of the init scale. Each matrix's magnitude is the init scale times a gain
the hypernetwork predicts from the tensor's node: trained networks scale their layers differently
(a classifier head, a value projection), and one gain per op kind cannot.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from hypernets.checkpoint import CheckpointError, load_model, save_checkpoint
from hypernets.graph import to_op_graph
from hypernets.graph.inputs import Inputs
from hypernets.graph.vocab import OP_KINDS
from hypernets.kernels import accumulate_decoded_, decode
from hypernets.nn.decoders import LowRankDecoder, TiledDecoder, VectorDecoder
from hypernets.nn.encoder import EncoderConfig, GraphEncoder
from hypernets.nn.encoding import DEFAULT_FREQUENCIES
from hypernets.nn.plan import VECTOR_ROLES, WIDTH_SCALINGS, TargetPlan

CHECKPOINT_KIND = "hypernets.LoGAH"
INITIAL_RESIDUAL_GAIN = 0.1
PREDICT_PART_VALUES = 2**26  # predict_ decodes 64M values (256 MB in fp32) at a time


@dataclass(frozen=True)
class LoGAHConfig:
    """Sizes and switches of a LoGAH; saved as ``config.json`` next to the weights."""

    hidden: int = 128
    layers: int = 3
    heads: int = 8
    max_distance: int = 8
    rank: int = 16
    max_ck: int = 512
    decoder: str = "lowrank"  # "lowrank" (LoGAH) or "tiled" (GHN-3 baseline)
    tile: int = 64  # chunk size of the tiled decoder
    mip: bool = True
    seed: int = 0  # seeds theta_0, the MIP residual base
    shape_frequencies: int = DEFAULT_FREQUENCIES  # cos/sin frequencies of the shape encoding; more alias unseen widths
    width_scaling: str = "standard"  # decoded matrices shrink as 1/sqrt(fan_in) ("standard") or 1/fan_in ("mup")
    trained_max_dim: int = 0  # largest tensor dimension seen in meta-training (0: not recorded)

    def __post_init__(self) -> None:
        if self.decoder not in ("lowrank", "tiled"):
            raise ValueError(f"decoder must be 'lowrank' or 'tiled', got {self.decoder!r}")
        if self.width_scaling not in WIDTH_SCALINGS:
            raise ValueError(f"width_scaling must be one of {', '.join(WIDTH_SCALINGS)}, got {self.width_scaling!r}")
        if self.trained_max_dim < 0:
            raise ValueError(f"LoGAHConfig.trained_max_dim must be at least 0, got {self.trained_max_dim}")
        for name in ("hidden", "layers", "heads", "max_distance", "rank", "max_ck", "tile", "shape_frequencies"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoGAHConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"LoGAHConfig.hidden ({self.hidden}) must be divisible by heads ({self.heads})")


class WiderThanTrainedWarning(UserWarning):
    """The target has tensors wider than any the hypernetwork was meta-trained on: its prediction there is
    an extrapolation, measured in docs/benchmarks.md, and may start worse than a random init."""


def largest_dim(model: nn.Module) -> int:
    """The largest dimension of any parameter tensor of ``model`` (its widest layer, vocabulary or table)."""
    return max((max(p.shape) for p in model.parameters() if p.dim()), default=0)


class LoGAH(nn.Module):
    """Predicts the parameters of target networks from their op graphs.

    ``forward(graphs)`` is differentiable (meta-training); :meth:`predict`, :meth:`predict_many`
    and :meth:`predict_` are the inference API.
    """

    def __init__(self, config: LoGAHConfig | None = None, **overrides) -> None:
        super().__init__()
        self.config = config = LoGAHConfig(**{**(asdict(config) if config else {}), **overrides})
        self.encoder = GraphEncoder(
            EncoderConfig(
                hidden=config.hidden,
                layers=config.layers,
                heads=config.heads,
                max_distance=config.max_distance,
                mip=config.mip,
                num_frequencies=config.shape_frequencies,
            )
        )
        if config.decoder == "lowrank":
            self.matrix_decoder: nn.Module = LowRankDecoder(config.hidden, config.rank, config.max_ck)
        else:
            self.matrix_decoder = TiledDecoder(config.hidden, config.tile)
        self.vector_decoder = VectorDecoder(config.hidden, config.max_ck)
        self.log_gain = nn.Linear(config.hidden, 1)  # per-matrix log-gain; zero: a fresh one leaves scales as planned
        nn.init.zeros_(self.log_gain.weight)
        nn.init.zeros_(self.log_gain.bias)
        if config.mip:
            self.residual_gain = nn.Parameter(torch.full((len(OP_KINDS),), INITIAL_RESIDUAL_GAIN))
            self.base_gain = nn.Parameter(torch.ones(len(OP_KINDS)))
            self.vector_offset = nn.Parameter(torch.zeros(len(VECTOR_ROLES)))

    # -- differentiable prediction ----------------------------------------------------------------
    def forward(
        self, graphs: Sequence[Data], dtype: torch.dtype | None = None, backend: str = "auto"
    ) -> list[dict[str, Tensor]]:
        """Predicted tensors, one ``{name: tensor}`` per op graph, in exact shapes, ``dtype`` (fp32)."""
        results: list[dict[str, Tensor]] = [{} for _ in graphs]
        for part in self.predictions(graphs, dtype, backend):
            for result, predicted in zip(results, part, strict=True):
                result.update(predicted)
        return results

    def predictions(
        self,
        graphs: Sequence[Data],
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        max_values: int | None = None,
        plans: Sequence[TargetPlan] | None = None,
    ) -> Iterator[list[dict[str, Tensor]]]:
        """Like :meth:`forward`, in parts of at most ``max_values`` predicted values each (one part when
        ``None``), or one part per plan of ``plans`` (from ``TargetPlan.for_graphs``): the graph is encoded once,
        then decoded part by part, so that a caller that stores each part away bounds the memory prediction
        needs beyond the parameters themselves."""
        device = self.vector_decoder.head[0].weight.device
        h = self.encoder(Batch.from_data_list(list(graphs)).to(device))
        for plan in plans or TargetPlan.for_graphs(graphs, self.config.max_ck, max_values):
            yield plan.unflatten(self._decode(h, plan, dtype or torch.float32, backend))

    def _decode(self, h: Tensor, plan: TargetPlan, out_dtype: torch.dtype, backend: str) -> Tensor:
        """The plan's flat parameter buffer from node embeddings ``h``."""
        device = h.device
        scale = plan.scale(self.config.rank, self.config.width_scaling).to(device)
        vectors = self.vector_decoder(h, plan) if plan.vectors else None
        vector_base = plan.vector_base().to(device)
        in_place = not torch.is_grad_enabled() and device.type == "cpu" and backend in ("auto", "torch")
        theta0 = self._theta0(plan, vector_base, device, in_place) if self.config.mip else None
        if vectors is not None and not self.config.mip:  # fold the constants in: scale * (v + base / scale)
            vectors = vectors + vector_base / scale[plan.layout.n_matrices :].repeat_interleave(
                plan.vector_sizes.to(device)
            )
        gains = self._matrix_gains(h, plan)
        if isinstance(self.matrix_decoder, TiledDecoder):
            return self._tiled_flat(h, plan, scale, gains, theta0, vectors, out_dtype)
        a, b = self.matrix_decoder(h, plan)
        a = a * gains[plan.a.row_entries.to(device)][:, None]  # scale must stay constant for the kernel
        if in_place and theta0 is not None:
            return accumulate_decoded_(theta0, a, b, plan.layout, scale, vectors).to(out_dtype)
        return decode(a, b, plan.layout, scale, theta0, vectors, out_dtype, backend)

    def _matrix_gains(self, h: Tensor, plan: TargetPlan) -> Tensor:
        """``[n_matrices]`` multipliers of the planned scales: predicted per tensor, times the op kind's
        residual gain under MIP."""
        nodes = torch.tensor([e.node for e in plan.matrices], dtype=torch.long, device=h.device)
        gains = self.log_gain(h[nodes]).squeeze(-1).exp()
        return gains * self.residual_gain[plan.matrix_kinds.to(h.device)] if self.config.mip else gains

    def _theta0(self, plan: TargetPlan, vector_base: Tensor, device: torch.device, in_place: bool) -> Tensor:
        """theta_0 as one flat buffer: the seeded random base times its op kind's base gain, then the vectors'
        constants. ``in_place`` (inference on CPU) applies the gains inside the one buffer it returns."""
        gains = self.base_gain[plan.matrix_kinds.to(device)]
        roles = plan.vector_roles.to(device).repeat_interleave(plan.vector_sizes.to(device))
        vectors = vector_base + self.vector_offset[roles]
        if not in_place:
            segments = plan.matrix_base(self.config.seed).to(device).split(plan.matrix_numels)
            return torch.cat([*(segment * gain for segment, gain in zip(segments, gains, strict=True)), vectors])
        flat = torch.empty(plan.layout.total)
        matrices = plan.matrix_base(self.config.seed, out=flat[: plan.layout.matrix_numel])
        for segment, gain in zip(matrices.split(plan.matrix_numels), gains.tolist(), strict=True):
            segment.mul_(gain)
        flat[plan.layout.matrix_numel :] = vectors
        return flat

    def _tiled_flat(self, h, plan, scale, gains, theta0, vectors, out_dtype) -> Tensor:
        """The baseline's flat buffer, same contract as :func:`hypernets.kernels.decode`, in eager torch."""
        parts = []
        for i, matrix in enumerate(self.matrix_decoder(h, plan)):
            parts.append(matrix * scale[i] * gains[i])
        if vectors is not None:
            parts.append(vectors * scale[plan.layout.n_matrices :].repeat_interleave(plan.vector_sizes.to(h.device)))
        flat = torch.cat(parts)
        return (flat if theta0 is None else flat + theta0).to(out_dtype)

    # -- inference API ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_many(
        self, models: Sequence[nn.Module], inputs: Sequence[Inputs] | None = None, dtype: torch.dtype | None = None
    ) -> list[dict[str, Tensor]]:
        """Predict every parameter of each model in one batched pass of the hypernetwork."""
        return self(self.op_graphs(models, inputs), dtype=dtype)

    def op_graphs(self, models: Sequence[nn.Module], inputs: Sequence[Inputs] | None) -> list[Data]:
        """Op graphs of ``models``; a parameter the forward pass never reads is an error, not a skip."""
        inputs = inputs if inputs is not None else [None] * len(models)
        graphs = [to_op_graph(m, i, max_distance=self.config.max_distance) for m, i in zip(models, inputs, strict=True)]
        for model, graph in zip(models, graphs, strict=True):
            self._warn_if_wider_than_trained(model)
            if graph.unused:
                raise ValueError(
                    f"{type(model).__name__}: parameters {', '.join(graph.unused)} are never read by the forward "
                    f"pass, so the hypernetwork cannot place them; remove them or freeze them before predicting"
                )
        return graphs

    def _warn_if_wider_than_trained(self, model: nn.Module) -> None:
        trained = self.config.trained_max_dim
        if not trained:
            return
        wider = [(name, max(p.shape)) for name, p in model.named_parameters() if p.dim() and max(p.shape) > trained]
        if wider:
            name, dim = max(wider, key=lambda item: item[1])
            warnings.warn(
                f"{type(model).__name__} has {len(wider)} parameter tensors wider than any this hypernetwork was "
                f"meta-trained on (dimensions up to {trained}); the widest is {name} with {dim}. Predictions "
                "that far out are extrapolated: see docs/benchmarks.md for how far each shipped hypernetwork holds",
                WiderThanTrainedWarning,
                stacklevel=4,
            )

    def predict(self, model: nn.Module, inputs: Inputs = None, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Every parameter of ``model`` by name (tied parameters once), without touching the model."""
        return self.predict_many([model], [inputs], dtype)[0]

    @torch.no_grad()
    def predict_(self, model: nn.Module, inputs: Inputs = None, device: str | torch.device | None = None) -> nn.Module:
        """Fill every parameter of ``model`` in place with predictions, in its own dtypes.

        A model built on the ``meta`` device is materialized on ``device`` (default: the
        hypernetwork's) with predicted values, so a huge model never needs a random init first.
        """
        graphs = self.op_graphs([model], [inputs])
        if any(p.is_meta for p in model.parameters()):
            _materialize(model, device or self.vector_decoder.head[0].weight.device)
        params = dict(model.named_parameters())
        for (part,) in self.predictions(graphs, max_values=PREDICT_PART_VALUES):
            for name, value in part.items():
                params[name].copy_(value)
        return model

    # -- checkpoints ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` in ``directory``, each written atomically."""
        save_checkpoint(directory, {"kind": CHECKPOINT_KIND, **asdict(self.config)}, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoGAH:
        """A checkpoint directory, or the name of a shipped hypernetwork (``"vit-mnist"``, ``"gpt2-pydoc"``;
        see :mod:`hypernets.pretrained`). An existing directory of that name wins."""
        return load_model(_checkpoint_dir(directory), CHECKPOINT_KIND, LoGAHConfig, cls).to(map_location)


def _checkpoint_dir(name_or_dir: str | os.PathLike) -> Path:
    """An existing directory as it is, else the shipped hypernetwork of that name."""
    from hypernets import pretrained

    path = Path(name_or_dir)
    if path.exists():
        return path
    if str(name_or_dir) in pretrained.available():
        return pretrained.pretrained_dir(str(name_or_dir))
    raise CheckpointError(
        f"{path} does not exist and is not a shipped hypernetwork ({', '.join(pretrained.available())})"
    )


def _materialize(model: nn.Module, device: str | torch.device) -> None:
    """``to_empty`` on ``device``, keeping tied parameters tied (``to_empty`` would untie them) and
    resetting batch-norm statistics; any other buffer would be left uninitialized, so it is an error."""
    resettable = {id(b) for m in model.modules() if hasattr(m, "reset_running_stats") for b in m.buffers()}
    other = [name for name, b in model.named_buffers() if id(b) not in resettable]
    if other:
        raise ValueError(
            f"{type(model).__name__} has buffers ({', '.join(other[:5])}) that a meta-device model cannot "
            f"materialize with predictions alone; build it on a real device instead"
        )
    first: dict[int, str] = {}
    aliases: list[tuple[str, str]] = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases.append((name, first[id(param)]))
        else:
            first[id(param)] = name
    model.to_empty(device=device)
    for alias, name in aliases:
        owner, _, attribute = alias.rpartition(".")
        setattr(model.get_submodule(owner), attribute, model.get_parameter(name))
    for module in model.modules():
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
