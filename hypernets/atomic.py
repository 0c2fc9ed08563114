"""Outputs that appear whole or not at all: files and directories staged beside their final paths, then
renamed into place together.

Temporaries are named ``.NAME.PID.TOKEN.tmp`` so that the next write to ``NAME`` can tell the litter of a
killed process (its PID no longer runs) from the work of a live one, and removes only the former. Files and
directories are created with the user's umask, as ``open`` and ``mkdir`` would, not ``mkstemp``'s 0600.
A directory is replaced with Linux's ``renameat2(RENAME_EXCHANGE)``, so the old or the new one is in place
at every instant; where the call is missing (another OS, an old kernel or file system) two renames are
used and the window between them is a few microseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (AttributeError, OSError):
    _renameat2 = None


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary)`` on a temporary file beside ``path``, then rename it to ``path``."""
    with Staging() as staging:
        staging.file(path, write)
    return Path(path)


def write_directory(directory: str | os.PathLike, fill: Callable[[Path], object], overwrite: bool = False) -> Path:
    """Call ``fill(staging)`` on an empty directory beside ``directory``, then put it in ``directory``'s place."""
    with Staging() as staging:
        staging.directory(directory, fill, overwrite)
    return Path(directory)


class Staging:
    """Outputs written to temporaries now and published together when the ``with`` block ends cleanly;
    on any exception (a full disk, a kill turned into ``SystemExit``) every temporary is removed."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final)
        self._created: list[Path] = []  # parent directories made for the outputs, outermost first

    def file(self, path: str | os.PathLike, write: Callable[[str], object]) -> None:
        path = Path(path)
        temporary = self._begin(path)
        with _naming(path):
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            write(str(temporary))
            _fsync(temporary)

    def directory(self, path: str | os.PathLike, fill: Callable[[Path], object], overwrite: bool = False) -> None:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(errno.EEXIST, "already exists; pass --overwrite to replace it", str(path))
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(path))
        temporary = self._begin(path)
        with _naming(path):
            temporary.mkdir(0o777)
            fill(temporary)
            for child in temporary.rglob("*"):
                if child.is_file():
                    _fsync(child)

    def _begin(self, path: Path) -> Path:
        """Create the missing parents of ``path`` (removed again if nothing is published), sweep its stale
        temporaries, and reserve a temporary name for it."""
        missing = [parent for parent in path.parents if not parent.exists()]
        with _naming(path):
            for parent in reversed(missing):
                parent.mkdir(0o777)
                self._created.append(parent)
        sweep_stale(path)
        temporary = _temporary_name(path)
        self._staged.append((temporary, path))
        return temporary

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        published = False
        try:
            if kind is None:
                for temporary, final in self._staged:
                    with _naming(final):
                        _publish(temporary, final)
                published = True
        finally:
            for temporary, _ in self._staged:
                _remove(temporary)
            if not published:
                for parent in reversed(self._created):
                    with contextlib.suppress(OSError):
                        parent.rmdir()  # only if still empty


def sweep_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that dead processes left for ``path``; returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        pid = candidate.name.removeprefix(f".{path.name}.").split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(candidate)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def _naming(final: Path) -> Iterator[None]:
    """Report a failed write (a full disk, a read-only file system) under the output's own name, not the
    temporary's, which the user never asked for."""
    try:
        yield
    except OSError as err:
        if err.strerror and err.filename != str(final):
            raise type(err)(err.errno, err.strerror, str(final)) from err
        raise


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _publish(temporary: Path, final: Path) -> None:
    """Rename ``temporary`` to ``final``; an existing directory is swapped out atomically, then removed
    (the old tree then sits at ``temporary``, which the caller removes, or the next run sweeps)."""
    if not (temporary.is_dir() and final.is_dir()):
        os.replace(temporary, final)
    elif not _exchange(temporary, final):
        retired = _temporary_name(final)
        os.replace(final, retired)
        os.replace(temporary, final)
        os.replace(retired, temporary)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux); False where the system cannot, so the caller falls back."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
