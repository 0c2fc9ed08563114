"""Which predicted parts make a predicted GPT-2 slow to fine-tune.

Each row is a byte-level GPT-2 (named like ``l2-w768``) whose parameters come from two sources, Hugging
Face's random init and a hypernetwork's prediction: ``random`` and ``predicted`` take everything from one,
``random:PART,...`` is random init with those parts predicted, ``predicted:PART,...`` the prediction with
those parts random, ``shrink:L`` is ``L * predicted + random init`` (shrink and perturb, Ash & Adams 2020:
the remedy they found for warm starts that train worse than fresh ones), and ``clipped`` the prediction with
its matrices' singular values capped at random init's largest. Rows that transform the prediction's matrices
(those of the named parts, every matrix when none is named):

- ``complete:E[:PART,...]``: a full-rank completion that keeps the prediction's function on what it uses:
  each matrix plus random init's matrix projected off its top singular subspaces (left and right) holding
  the fraction ``E`` of its squared singular values (``complete:0.9``).
- ``flattened:A[:PART,...]``: each matrix's singular values raised to the power ``A`` at its own Frobenius
  norm (random init's with ``--match-norms``); ``flattened:0`` keeps only the prediction's singular vectors,
  ``flattened:1`` changes nothing.
- ``rescaled:K``: every residual-stream writer (embeddings, positions, output projections) times ``K`` and
  the final LayerNorm divided by ``K``: the same function, other AdamW step sizes relative to the writers.

``--balance P`` then scales each residual writer (first block first) so that what it adds to the stream on
64 eval windows has random init's rms (to the power ``P``). Parts: embeddings, positions, blocks,
block-matrices, attention-matrices, mlp-matrices, vectors. Every row is fine-tuned with AdamW on the same
batches for the same steps, and its eval loss printed at evenly spaced steps. For reference, the eval loss of
unigram and bigram byte models counted on the train split (add-k smoothing towards the unigram), and each
predicted matrix's std, effective rank and largest singular value beside random init's.

    python recipes/bench/bench_finetune_parts.py --hypernet gpt2-pydoc --target l2-w768 --threads 1
    python recipes/bench/bench_finetune_parts.py --rows predicted --lr 1e-3 --threads 1
    python recipes/bench/bench_finetune_parts.py --rows predicted --base-gain 1 --threads 1  # full random base
    python recipes/bench/bench_finetune_parts.py --rows random:block-matrices --match-norms  # shape, not size
    python recipes/bench/bench_finetune_parts.py --rows random shrink:0.1 shrink:0.3 --target l2-w512 --seed 2
    python recipes/bench/bench_finetune_parts.py --rows complete:0.9 flattened:0 flattened:0.5:mlp-matrices
    python recipes/bench/bench_finetune_parts.py --rows flattened:0 --match-norms --target l2-w1024
    python recipes/bench/bench_finetune_parts.py --rows complete:0.9 rescaled:0.3 --balance 1 --target l2-w512
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from bench_widths import target  # the widths bench's lL-wW targets (a script's folder is on sys.path)
from torch import Tensor

from hypernets import LoGAH
from hypernets.evaluate import finetune, initialize
from hypernets.spectrum import flatten_matrix
from hypernets.train.tasks import TextTask

PARTS: dict[str, Callable[[str, Tensor], bool]] = {
    "embeddings": lambda name, _: name in ("transformer.wte.weight", "lm_head.weight"),  # tied: both names
    "positions": lambda name, _: name == "transformer.wpe.weight",
    "blocks": lambda name, _: name.startswith("transformer.h."),
    "block-matrices": lambda name, tensor: name.startswith("transformer.h.") and tensor.ndim == 2,
    "attention-matrices": lambda name, tensor: ".attn." in name and tensor.ndim == 2,
    "mlp-matrices": lambda name, tensor: ".mlp." in name and tensor.ndim == 2,
    "vectors": lambda _, tensor: tensor.ndim == 1,
}
DEFAULT_ROWS = [
    "random",
    "predicted",
    *(f"random:{part}" for part in ("embeddings", "positions", "block-matrices", "vectors")),
    *(f"predicted:{part}" for part in ("embeddings", "positions", "blocks")),
]


def row(text: str) -> tuple[str, list[str]]:
    source, _, parts = text.partition(":")
    if text == "clipped":
        return text, []
    if source in ("shrink", "rescaled"):
        try:
            return source, [str(float(parts))]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give {source}:X with X a number, e.g. {source}:0.3") from None
    if source in ("complete", "flattened"):
        number, _, names = parts.partition(":")
        chosen = [p for p in names.split(",") if p]
        try:
            if not 0 <= float(number) <= 1 or any(p not in PARTS for p in chosen):
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give {source}:X[:PART,...] with 0 <= X <= 1, parts: {', '.join(PARTS)}"
            ) from None
        return source, [number, *chosen]
    chosen = [p for p in parts.split(",") if p]
    unknown = [p for p in chosen if p not in PARTS]
    if source not in ("random", "predicted") or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: give random|predicted[:PART,...], parts: {', '.join(PARTS)}")
    return source, chosen


def label(source: str, parts: list[str]) -> str:
    if source == "shrink":
        return f"{parts[0]} x predicted + random init"
    if source == "clipped":
        return "predicted, singular values capped at random init's largest"
    if source == "flattened":
        return f"predicted, singular values to the power {parts[0]} ({' + '.join(parts[1:]) or 'every matrix'})"
    if source == "rescaled":
        return f"predicted, residual stream x {parts[0]} (head / {parts[0]})"
    if source == "complete":
        where = " + ".join(parts[1:]) or "every matrix"
        return f"predicted, completed ({parts[0]} of energy kept, {where})"
    if not parts:
        return "random init" if source == "random" else "predicted"
    other = "predicted" if source == "random" else "random"
    return f"{'random init' if source == 'random' else 'predicted'}, {other} {' + '.join(parts)}"


def assembled(
    source: str, parts: list[str], states: dict[str, dict[str, Tensor]], match_norms: bool = False
) -> dict[str, Tensor]:
    """``source``'s state dict with every tensor of ``parts`` taken from the other source, rescaled to the
    norm of the tensor it replaces when ``match_norms`` (its direction without its size); for ``shrink``,
    ``parts`` holds the factor; flattened matrices take random init's norms when ``match_norms``."""
    if source == "shrink":
        shrink = float(parts[0])
        return {name: shrink * tensor + states["random"][name] for name, tensor in states["predicted"].items()}
    if source == "clipped":
        return {name: clip_spectrum(tensor, states["random"][name]) for name, tensor in states["predicted"].items()}
    if source == "flattened":
        norms = states["random" if match_norms else "predicted"]
        return transformed(
            states["predicted"],
            parts[1:],
            lambda name, tensor: flatten_matrix(tensor, float(parts[0]), norms[name].norm()),
        )
    if source == "rescaled":
        return rescale_residual(states["predicted"], float(parts[0]))
    if source == "complete":
        energy = float(parts[0])
        return transformed(
            states["predicted"], parts[1:], lambda name, tensor: complete(tensor, states["random"][name], energy)
        )
    other = states["predicted" if source == "random" else "random"]
    state = dict(states[source])
    for name, tensor in state.items():
        if any(PARTS[p](name, tensor) for p in parts):
            state[name] = other[name] * (tensor.norm() / other[name].norm()) if match_norms else other[name]
    return state


def complete(matrix: Tensor, noise: Tensor, energy: float) -> Tensor:
    """``matrix`` plus ``noise`` restricted to the directions it does not use: ``(I - P_left) noise (I -
    P_right)``, with ``P`` the projectors on its top singular vectors holding ``energy`` of its squared
    singular values. ``matrix @ x`` is unchanged for ``x`` in its top right subspace (``x @ matrix`` for ``x``
    in its top left one), and the result is full rank."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    kept = int(torch.searchsorted(torch.cumsum(s**2, 0) / (s**2).sum(), torch.tensor(energy)).item()) + 1
    u, v = u[:, :kept], vh[:kept].T
    noise = noise - u @ (u.T @ noise)
    return matrix + noise - (noise @ v) @ v.T


def transformed(
    state: dict[str, Tensor], parts: list[str], change: Callable[[str, Tensor], Tensor]
) -> dict[str, Tensor]:
    """``state`` with ``change`` applied to the matrices of ``parts`` (every matrix when none is named)."""
    chosen = parts or ["embeddings", "positions", "block-matrices"]
    return {
        name: change(name, tensor) if tensor.ndim == 2 and any(PARTS[p](name, tensor) for p in chosen) else tensor
        for name, tensor in state.items()
    }


def rescale_residual(state: dict[str, Tensor], factor: float) -> dict[str, Tensor]:
    """GPT-2 ``state`` with everything that writes to the residual stream (embeddings, positions, each output
    projection) times ``factor`` and the final LayerNorm divided by it: the same function (every LayerNorm
    reading the stream is scale-invariant), but AdamW's steps of fixed size move the writers ``1 / factor``
    times further relative to their size."""
    writes = ("transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight")
    return {
        name: tensor * factor
        if name in writes or ".c_proj." in name
        else tensor / factor
        if name.startswith("transformer.ln_f.")
        else tensor
        for name, tensor in state.items()
    }


def writer_rms(model: torch.nn.Module, x: Tensor) -> dict[str, float]:
    """The rms of what each block's output projection (``attn.c_proj``, ``mlp.c_proj``) adds to the residual
    stream on the tokens ``x``."""
    found: dict[str, float] = {}
    writers = {name: m for name, m in model.named_modules() if name.endswith(("attn.c_proj", "mlp.c_proj"))}
    hooks = [
        m.register_forward_hook(lambda _, __, out, name=name: found.__setitem__(name, out.pow(2).mean().sqrt().item()))
        for name, m in writers.items()
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return found


def balance_(model: torch.nn.Module, reference: torch.nn.Module, x: Tensor, power: float = 1.0) -> None:
    """Scale each residual writer of ``model`` (weight and bias), first block first, so that what it adds to
    the residual stream on ``x`` has ``reference``'s rms (to the ``power``: 0 leaves it, 1 matches it)."""
    target = writer_rms(reference, x)
    writers = dict(model.named_modules())
    for name in target:
        factor = (target[name] / writer_rms(model, x)[name]) ** power
        with torch.no_grad():
            writers[name].weight.mul_(factor)
            writers[name].bias.mul_(factor)


def clip_spectrum(matrix: Tensor, reference: Tensor) -> Tensor:
    """``matrix`` with its singular values capped at ``reference``'s largest (vectors pass unchanged)."""
    if matrix.ndim != 2:
        return matrix
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u * s.clamp(max=torch.linalg.matrix_norm(reference, ord=2))) @ vh


def effective_rank(matrix: Tensor) -> float:
    """The participation ratio of the singular values, (sum s)^2 / sum s^2: the number of directions that
    carry the matrix."""
    s = torch.linalg.svdvals(matrix.float())
    return (s.sum() ** 2 / (s**2).sum()).item()


def ngram_losses(task: TextTask, k: float = 0.1) -> dict[str, float]:
    """Eval loss of the unigram and bigram byte models of the train split (the bigram smoothed with ``k``
    pseudo-counts per byte spread as the unigram)."""
    train = task.stream.split("train")
    unigram = torch.bincount(train, minlength=256).double() + 0.5
    unigram /= unigram.sum()
    counts = torch.zeros(256, 256, dtype=torch.double)
    counts.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1, dtype=torch.double), accumulate=True)
    bigram = (counts + k * 256 * unigram) / (counts.sum(1, keepdim=True) + k * 256)
    x, y = task.eval_x, task.eval_y
    return {"unigram": -unigram[y].log().mean().item(), "bigram": -bigram[x, y].log().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernet", default="gpt2-pydoc", help="checkpoint directory or shipped name")
    parser.add_argument("--target", default="l2-w768", help="lL-wW: L layers of width W, heads of 64")
    parser.add_argument("--rows", type=row, nargs="+", default=[row(r) for r in DEFAULT_ROWS])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW rate (the one bench_widths.py chose)")
    parser.add_argument("--batch-size", type=int, default=8, help="64-byte windows per step")
    parser.add_argument("--points", type=int, default=4, help="evaluations after step 0")
    parser.add_argument("--seed", type=int, default=0, help="seeds random init and the batch order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--match-norms", action="store_true", help="swapped tensors keep the replaced one's norm; flattened, random's"
    )
    parser.add_argument("--base-gain", type=float, help="set every MIP base gain (theta_0's scale) before predicting")
    parser.add_argument("--balance", type=float, default=0.0, help="scale residual writers to random init's rms")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    try:
        arch = target(args.target)
    except argparse.ArgumentTypeError as err:
        parser.error(f"--target: {err}")
    if arch.family != "gpt2":
        parser.error(f"--target: {args.target!r} is not a GPT-2 target (lL-wW)")
    task = TextTask()
    hypernet = LoGAH.from_pretrained(args.hypernet).eval()
    if args.base_gain is not None:
        with torch.no_grad():
            hypernet.base_gain.fill_(args.base_gain)
    states = {
        "random": initialize(arch, None, args.seed).state_dict(),
        "predicted": initialize(arch, hypernet, args.seed).state_dict(),
    }
    references = ngram_losses(task)
    print(json.dumps({"target": args.target, "lr": args.lr, **references}), flush=True)
    for name, tensor in states["predicted"].items():
        if tensor.ndim == 2:
            spectrum = {"std": tensor.std().item(), "effective_rank": effective_rank(tensor), "of": min(tensor.shape)}
            top = {k: torch.linalg.matrix_norm(states[k][name], ord=2).item() for k in ("predicted", "random")}
            spectrum |= {"top_singular_value": top["predicted"], "random_init_top": top["random"]}
            print(json.dumps({"predicted": name, **spectrum}), flush=True)

    lines = []
    for source, parts in args.rows:
        start = time.perf_counter()
        model = initialize(arch, None, args.seed)
        model.load_state_dict(assembled(source, parts, states, args.match_norms))
        if args.balance:
            balance_(model.eval(), initialize(arch, None, args.seed).eval(), task.eval_x[:64], args.balance)
        steps, scores = finetune(model, task, args.steps, args.lr, args.batch_size, args.seed, points=args.points)
        seconds = time.perf_counter() - start
        name = label(source, parts) + (" (norms matched)" if args.match_norms and parts else "")
        name += f", writers balanced ({args.balance:g})" if args.balance else ""
        print(json.dumps({"row": name, "steps": steps, "loss": scores, "seconds": seconds}), flush=True)
        lines.append(f"| {name} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")

    print(f"\n{args.target}, AdamW {args.lr:g}, batch {args.batch_size}, seed {args.seed}\n")
    print("| initialization | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    print("\n".join(lines))
    print(f"\nbyte unigram {references['unigram']:.3f}, bigram {references['bigram']:.3f} (counted on the train split)")


if __name__ == "__main__":
    main()
