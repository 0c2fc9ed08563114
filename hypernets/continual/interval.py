"""HyperInterval (Krukowski et al., 2024; later titled HINT): interval task embeddings, mapped by a
hypernetwork to weight intervals by interval bound propagation (IBP), and one universal embedding in
their intersection that gives a single network for all tasks.

What the authors' code does (github.com/pkrukowski1/HyperInterval: ``README.md``, ``IntervalNets/hmlp_ibp_*``,
``Training/train_{nested,non_forced}_classification_scenario.py``, ``Utils/prepare_*_scenario_params.py``,
``Utils/hnet_interval_regularizer.py``, ``LossFunctions/classification_loss_function.py``), checked here:

- **Two variants.** The README trains task-incremental learning with the "non-forced" script
  (``hmlp_ibp_wo_nesting.py``): task ``t``'s interval is centered at its free embedding ``e_t`` (hypnettorch's
  N(0, 1) init, no copy from the last task) with the learned radius ``eps * softmax(v_t)`` (``v_t`` trains with
  the task, starts uniform); Split-MNIST: ``eps = 1``, embedding 72, hypernetwork ``[75, 75]``, batch 128,
  ``beta = 0.01``. The universal embedding comes from the nested script, which the README calls the
  domain-incremental one: task ``t``'s interval is centered at ``sigma * cos(e_t)`` with ``sigma = eps / (2M)``
  and the fixed radius ``eps / M`` in every coordinate, so every interval contains the cube
  ``[-r/2, r/2]^M`` (``r = eps / M``) and any set of tasks intersects. ``e_t`` starts as a copy of
  ``e_{t-1}``. Split-MNIST: ``eps = 10``, embedding 24, hypernetwork ``[100]``, batch 64, ``beta = 0.001``.
  Either way ``e_t`` (and ``v_t``) are frozen after task ``t``, and every task has a 2-way head.
- **IBP through the hypernetwork** (a ReLU MLP, embedding -> all target parameters; ``[100]`` hidden for
  Split-MNIST): center/radius form, ``c <- W c + b``, ``r <- |W| r`` for a linear layer, and for ReLU the
  midpoint and half-width of ``[relu(c - r), relu(c + r)]``. The output box ``[theta_c - theta_r,
  theta_c + theta_r]`` is the task's weight interval; its midpoint ``theta_c`` is the task's network.
- **Training on weight intervals.** For Split-MNIST the target (an MLP) runs in full interval mode: the input
  is a point, the weights an interval, and each layer gives tight lower/upper activations (inputs are
  non-negative: pixels, then ReLUs). The loss is ``kappa * CE(point network at theta_c) + (1 - kappa) *
  CE(worst-case logits)``, the worst case taking the lower bound for the true class and the upper bound for
  the others. Over the first half of each task the perturbation ``eps`` grows linearly from 0; ``kappa``
  is lowered by 5e-5 a step in that half (to 0.95 after 1000 steps) and set to its final 0.5 in the second.
- **Regularizer.** Before task ``t`` the lower, middle and upper weights of every earlier task (at the full
  ``eps``) are frozen; the loss adds ``beta * sum_j (|dlower_j|^2 + |dmiddle_j|^2 + |dupper_j|^2) / (3 t)``,
  which their script divides by ``t`` once more. The whole hypernetwork and the current embedding train
  (Adam, lr 1e-3).
- **Universal embedding**: the midpoint of the intersection of all tasks' intervals (per coordinate, the
  largest lower and the smallest upper end), fed to the hypernetwork with the same radius; the box midpoint
  is the one network evaluated on every task. Split-MNIST has one 2-way head shared by all tasks (label:
  first or second digit of the pair), so that network never needs the task: it answers "even or odd digit".
- Both Split-MNIST runs: 2000 iterations per task, target MLP 784-400-400-2.

Here ``nesting=False`` is the task-incremental variant (grid method ``hyperinterval``), ``nesting=True`` the
nested one (``hyperinterval-universal``), both at the grid's one ``eps``. The target is the benchmarks'
784-100-100-2 MLP and the hypernetwork von Oswald et al.'s chunked one (the chunk embeddings are points in the
IBP; a full-output MLP was 10x slower a step on CPU); ``kappa`` follows their schedule; only the radius ramps
(nested, the centers keep ``sigma`` of the full ``eps``; theirs scale with the current ``eps``, so at step 0
every center is 0); the penalty is
:class:`~hypernets.continual.regularizer.OutputRegularizer` on the stacked bounds, ``beta * mean_j mean_bound
|d|^2`` (divided by the number of earlier tasks once); the last step's network is kept (theirs keeps the step
of lowest training loss at full ``eps``, nested, or of best validation accuracy, non-forced).

**A head per task** (``multihead``, not the reference's): the target has one 2-way block of outputs per task and
the task id picks the block, as EWC's and SI's single network here; :func:`head_masks` leaves the blocks of other
tasks out of each task's bounds in the regularizer. With one shared head the universal network must tell the
first digit of every pair from the second without the task (domain-incremental, no replay), and stays near 60%;
with a head per task it shares everything but the head block, and at a small ``eps`` (0.1) reaches 97.7 ± 0.6% on
Split-MNIST (docs/continual.md). There the nested intervals nearly coincide, so the gain is the shared network
kept by the bounds regularizer, not the width of the intervals: wider ones (``eps`` 1 or 10) did worse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from hypernets.continual.benchmarks import Task
from hypernets.continual.hypernet import ChunkedHypernet
from hypernets.continual.learners import PerTaskNetworks
from hypernets.continual.regularizer import OutputRegularizer

KAPPA_DECAY = 5e-5  # per step, while the perturbation ramps up (the reference's schedule)


def linear_bounds(center: Tensor, radius: Tensor, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The box ``[c - r, c + r]`` through ``x -> x W^T + b`` with point weights: exactly the smallest box
    around the image, ``(W c + b, |W| r)``."""
    return F.linear(center, weight, bias), F.linear(radius, weight.abs())


def relu_bounds(center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """The box ``[c - r, c + r]`` through ReLU, as center and radius of ``[relu(c - r), relu(c + r)]``."""
    lower, upper = F.relu(center - radius), F.relu(center + radius)
    return (upper + lower) / 2, (upper - lower) / 2


def sequential_bounds(network: nn.Sequential, center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """Interval bound propagation of an input box through a stack of ``Linear`` and ``ReLU`` layers."""
    for layer in network:
        if isinstance(layer, nn.Linear):
            center, radius = linear_bounds(center, radius, layer.weight, layer.bias)
        elif isinstance(layer, nn.ReLU):
            center, radius = relu_bounds(center, radius)
        else:
            raise TypeError(f"no interval bounds through {type(layer).__name__}: Linear and ReLU layers only")
    return center, radius


def interval_linear(
    lower: Tensor, upper: Tensor, w_lower: Tensor, w_upper: Tensor, b_lower: Tensor, b_upper: Tensor
) -> tuple[Tensor, Tensor]:
    """Non-negative inputs in ``[lower, upper]`` through a linear layer whose weights and biases are
    intervals: the exact bounds (with ``x >= 0``, ``w x`` is smallest at ``w_lower`` and then at ``x = lower``
    where ``w_lower >= 0``, ``x = upper`` where it is negative; the upper bound alike)."""
    if (lower < 0).any():
        raise ValueError("interval_linear needs non-negative inputs (pixels, or activations after a ReLU)")
    low = lower @ w_lower.clamp(min=0).T + upper @ w_lower.clamp(max=0).T + b_lower
    high = upper @ w_upper.clamp(min=0).T + lower @ w_upper.clamp(max=0).T + b_upper
    return low, high


def target_bounds(
    target: nn.Sequential, lower: dict[str, Tensor], upper: dict[str, Tensor], x: Tensor
) -> tuple[Tensor, Tensor]:
    """Bounds on the logits of ``target`` (``Linear`` and ``ReLU`` layers) for point inputs ``x >= 0`` when
    every parameter lies between ``lower`` and ``upper`` (``{name: tensor}`` as ``named_parameters``)."""
    low = high = x
    for name, layer in target.named_children():
        if isinstance(layer, nn.Linear):
            weight, bias = f"{name}.weight", f"{name}.bias"
            low, high = interval_linear(low, high, lower[weight], upper[weight], lower[bias], upper[bias])
        elif isinstance(layer, nn.ReLU):
            low, high = F.relu(low), F.relu(high)
        else:
            raise TypeError(f"no interval bounds through {type(layer).__name__}: Linear and ReLU layers only")
    return low, high


def worst_case_logits(lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """The logits an adversary inside the bounds would pick: lowest for the true class, highest elsewhere."""
    return torch.where(F.one_hot(y, lower.shape[-1]).bool(), lower, upper)


def intersection(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """``[k, M]`` boxes -> the ``[M]`` box they all contain; an empty intersection is an error."""
    low, high = lower.max(0).values, upper.min(0).values
    if (low > high).any():
        raise ValueError("the intervals do not intersect")
    return low, high


class IntervalHypernet(ChunkedHypernet):
    """von Oswald et al.'s chunked hypernetwork (``MLP([embedding, chunk embedding]) -> chunk``) evaluated on
    embedding intervals by IBP; the chunk embeddings are points, only the task embedding is an interval.

    With ``nesting`` (the reference's domain-incremental variant, the one with a universal embedding) task
    ``t``'s interval is centered at ``eps / (2M) * cos(e_t)`` with radius ``eps / M`` in each of the ``M``
    coordinates, so all intervals share the cube ``[-eps / 2M, eps / 2M]^M``. Without (the reference's
    task-incremental variant) it is centered at ``e_t`` itself with the learned radius ``eps * softmax(v_t)``:
    tasks may sit far apart, and no intersection is promised. ``forward(tasks)`` (the :class:`TaskHypernet`
    interface) gives each task's network, the midpoint of its weight box.
    """

    def __init__(
        self,
        target: nn.Module,
        num_tasks: int,
        embedding_dim: int = 32,
        chunk_embedding_dim: int = 32,
        chunk_size: int = 4096,
        hidden: Sequence[int] = (100, 100),
        perturbation: float = 10.0,
        nesting: bool = True,
    ) -> None:
        super().__init__(target, num_tasks, embedding_dim, chunk_embedding_dim, chunk_size, hidden)
        self.perturbation, self.nesting = perturbation, nesting
        # softmax(0) = 1 / M: every radius starts at eps / M, as the reference's (a softmax of a constant)
        self.radius_logits = nn.ParameterList(
            [nn.Parameter(torch.zeros(embedding_dim), requires_grad=not nesting) for _ in range(num_tasks)]
        )

    def weights(self) -> list[nn.Parameter]:
        """What all tasks share: neither the task embeddings nor their radii."""
        own = {id(p) for p in self.radius_logits}
        return [p for p in super().weights() if id(p) not in own]

    def trainable(self, task: int) -> list[nn.Parameter]:
        """The shared weights, ``task``'s embedding and, without nesting, its radius."""
        return [*super().trainable(task), *([] if self.nesting else [self.radius_logits[task]])]

    def centers(self, tasks: Tensor) -> Tensor:
        """``[k]`` task ids -> ``[k, M]`` interval centers: ``eps / (2M) * cos(e_t)`` nested, else ``e_t``."""
        e = self.embed(tasks)
        return self.perturbation / self.embedding_dim / 2 * torch.cos(e) if self.nesting else e

    def radii(self, tasks: Tensor) -> Tensor:
        """``[k]`` task ids -> ``[k, M]`` half-widths ``eps * softmax(v_t)`` (``eps / M`` while nested)."""
        logits = torch.stack([self.radius_logits[int(t)] for t in tasks])
        return self.perturbation * torch.softmax(logits, dim=-1)

    def bounds(self, center: Tensor, radius: Tensor | float) -> tuple[Tensor, Tensor]:
        """``[k, M]`` embedding boxes -> ``[k, num_params]`` center and radius of the weight boxes."""
        body = self.body
        center, radius = sequential_bounds(body.trunk, center, torch.as_tensor(radius).expand_as(center))
        center = body.pairs(center, body.chunk_embeddings)
        radius = body.pairs(radius, torch.zeros_like(body.chunk_embeddings))  # chunk embeddings are points
        center, radius = sequential_bounds(body.head, center, radius)
        return body.cut(center), body.cut(radius)

    def task_bounds(self, tasks: Tensor, share: float = 1.0) -> tuple[Tensor, Tensor]:
        """``[k]`` task ids -> their weight boxes, with the embedding radii scaled by ``share``."""
        return self.bounds(self.centers(tasks), share * self.radii(tasks))

    def forward(self, tasks: Tensor) -> Tensor:
        """``[k]`` task ids -> ``[k, num_params]``: each task's network, the midpoint of its weight box."""
        return self.task_bounds(tasks)[0]

    def universal_embedding(self, num_tasks: int) -> Tensor:
        """``[M]``: the midpoint of the intersection of tasks ``0 .. num_tasks - 1``'s intervals."""
        tasks = torch.arange(num_tasks)
        centers, radii = self.centers(tasks), self.radii(tasks)
        low, high = intersection(centers - radii, centers + radii)
        return (low + high) / 2

    def universal(self, num_tasks: int) -> dict[str, Tensor]:
        """The single network for the first ``num_tasks`` tasks: the midpoint of the weight box around the
        universal embedding with radius ``eps / M``, as the reference evaluates it."""
        embedding = self.universal_embedding(num_tasks)[None]
        radius = torch.full_like(embedding, self.perturbation / self.embedding_dim)
        return self.unflatten(self.bounds(embedding, radius)[0][0])


class WeightBounds(nn.Module):
    """``[k]`` task ids -> ``[k, 3, num_params]`` lower, middle and upper weights at the full perturbation:
    what :class:`OutputRegularizer` keeps in place for earlier tasks. ``used[t]`` (``[num_tasks, num_params]``,
    0 or 1) zeroes the weights task ``t`` never reads (other tasks' heads), so that those stay free."""

    def __init__(self, hypernet: IntervalHypernet, used: Tensor | None = None) -> None:
        super().__init__()
        self.hypernet, self.used = hypernet, used

    def forward(self, tasks: Tensor) -> Tensor:
        center, radius = self.hypernet.task_bounds(tasks)
        bounds = torch.stack([center - radius, center, center + radius], dim=1)
        return bounds if self.used is None else bounds * self.used[tasks][:, None]


def head_masks(hypernet: IntervalHypernet, target: nn.Sequential, num_tasks: int) -> Tensor:
    """``[num_tasks, num_params]``: 1 where task ``t`` reads the weight, i.e. everywhere but the rows of the last
    ``Linear`` (weight and bias) that belong to other tasks' blocks of ``out_features / num_tasks`` outputs.
    Without it an earlier task's bounds would pin the untrained heads of later tasks where they started."""
    last = [name for name, layer in target.named_children() if isinstance(layer, nn.Linear)][-1]
    width = target.get_submodule(last).out_features // num_tasks
    masks = []
    for task in range(num_tasks):
        rows = torch.zeros(num_tasks * width)
        rows[task * width : (task + 1) * width] = 1
        parts = []
        for name, shape in zip(hypernet.names, hypernet.shapes, strict=True):
            part = torch.ones(shape)
            if name in (f"{last}.weight", f"{last}.bias"):
                part = rows.view(-1, *[1] * (len(shape) - 1)).expand(shape)
            parts.append(part.flatten())
        masks.append(torch.cat(parts))
    return torch.stack(masks)


class HyperIntervalLearner(PerTaskNetworks):
    """Trains the hypernetwork and task ``t``'s embedding on ``kappa * CE(midpoint network) + (1 - kappa) *
    CE(worst case over the weight box)`` plus the bounds regularizer, on the schedule of :meth:`schedule`.
    With ``universal``, every prediction comes from the one network of the universal embedding of the tasks
    learned so far, whatever task is asked; with ``multihead`` the task's block of its outputs (:meth:`head`)."""

    def __init__(
        self,
        hypernet: IntervalHypernet,
        target: nn.Sequential,
        classes: Sequence[Sequence[int]],
        steps: int,
        beta: float,
        kappa: float = 0.5,
        lr: float = 1e-3,
        universal: bool = False,
        multihead: bool = False,
    ) -> None:
        super().__init__(classes)
        self.hypernet, self.target, self.steps, self.kappa, self.lr = hypernet, target, steps, kappa, lr
        self.universal, self.multihead = universal, multihead
        self.regularizer = OutputRegularizer(beta)
        self.bounds = WeightBounds(hypernet, head_masks(hypernet, target, len(classes)) if multihead else None)
        self.optimizer: torch.optim.Adam | None = None
        self.step = 0

    def begin_task(self, task: int) -> None:
        if task > 0 and self.hypernet.nesting:  # the reference's nested runs start from the last embedding
            with torch.no_grad():
                self.hypernet.task_embeddings[task].copy_(self.hypernet.task_embeddings[task - 1])
        self.optimizer = torch.optim.Adam(self.hypernet.trainable(task), lr=self.lr)
        self.step = 0

    def schedule(self) -> tuple[float, float]:
        """``(share of the perturbation, kappa)`` at this step, as in the reference: over the first half of the
        task's steps the perturbation grows linearly from 0 to full and ``kappa`` falls from 1 by
        ``KAPPA_DECAY`` a step (the worst case barely counts yet); from the half on, full and ``self.kappa``."""
        half = self.steps // 2
        if self.step >= half:
            return 1.0, self.kappa
        return self.step / max(1, half - 1), max(1 - KAPPA_DECAY * self.step, self.kappa)

    def head(self, task: int, outputs: Tensor) -> Tensor:
        """Task ``task``'s logits: all outputs, or with ``multihead`` its own block of them (the target then has
        one block per task, and the task id picks the block, as for one network with a head per task)."""
        if not self.multihead:
            return outputs
        width = self.classes.shape[1]
        return outputs[..., task * width : (task + 1) * width]

    def logits(self, task: int, x: Tensor) -> Tensor:
        params = self.hypernet.universal(self.learned) if self.universal else self.hypernet.predict(task)
        return self.head(task, functional_call(self.target, params, (x,)))

    def train_step(self, task: int, x: Tensor, y: Tensor) -> dict[str, float]:
        self.hypernet.zero_grad(set_to_none=True)
        ramp, kappa = self.schedule()
        center, radius = self.hypernet.task_bounds(torch.tensor([task]), ramp)
        middle = self.hypernet.unflatten(center[0])
        lower, upper = self.hypernet.unflatten(center[0] - radius[0]), self.hypernet.unflatten(center[0] + radius[0])
        fit = F.cross_entropy(self.head(task, functional_call(self.target, middle, (x,))), y)
        low, high = (self.head(task, bound) for bound in target_bounds(self.target, lower, upper, x))
        worst = F.cross_entropy(worst_case_logits(low, high, y), y)
        loss = kappa * fit + (1 - kappa) * worst
        stats = {"loss": fit.item(), "worst_case_loss": worst.item()}
        if len(self.regularizer.tasks):
            penalty = self.regularizer(self.bounds)
            loss = loss + penalty
            stats["reg"] = penalty.item()
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return stats

    def end_task(self, task: int, data: Task) -> None:
        self.regularizer.snapshot(self.bounds, range(task + 1))
        self.learned = task + 1
