"""Run one hostile input against enn_nb in a forked child and classify what happened.

Each :class:`Case` names an action (a call into enn_nb's API, CLI or magics), a marker file that a
successful exploit would create, and victim files that must be byte-identical afterwards. The
child has a memory limit and the parent a wall-clock limit, so a hang, a memory bomb or a native
crash is recorded instead of taking the test run down.

Outcomes, worst first: ``code`` (the marker exists), ``lost`` (a victim changed or vanished),
``hang``, ``crash``, ``raw`` (an exception that is not an enn_nb error, or a CLI traceback),
``silent`` (returned normally where an error or a different result was due), then ``clean`` (an
enn_nb error, one line) and ``correct`` (returned, and the check says the result is right).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUTCOMES = ("clean", "correct", "raw", "silent", "hang", "crash", "code", "lost")
MEMORY_LIMIT = 6 * 1024**3  # address space of the child (torch maps ~2 GiB of libraries)


class Refused(Exception):
    """A clean refusal that is not an exception of enn_nb's (a CLI exit code with a one-line message)."""


class RawCliError(Exception):
    """The CLI printed a traceback or its catch-all 'unexpected' line."""


@dataclasses.dataclass
class Case:
    family: str
    name: str
    action: Callable[[], Any]
    marker: Path
    victims: dict[Path, Any] = dataclasses.field(default_factory=dict)
    check: Callable[[Any], bool] | None = None  # a normal return is right when this says so
    timeout: float = 60.0

    def __repr__(self) -> str:
        return f"{self.family}/{self.name}"


def snapshot(path: Path) -> Any:
    """What must stay: a file's bytes, a FIFO/device marker, or a directory's {relative path: bytes}."""
    import stat

    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return {p.relative_to(path).as_posix(): snapshot(p) for p in sorted(path.rglob("*")) if not p.is_dir()}
    if stat.S_ISREG(st.st_mode):
        return path.read_bytes()
    return ("special", stat.S_IFMT(st.st_mode), st.st_ino)


def _victims_intact(victims: dict[Path, Any]) -> list[str]:
    changed = []
    for path, before in victims.items():
        try:
            now = snapshot(path)
        except FileNotFoundError:
            changed.append(f"{path} vanished")
            continue
        if now != before:
            changed.append(f"{path} changed")
    return changed


def _child(case: Case, write_fd: int) -> None:
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ValueError, OSError):
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    from enn_nb.errors import EnnError

    try:
        from IPython.core.error import UsageError
    except ImportError:  # pragma: no cover - IPython is a core dependency
        UsageError = EnnError  # noqa: N806
    try:
        result = case.action()
        if case.check is not None and case.check(result):
            status, detail = "correct", ""
        else:
            status, detail = "silent", repr(result)[:300]
    except (EnnError, UsageError, Refused) as exc:
        text = str(exc)
        status = "clean" if "Traceback (most recent call last)" not in text else "raw"
        detail = f"{type(exc).__name__}: {text[:300]}"
    except BaseException as exc:  # noqa: BLE001 - classifying everything is the point
        status, detail = "raw", f"{type(exc).__name__}: {str(exc)[:300]}"
    os.write(write_fd, json.dumps([status, detail]).encode())
    os._exit(0)


def run_case(case: Case) -> tuple[str, str]:
    """(outcome, detail) of one case, run in a forked child."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        try:
            _child(case, write_fd)
        finally:
            os._exit(70)
    os.close(write_fd)
    deadline = time.monotonic() + case.timeout
    chunks = []
    outcome, detail = None, ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            outcome, detail = "hang", f"no answer within {case.timeout:.0f} s"
            break
        ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if outcome is None:
        if chunks:
            outcome, detail = json.loads(b"".join(chunks))
        else:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            outcome, detail = "crash", f"child died (signal {sig}, status {status})"
    lost = _victims_intact(case.victims)
    if lost:
        outcome, detail = "lost", "; ".join(lost)
    if case.marker.exists():
        outcome, detail = "code", f"marker {case.marker} created"
    return outcome, detail


def cli(args: list[str]) -> int:
    """Run ``enn-nb ARGS``; a non-zero exit with one ``enn-nb ...: error:`` line is a clean refusal."""
    import contextlib
    import io

    from enn_nb.surfaces.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(args)
    text = err.getvalue()
    if "Traceback" in text or "unexpected" in text:
        raise RawCliError(text[:300])
    if code != 0:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) == 1 and lines[0].startswith("enn-nb"):
            raise Refused(lines[0])
        if code == 1 and not lines:  # verify: a failed check is printed on stdout
            raise Refused(out.getvalue().splitlines()[0] if out.getvalue() else "exit 1")
        raise RawCliError(f"exit {code}: {text[:300]}")
    return code


def table(rows: dict[str, dict[str, int]]) -> str:
    """The campaign table: one row per family, one column per outcome."""
    header = ["family", "tried", "clean error", "correct result", "raw traceback", "silent wrong result",
              "hang/crash", "code executed", "data lost"]
    lines = [header]
    total = {k: 0 for k in OUTCOMES}
    for family, counts in rows.items():
        tried = sum(counts.values())
        for k in OUTCOMES:
            total[k] += counts.get(k, 0)
        lines.append([family, str(tried), *(str(counts.get(k, 0)) for k in ("clean", "correct", "raw", "silent")),
                      str(counts.get("hang", 0) + counts.get("crash", 0)), str(counts.get("code", 0)),
                      str(counts.get("lost", 0))])
    lines.append(["total", str(sum(total.values())), *(str(total[k]) for k in ("clean", "correct", "raw", "silent")),
                  str(total["hang"] + total["crash"]), str(total["code"]), str(total["lost"])])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
