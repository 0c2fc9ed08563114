"""What ``--help`` tells a user: every default, the shipped hypernetworks, and no third-party warnings."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hypernets import pretrained
from hypernets.cli import build_parser as hypernets_parser
from metaprune.cli import build_parser as metaprune_parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by its name."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


COMMANDS = {f"hypernets {n}": p for n, p in subcommands(hypernets_parser()).items()}
COMMANDS |= {f"metaprune {n}": p for n, p in subcommands(metaprune_parser()).items()}


def test_both_clis_have_their_commands():
    assert {"hypernets graph", "hypernets predict", "hypernets train", "hypernets evaluate", "metaprune prune"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_default_is_shown(command: str):
    """Zeros, dtypes and devices included: an option with a default says it, in the form the formatter writes."""
    parser = COMMANDS[command]
    formatter = parser._get_formatter()
    with_defaults = [a for a in parser._actions if a.default not in (None, argparse.SUPPRESS) and a.nargs != 0]
    assert with_defaults, f"{command} has no option with a default"
    for action in with_defaults:
        text = formatter._expand_help(action)
        assert f"(default: {action.default})" in text, f"{command} {action.option_strings or action.dest}: {text!r}"
        assert text.count("default") == 1, f"{command} {action.option_strings}: the default said twice: {text!r}"


def test_flags_do_not_show_a_default():
    text = COMMANDS["hypernets predict"].format_help()
    assert "replace an existing --out\n" in text  # --overwrite: no "(default: False)"


def test_predict_help_lists_every_shipped_hypernetwork():
    text = " ".join(COMMANDS["hypernets predict"].format_help().split())
    assert len(pretrained.available()) >= 3
    assert "a shipped name: " + ", ".join(pretrained.available()) in text


@pytest.mark.parametrize(
    "code",
    [
        "import hypernets.logah, hypernets.graph, hypernets.writers",
        "import metaprune.metanet",  # torch_geometric before any hypernets module
        "from hypernets.cli import main; main(['graph', '--help'])",
    ],
)
def test_no_third_party_warning_on_import(code: str):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Warning" not in result.stderr, result.stderr


def test_other_future_warnings_still_show():
    """The filter is narrowed to torch_geometric's torch.jit.script message: a user's own warning passes."""
    code = "import hypernets.logah, warnings; warnings.warn('mine is deprecated', FutureWarning)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "FutureWarning: mine is deprecated" in result.stderr
