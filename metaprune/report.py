"""The report of a pruning run in the forms CI systems read: a Markdown summary (``$GITHUB_STEP_SUMMARY``, a merge
request comment) and a JUnit XML file (test-report panels of GitHub, GitLab and Jenkins).

Both are rendered from the JSON report alone, so what a reviewer reads is what the JSON says.
"""

from __future__ import annotations

import math
from typing import Any
from xml.etree import ElementTree

SUITE = "metaprune"


def summary_markdown(report: dict[str, Any]) -> str:
    """Targets, before and after, the verdict and why, and where the time went, as a Markdown section."""
    before, after = report["before"], report["after"]
    verdict = "passed" if report["passed"] else "FAILED"
    lines = [f"### metaprune: {verdict}", ""]
    if report.get("model"):
        lines += [f"`{report['model']}` on `{report.get('data', '?')}`", ""]
    lines += [*(f"- {reason}" for reason in report["reasons"]), ""] if report["reasons"] else []
    lines += ["| | dense | pruned | change | target |", "|---|---:|---:|---:|---:|"]
    target = report["target"]
    if report["task"] == "classification":
        lines.append(
            _row(
                "accuracy",
                _percent(before["accuracy"]),
                _percent(after["accuracy"]),
                f"{-report['accuracy_drop']:+.2f} pts",
                _bound("drop ≤", target["max_acc_drop"], " pts"),
            )
        )
    else:
        lines.append(
            _row(
                "eval loss (nats/token)",
                _number(before["loss"], ".4f"),
                _number(after["loss"], ".4f"),
                f"{report['loss_increase']:+.4f}",
                _bound("rise ≤", target["max_loss_increase"]),
            )
        )
    lines += [
        _row(
            "FLOPs (all ops)",
            _count(before["flops"]),
            _count(after["flops"]),
            f"{report['speedup']:.2f}x fewer",
            _bound("≥", target["speedup"], "x"),
        ),
        _row(
            "MACs (Torch-Pruning)",
            _count(before["macs"]),
            _count(after["macs"]),
            f"{report['macs_speedup']:.2f}x fewer",
            "",
        ),
        _row(
            "parameters",
            _count(before["params"]),
            _count(after["params"]),
            f"{report['param_ratio']:.2f}x fewer",
            _bound("≥", target["param_ratio"], "x"),
        ),
        _row(
            "CPU latency (1 thread)",
            _number(before["latency_ms"], ".2f", " ms"),
            _number(after["latency_ms"], ".2f", " ms"),
            _ratio(before["latency_ms"], after["latency_ms"]),
            "",
        ),
        "",
    ]
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["wall_seconds"].items())
    finetune = report["finetune"]
    lines.append(f"Fine-tuning: {finetune['steps_done']} of {finetune['steps']} steps. Wall time: {phases}.")
    if report.get("rewrite_strength") is not None:
        tried = ", ".join(f"{c['rewrite_strength']:g}" for c in report["candidates"])
        lines.append(f"Metanetwork rewrite strength {report['rewrite_strength']:g} (tried {tried}).")
    if report.get("repaired"):
        repaired = report["repaired"]
        lines.append(
            f"Kept whole, with the features they read, after a pruned copy broke in them: {len(repaired)} "
            f"module{'s' if len(repaired) > 1 else ''} (`{repaired[0]}`{', ...' if len(repaired) > 1 else ''})."
        )
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def junit_xml(report: dict[str, Any]) -> str:
    """One test case per gate (speed-up, parameter ratio, quality, finite weights), failed with its reason."""
    from metaprune.pipeline import GATES

    checks = {name: report["failed_gates"].get(name) for name in GATES}
    seconds = f"{report['wall_seconds'].get('total', 0.0):.3f}"
    failed = sum(1 for reason in checks.values() if reason)
    suite = ElementTree.Element(
        "testsuite", name=SUITE, tests=str(len(checks)), failures=str(failed), errors="0", time=seconds
    )
    for name, reason in checks.items():
        case = ElementTree.SubElement(suite, "testcase", classname=SUITE, name=name, time="0")
        if reason:
            ElementTree.SubElement(case, "failure", message=reason).text = reason
    suites = ElementTree.Element("testsuites", name=SUITE, tests=str(len(checks)), failures=str(failed))
    suites.append(suite)
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _bound(relation: str, value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{relation} {value:g}{unit}"


def _percent(value: float | None) -> str:
    return _number(None if value is None else 100 * value, ".2f", "%")


def _number(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:{spec}}{unit}"


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _ratio(before: float | None, after: float | None) -> str:
    return "n/a" if not before or not after else f"{before / after:.2f}x faster"
