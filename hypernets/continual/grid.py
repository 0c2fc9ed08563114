"""A grid of continual-learning runs (methods x benchmarks x settings x seeds) and its report: one JSONL
per run, a table of mean +- std over seeds, and the mean accuracy matrix of each row as a heat map."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hypernets.checkpoint import json_text
from hypernets.continual.experiment import Experiment, as_matrix, describe, run
from hypernets.continual.metrics import plot_accuracy_matrix
from hypernets.continual.names import FULL_LENGTH, GRID_METHODS

METRICS = ("average_accuracy", "backward_transfer", "forgetting", "task_inference")
HEADERS = ("avg final acc (%)", "BWT (pts)", "forgetting (pts)", "task inference (%)")


@dataclass(frozen=True)
class Row:
    """One row of the table: a method on a benchmark in a setting, run once per seed."""

    benchmark: str
    setting: str
    method: str  # a key of GRID_METHODS

    @property
    def name(self) -> str:
        return f"{self.benchmark}-{self.setting}-{self.method}"

    def experiments(self, base: Experiment, seeds: Sequence[int]) -> list[Experiment]:
        settings = dict(benchmark=self.benchmark, setting=self.setting, **GRID_METHODS[self.method])
        return [replace(base, **settings, seed=seed) for seed in seeds]


def rows(methods: Sequence[str], benchmarks: Sequence[str], settings: Sequence[str]) -> list[Row]:
    """Every combination, benchmark-major so that a table groups each benchmark's rows."""
    return [Row(b, s, m) for b in benchmarks for s in settings for m in methods]


def total_steps(row_list: Sequence[Row], base: Experiment, seeds: Sequence[int]) -> int:
    """Optimizer steps the whole grid takes: what a progress bar counts."""
    return sum(len(seeds) * base.steps * (base.num_tasks or FULL_LENGTH[row.benchmark]) for row in row_list)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over seeds; ``None`` where there is no value (or one, for std)."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None


def aggregate(row: Row, summaries: Sequence[dict]) -> dict:
    """A row's result: mean and std of each metric over its seeds, and each seed's value."""
    result: dict = {"benchmark": row.benchmark, "setting": row.setting, "method": row.method}
    result["label"] = describe(Experiment(**summaries[0]["settings"]))
    result["steps"] = summaries[0]["settings"]["steps"]
    result["seeds"] = [s["settings"]["seed"] for s in summaries]
    for metric in METRICS:
        values = [s[metric] for s in summaries]
        result[metric] = dict(zip(("mean", "std"), mean_std(values), strict=True)) | {"per_seed": values}
    result["seconds_per_run"] = statistics.fmean(s["seconds"] for s in summaries)
    return result


def _cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f}" + ("" if stat["std"] is None else f" ± {stat['std']:.2f}")


def markdown_table(results: Sequence[dict]) -> str:
    """The report's table: one line per row, ``mean ± std`` over seeds."""
    lines = [
        "| benchmark | setting | method | steps/task | seeds | " + " | ".join(HEADERS) + " | s/run |",
        "|---|---|---|---:|---:|" + "---:|" * len(HEADERS) + "---:|",
    ]
    for r in results:
        cells = " | ".join(_cell(r[metric]) for metric in METRICS)
        lines.append(
            f"| {r['benchmark']} | {r['setting']} | {r['method']} | {r['steps']} | {len(r['seeds'])} | {cells} "
            f"| {r['seconds_per_run']:.0f} |"
        )
    return "\n".join(lines)


def run_grid(
    row_list: Sequence[Row],
    base: Experiment,
    seeds: Sequence[int],
    folder: Path | None,
    command: str = "",
    advance: Callable[[int], None] = lambda steps: None,
    announce: Callable[[str], None] = lambda line: None,
) -> list[dict]:
    """Run every row for every seed; with ``folder``, write ``runs/ROW-seedS.jsonl`` as each run goes,
    ``heatmaps/ROW.png`` (the mean accuracy matrix over seeds), ``results.md`` and ``results.json``, both
    headed by ``command``."""
    results = []
    if folder is not None:
        (folder / "runs").mkdir(parents=True)
        (folder / "heatmaps").mkdir()
    for row in row_list:
        summaries = []
        for experiment in row.experiments(base, seeds):
            if folder is None:
                summary = run(experiment, advance=advance)
            else:
                with open(folder / "runs" / f"{row.name}-seed{experiment.seed}.jsonl", "w") as f:
                    summary = run(experiment, lambda record: print(json.dumps(record), file=f), advance)
            summaries.append(summary)
            announce(
                f"{row.name} seed {experiment.seed}: accuracy {summary['average_accuracy']:.2f}%, "
                f"forgetting {summary['forgetting']:.2f} ({summary['seconds']:.0f} s)"
            )
        results.append(aggregate(row, summaries))
        if folder is not None:
            mean = torch.stack([as_matrix(s["matrix"]) for s in summaries]).mean(0)
            title = f"{results[-1]['label']}\nmean of {len(seeds)} seeds"
            plot_accuracy_matrix(mean, folder / "heatmaps" / f"{row.name}.png", title)
    if folder is not None:
        (folder / "results.md").write_text(f"`{command}`\n\n{markdown_table(results)}\n")
        (folder / "results.json").write_text(json_text({"command": command, "rows": results}))
    return results
