"""Which predicted parts make a predicted GPT-2 slow to fine-tune.

Each row is a byte-level GPT-2 (named like ``l2-w768``) whose parameters come from two sources, Hugging
Face's random init and a hypernetwork's prediction: ``random`` and ``predicted`` take everything from one,
``random:PART,...`` is random init with those parts predicted, ``predicted:PART,...`` the prediction with
those parts random, ``shrink:L`` is ``L * predicted + random init`` (shrink and perturb, Ash & Adams 2020:
the remedy they found for warm starts that train worse than fresh ones), and ``clipped`` the prediction with
its matrices' singular values capped at random init's largest. Every row is fine-tuned with AdamW on the same
batches for the same steps, and its eval loss printed at evenly spaced steps. For reference, the eval loss of
unigram and bigram byte models counted on the train split (add-k smoothing towards the unigram), and each
predicted matrix's std, effective rank and largest singular value beside random init's.

    python recipes/bench/bench_finetune_parts.py --hypernet gpt2-pydoc --target l2-w768 --threads 1
    python recipes/bench/bench_finetune_parts.py --rows predicted --lr 1e-3 --threads 1
    python recipes/bench/bench_finetune_parts.py --rows predicted --base-gain 1 --threads 1  # full random base
    python recipes/bench/bench_finetune_parts.py --rows random:block-matrices --match-norms  # shape, not size
    python recipes/bench/bench_finetune_parts.py --rows random shrink:0.1 shrink:0.3 --target l2-w512 --seed 2
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
from hypernets.train.tasks import TextTask

PARTS: dict[str, Callable[[str, Tensor], bool]] = {
    "embeddings": lambda name, _: name in ("transformer.wte.weight", "lm_head.weight"),  # tied: both names
    "positions": lambda name, _: name == "transformer.wpe.weight",
    "blocks": lambda name, _: name.startswith("transformer.h."),
    "block-matrices": lambda name, tensor: name.startswith("transformer.h.") and tensor.ndim == 2,
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
    if source == "shrink":
        try:
            return source, [str(float(parts))]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give shrink:L with L a number, e.g. shrink:0.3") from None
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
    if not parts:
        return "random init" if source == "random" else "predicted"
    other = "predicted" if source == "random" else "random"
    return f"{'random init' if source == 'random' else 'predicted'}, {other} {' + '.join(parts)}"


def assembled(
    source: str, parts: list[str], states: dict[str, dict[str, Tensor]], match_norms: bool = False
) -> dict[str, Tensor]:
    """``source``'s state dict with every tensor of ``parts`` taken from the other source, rescaled to the
    norm of the tensor it replaces when ``match_norms`` (its direction without its size); for ``shrink``,
    ``parts`` holds the factor."""
    if source == "shrink":
        shrink = float(parts[0])
        return {name: shrink * tensor + states["random"][name] for name, tensor in states["predicted"].items()}
    if source == "clipped":
        return {name: clip_spectrum(tensor, states["random"][name]) for name, tensor in states["predicted"].items()}
    other = states["predicted" if source == "random" else "random"]
    state = dict(states[source])
    for name, tensor in state.items():
        if any(PARTS[p](name, tensor) for p in parts):
            state[name] = other[name] * (tensor.norm() / other[name].norm()) if match_norms else other[name]
    return state


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
    parser.add_argument("--match-norms", action="store_true", help="swapped tensors keep the replaced one's norm")
    parser.add_argument("--base-gain", type=float, help="set every MIP base gain (theta_0's scale) before predicting")
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
        steps, scores = finetune(model, task, args.steps, args.lr, args.batch_size, args.seed, points=args.points)
        seconds = time.perf_counter() - start
        name = label(source, parts) + (" (norms matched)" if args.match_norms and parts else "")
        print(json.dumps({"row": name, "steps": steps, "loss": scores, "seconds": seconds}), flush=True)
        lines.append(f"| {name} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")

    print(f"\n{args.target}, AdamW {args.lr:g}, batch {args.batch_size}, seed {args.seed}\n")
    print("| initialization | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    print("\n".join(lines))
    print(f"\nbyte unigram {references['unigram']:.3f}, bigram {references['bigram']:.3f} (counted on the train split)")


if __name__ == "__main__":
    main()
