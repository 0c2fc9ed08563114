"""The contract every command line here keeps (docs/cli.md), in one place for ``hypernets`` and ``metaprune``.

Exit 0: done. Exit 1: only ``metaprune prune``'s "target or accuracy bound missed, report written".
Exit 2: anything the user can fix, as one line on stderr naming the file, option or module; nothing
published. Exit 3: an internal error, with the traceback and a request to report it, so a pipeline never
mistakes a crash for a missed gate. SIGTERM and Ctrl-C remove temporaries and exit 143 and 130.

Option values are checked by argparse types (finite, in range), output paths before any work starts.
torch is imported only where a check needs it, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

DONE, MISSED, USAGE, CRASH = 0, 1, 2, 3
INTERRUPTED, TERMINATED = 130, 143
DEBUG_VARIABLE = "HYPERNETS_DEBUG"  # set to 1 for tracebacks with exit 2


class UsageError(ValueError):
    """Something the user can fix (a file, an option, a model): exit 2 with this message as one line."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), as every other error of the contract."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog.split()[0]}: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written, and the default of every option that has one (0 included) at the
    end of its help, so that no help text spells a default that can drift from the code."""

    def _get_help_string(self, action: argparse.Action) -> str:
        implicit = action.nargs == 0  # flags: --overwrite, --help; their default is "off"
        if action.help and not implicit and action.default not in (None, argparse.SUPPRESS):
            return f"{action.help} (default: %(default)s)"
        return action.help or ""


def debug_parent() -> Parser:
    """The ``--debug`` option, shared by every subcommand."""
    parent = Parser(add_help=False)
    parent.add_argument(
        "--debug", action="store_true", help=f"print the traceback of user errors too (or set {DEBUG_VARIABLE}=1)"
    )
    return parent


def run_command(
    prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None, user_errors: tuple[type, ...] = ()
) -> int:
    """Parse ``argv`` and run ``args.run(args)`` under the contract; returns the exit status."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or a bad option (2, its line already printed)
        return exit.code if isinstance(exit.code, int) else USAGE
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    previous = _terminate_cleanly()
    try:
        return args.run(args)
    except (UsageError, OSError, *user_errors) as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {describe(err)}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was published", file=sys.stderr)
        return INTERRUPTED
    except SystemExit as exit:
        if exit.code == TERMINATED:
            print(f"{prog}: terminated; nothing was published", file=sys.stderr)
        raise
    except Exception:
        traceback.print_exc()
        print(
            f"{prog}: internal error (exit {CRASH}): a bug, not your input; please report it with the traceback above",
            file=sys.stderr,
        )
        return CRASH
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def describe(err: BaseException) -> str:
    """An error as one line: OSErrors as 'PATH: reason', the others by their message, newlines folded."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _terminate_cleanly():
    """SIGTERM (a CI timeout, ``kill``) raises ``SystemExit(143)`` so that ``finally`` blocks remove temporaries."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    try:
        return signal.signal(signal.SIGTERM, lambda *_: sys.exit(TERMINATED))
    except ValueError:  # not the main thread: leave signals alone
        return None


# -- option types: each rejects what it cannot use, with argparse naming the option ----------------------
def number(
    low: float | None = None, high: float | None = None, *, above: bool = False, below: bool = False
) -> Callable[[str], float]:
    """A finite float in ``[low, high]``, open at ``low`` with ``above`` and at ``high`` with ``below``: NaN and
    infinities are never valid."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {low:g}, got {text}")
        if high is not None and (value >= high if below else value > high):
            raise argparse.ArgumentTypeError(f"must be {'below' if below else 'at most'} {high:g}, got {text}")
        return value

    return parse


MAX_COUNT = 10**9  # steps, architectures, examples: beyond this a value is a typo, not a plan
MAX_SEED = 2**63 - 1  # torch.manual_seed's range


def integer(low: int = 0, high: int = MAX_COUNT) -> Callable[[str], int]:
    """A decimal integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high:,}], got {text}")
        return value

    return parse


positive = integer(1)
count = integer(0)
seed = integer(0, MAX_SEED)


def check_device(text: str, option: str = "--device") -> str:
    """``text`` as a device torch knows and this machine has (``cuda`` without a GPU is a usage error)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} {text!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {text!r}: no CUDA device is available on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "mps") or (device.type == "mps" and not torch.backends.mps.is_available()):
        raise UsageError(f"{option} {text!r}: not available here; use cpu or cuda")
    return text


# -- paths, checked before the work starts ---------------------------------------------------------------
def check_output(path: str | os.PathLike, option: str, *, directory: bool = False, overwrite: bool = False) -> Path:
    """``path`` can be written: not an existing output (unless ``overwrite``), not under a file, and its
    nearest existing folder accepts a new file (probed for real: permissions, read-only file systems)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if directory and not path.is_dir():
            raise UsageError(f"{option} {path}: exists and is not a directory")
        if not directory and path.is_dir():
            raise UsageError(f"{option} {path}: is a directory; give a file name")
        if not overwrite:
            raise UsageError(f"{option} {path}: already exists; pass --overwrite to replace it")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, not a directory")
    probe = folder / f".{path.name}.{os.getpid()}.probe.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot write in {folder}: {err.strerror}") from None
    return path


def check_input(path: str | os.PathLike, option: str, *, directory: bool = False) -> Path:
    """``path`` exists, is of the right kind and can be read."""
    path = Path(path)
    kind = "directory" if directory else "file"
    if not path.exists():
        raise UsageError(f"{option} {path}: no such {kind}")
    if path.is_dir() != directory:
        raise UsageError(f"{option} {path}: is not a {kind}")
    if not os.access(path, os.R_OK | (os.X_OK if directory else 0)):
        raise UsageError(f"{option} {path}: permission denied")
    return path
