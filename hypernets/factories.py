"""The user's own code, named ``PKG.MODULE:CALLABLE`` as uvicorn names an app: one importer for the model specs
(:mod:`hypernets.models`) and the data specs (:mod:`hypernets.data.spec`), so both find, call and report a
factory alike."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any


def call_factory(
    target: str,
    kwargs: dict[str, Any],
    *,
    error: type[Exception],
    kind: str,
    missing: Callable[[str], str],
) -> Any:
    """``CALLABLE(**kwargs)`` for ``target`` = ``"PKG.MODULE:CALLABLE"`` (the callable may be dotted).

    The working directory goes first on ``sys.path`` (where the user's code is, as for ``python -m``) for the
    import and the call, since a factory may import its neighbours; the path is restored after. Every failure
    is an ``error``: ``missing(cwd)`` says what to do when the module itself does not exist, ``kind`` names the
    module in the other messages ("module", "data module").
    """
    module_name, _, attribute = target.partition(":")
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # the module may have been written since the last import looked here
    try:
        module = _import(module_name, cwd, error, kind, missing)
        try:
            factory = functools.reduce(getattr, attribute.split("."), module)
        except AttributeError as err:
            where = getattr(module, "__file__", None) or "a namespace package"
            raise error(f"{kind} {module_name!r} has no attribute {attribute!r} ({where})") from err
        if not callable(factory):
            raise error(f"{target} is a {type(factory).__name__}, not callable")
        try:
            return factory(**kwargs)
        except Exception as err:
            arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
            raise error(f"{target}({arguments}) raised {type(err).__name__}: {err}") from err
    finally:
        if cwd in sys.path:  # the module may have removed it itself
            sys.path.remove(cwd)


def _import(module_name: str, cwd: str, error: type[Exception], kind: str, missing: Callable[[str], str]) -> Any:
    """The module; a missing module itself is told apart from an import inside it that failed."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise error(missing(cwd)) from err
        raise error(f"importing {kind} {module_name!r} failed: {err}") from err
    except Exception as err:
        raise error(f"importing {kind} {module_name!r} failed: {type(err).__name__}: {err}") from err
