"""Bring-your-own models on the CLI and in reports: ``--model pkg.module:factory`` imports the factory the user typed."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from enn_nb._reentry import importing_factory
from enn_nb.errors import EnnError, SpecError


def model_path(dirs: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """The folders a ``--model`` module is imported from, absolute: ``dirs`` (``--model-path``, relative to the
    working directory) first, then the PYTHONPATH entries, a relative one resolved against the working directory
    (``PYTHONPATH=.`` means the caller's folder, also for a report kernel running elsewhere).

    Raises:
        SpecError: a ``--model-path`` that is not a folder.
    """
    out: list[str] = []
    for entry in dirs:
        folder = Path(entry).expanduser().resolve()
        if not folder.is_dir():
            raise SpecError(f"`--model-path {entry}` is not a folder (working directory: {Path.cwd()}); name the "
                            "folder that holds your model's module.")
        out.append(str(folder))
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            out.append(str(Path(entry).expanduser().resolve()))
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def child_pythonpath(dirs: Sequence[str | os.PathLike[str]] = ()) -> Iterator[list[str]]:
    """While the body runs, PYTHONPATH is :func:`model_path` (absolute), for the processes it starts (a report
    kernel runs in the report folder, where a relative entry means another folder)."""
    paths = model_path(dirs)
    before = os.environ.get("PYTHONPATH")
    if paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    try:
        yield paths
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def import_root(module_name: str) -> str | None:
    """The folder on ``sys.path`` a module was imported from (``/work`` for ``/work/pkg/mod.py``), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    root = Path(spec.origin).resolve().parent
    for _ in range(module_name.count(".") + (Path(spec.origin).name == "__init__.py")):
        root = root.parent
    return str(root)


def import_factory(ref: str, path: Sequence[str | os.PathLike[str]] = ()) -> Any:
    """The callable named by ``"pkg.module:factory"`` (a dotted attribute path after the colon).

    Only importable modules are accepted, never a file path: the module is imported because the user
    named it, the same as ``python -c "import pkg.module"`` would, so its top-level code runs. A
    ``save``/``export``/``report`` there is refused (SideEffectError: guard it with ``__main__``).

    Raises:
        SpecError: the reference is malformed, the module cannot be imported or lacks the attribute.
        SideEffectError: importing the module ran an enn_nb save/export (nothing was written).
    """
    module_name, sep, attr = str(ref).partition(":")
    if (not sep or not module_name or not attr or "/" in module_name or module_name.endswith(".py")
            or not all(part.isidentifier() for part in module_name.split("."))
            or not all(part.isidentifier() for part in attr.split("."))):  # `..evilmod`: relative, not a module name
        raise SpecError(
            f"`--model {ref}` is not `package.module:factory`; name an importable module and a callable in it, "
            "e.g. `--model mypkg.models:build_forecaster` (files are not imported by path)."
        )
    for folder in reversed(model_path(path)):  # --model-path, and PYTHONPATH entries made absolute
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        with importing_factory(ref):  # its top-level code runs; a save/export there is refused
            obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(
            f"`--model {ref}`: module `{module_name}` cannot be imported ({exc}) from the working directory "
            f"{Path.cwd()}. Install its package, or name its folder with `--model-path DIR` (or PYTHONPATH)."
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))[:12]
            raise SpecError(f"`--model {ref}`: `{module_name}` has no `{attr}`; callables there: {', '.join(known)}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"`--model {ref}` is a {type(obj).__name__}, not a callable returning a model.")
    return obj


def build_model(ref: str, path: Sequence[str | os.PathLike[str]] = ()) -> Any:
    """``factory()`` for ``ref`` (or the class itself called without arguments), checked to be an ``nn.Module``."""
    import torch

    factory = import_factory(ref, path)
    try:
        model = factory()
    except EnnError:
        raise  # enn_nb's own refusal (a re-entrant save/export): already says what to do
    except Exception as exc:  # noqa: BLE001 - the user's factory (or a callable that is none): its error, named
        raise SpecError(f"`--model {ref}`: calling `{ref}()` failed ({type(exc).__name__}: {str(exc)[:200]}); the "
                        "factory must build the model without arguments.") from None
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"`--model {ref}` returned a {type(model).__name__}; the factory must return a torch.nn.Module.")
    return model


def load_with_model(path: str | os.PathLike[str], ref: str | None,
                    model_dirs: Sequence[str | os.PathLike[str]] = (), *, storage_options: Any = None) -> Any:
    """``enn_nb.load(path)``, into ``build_model(ref)`` when a factory is named (a checkpoint without a builder).

    Raises:
        StateDictMismatchError / RestoreCheckError: the factory's model is not the checkpoint's; the fix
            names ``--model`` (the command line loads strictly: a partly loaded model is never exported).
    """
    from enn_nb.checkpoint import load
    from enn_nb.checkpoint.api import MISMATCH_FIX, RESTORE_FIX
    from enn_nb.errors import RestoreCheckError, StateDictMismatchError

    flag = f"`--model {ref}`" if ref else "`--model pkg.module:factory`"
    try:
        return load(path, model=build_model(ref, model_dirs) if ref else None, storage_options=storage_options)
    except StateDictMismatchError as exc:
        fix = (f"Name the factory of the model this checkpoint was saved from with {flag}; the command line loads "
               "every tensor or nothing (in Python, `enn_nb.load(..., strict=False)` loads the matching ones).")
        raise StateDictMismatchError(
            str(exc).replace(MISMATCH_FIX, fix), missing_keys=exc.missing_keys, unexpected_keys=exc.unexpected_keys,
            shape_mismatches=exc.shape_mismatches,
        ) from None
    except RestoreCheckError as exc:
        fix = (f"name the factory of the class it was saved from with {flag}; the command line never exports a "
               "model that does not compute what was saved.")
        raise RestoreCheckError(str(exc).replace(RESTORE_FIX, fix), max_abs_err=exc.max_abs_err, atol=exc.atol,
                                rtol=exc.rtol) from None
