"""Where a sweep runs: this process (the default), a LocalCluster of worker processes, or a Dask scheduler.

``cluster`` is ``None`` (run in this process, one task after another), ``"local"`` / ``"local:N"`` (a
``distributed.LocalCluster`` of N single-threaded worker processes on this machine, closed after the
sweep), ``"tcp://host:8786"`` (an existing scheduler, e.g. one started by ``dask-jobqueue`` or a
Kubernetes operator) or a ``distributed.Client`` the caller opened (left open).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from enn_nb.errors import ClusterError

#: ``--cluster``'s help, shared by ``enn-nb report`` and ``enn-nb export``.
CLUSTER_HELP = (
    "run each report/export as one Dask task: `local` or `local:N` (a LocalCluster of N worker processes "
    "here), or `tcp://HOST:PORT` (an existing scheduler; --out must be a folder every worker sees at the "
    "same path). Default: one after another in this process. Needs `pip install 'enn-nb[cluster]'`"
)

#: Seconds to wait for a scheduler (and for its first worker) before saying it cannot be reached.
CONNECT_TIMEOUT_S = 10.0

#: Settings of the LocalClusters enn_nb starts. A worker that dies mid-task (SIGKILL, out of memory, a
#: segfault in native code) has its task retried once on another worker, then failed (KilledWorker).
#: Non-daemonic workers: an export isolates its converters in child processes, which daemons may not have.
LOCAL_CONFIG: dict[str, Any] = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.worker.daemon": False,
}

_LOCAL = re.compile(r"local(?::(\d+))?")


@dataclasses.dataclass
class Runner:
    """An open place to run tasks: ``client`` is None for this process."""

    client: Any | None
    label: str
    dashboard: str | None = None

    @property
    def workers(self) -> int:
        if self.client is None:
            return 1
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {})) or 1


def parse(cluster: str) -> tuple[str, int | None]:
    """``("local", N)`` or ``("address", None)``; refuses anything else with the accepted forms."""
    text = cluster.strip()
    match = _LOCAL.fullmatch(text)
    if match:
        n = int(match.group(1)) if match.group(1) else None
        if n is not None and n < 1:
            raise ClusterError(f"`--cluster {cluster}`: a LocalCluster needs at least 1 worker, e.g. `local:2`.")
        return "local", n
    if re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://[^\s/]+", text):
        return "address", None
    raise ClusterError(
        f"`--cluster {cluster}` is not a cluster; use `local`, `local:N` (N worker processes here) or a "
        "scheduler address such as `tcp://scheduler-host:8786`."
    )


@contextlib.contextmanager
def open_runner(cluster: Any, *, out_dir: str | os.PathLike[str] | None = None,
                sources: Iterable[str] = ()) -> Iterator[Runner]:
    """The runner for ``cluster`` (see the module docstring), checked before any task is submitted.

    For a scheduler address or a Client, every worker must see ``out_dir`` (a marker file written here is
    looked up by each worker at the same path) and every source file: outputs written to a worker's own
    disk would be lost to the caller. A URL (``s3://bucket/nightly``) is left to the writers.

    Raises:
        MissingDependencyError: ``distributed`` is not installed (the message has the install line).
        ClusterError: a malformed ``cluster``, a scheduler that cannot be reached or has no worker, a
            folder or a source the workers cannot see. Nothing has run.
    """
    if cluster is None or (isinstance(cluster, str) and not cluster.strip()):
        yield Runner(None, "this process")
        return
    from enn_nb._optional import require

    distributed = require("distributed", purpose="`--cluster` (sweeps on Dask)")
    if isinstance(cluster, distributed.Client):
        runner = Runner(cluster, str(cluster.scheduler.address), _dashboard(cluster))
        check_shared(runner, out_dir, sources)
        yield _announce(runner)
        return
    if not isinstance(cluster, str):
        raise ClusterError(f"`cluster` is a {type(cluster).__name__}; pass `local`, `local:N`, a scheduler address "
                           "(`tcp://host:8786`) or a `distributed.Client`.")
    kind, n = parse(cluster)
    if kind == "local":
        with local_cluster(n or 2) as client:
            yield _announce(Runner(client, f"local:{n or 2}", _dashboard(client)))
        return
    with _connect(distributed, cluster.strip()) as client:
        runner = _announce(Runner(client, cluster.strip(), _dashboard(client)))
        check_shared(runner, out_dir, sources)
        yield runner


@contextlib.contextmanager
def local_cluster(n_workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` on a LocalCluster of ``n_workers`` single-threaded worker processes.

    The workers listen on 127.0.0.1 only and ignore Ctrl-C (the client cancels their tasks and closes
    them); a worker that dies mid-task has that task retried once on another worker (:data:`LOCAL_CONFIG`).
    """
    import dask

    from enn_nb._optional import require

    distributed = require("distributed", purpose="`--cluster local` (sweeps on Dask)")
    # kept set while the cluster lives: a nanny reads `daemon` again when it restarts a dead worker
    with dask.config.set(LOCAL_CONFIG):
        cluster = distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:8787", silence_logs=logging.ERROR,
            preload=["enn_nb.surfaces.sweep.worker_setup"],
        )
        try:
            client = distributed.Client(cluster, set_as_default=False)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()


def _client_within_deadline(distributed: Any, address: str) -> Any:
    """``distributed.Client(address)``, given up on after a hard deadline.

    The Client's own ``timeout`` was seen not to fire once (a CI run waited > 10 minutes on a closed local
    port with a 1 s timeout), so the call runs in a daemon thread and is abandoned past the deadline.
    """
    import threading

    box: dict[str, Any] = {}

    def make() -> None:
        try:
            box["client"] = distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=make, name="enn-nb-dask-connect", daemon=True)
    thread.start()
    deadline = 3 * CONNECT_TIMEOUT_S + 5
    thread.join(deadline)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {deadline:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["client"]


@contextlib.contextmanager
def _connect(distributed: Any, address: str) -> Iterator[Any]:
    try:
        client = _client_within_deadline(distributed, address)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"Cannot reach the Dask scheduler at `{address}` ({type(exc).__name__}: {str(exc).strip()[:200]}); "
            "nothing was run. Check the address and that the scheduler is running (`dask scheduler` prints its "
            "address), or run here with `--cluster local:N`."
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            raise ClusterError(
                f"The Dask scheduler at `{address}` has no worker (none joined within {CONNECT_TIMEOUT_S:.0f} s); "
                f"nothing was run. Start workers with `dask worker {address} --nthreads 1`."
            ) from None
        yield client
    finally:
        client.close()


def check_shared(runner: Runner, out_dir: str | os.PathLike[str] | None, sources: Iterable[str]) -> None:
    """Refuse a folder or a source file that some worker cannot see at the same path (see :func:`open_runner`)."""
    client = runner.client
    missing: list[tuple[str, str]] = []  # (worker, what it cannot see)
    paths = [str(Path(s).resolve()) for s in sources]
    marker = None
    if out_dir is not None and not is_url(out_dir):
        from enn_nb.engine.settings import prepare_out_dir
        from enn_nb.errors import OutputDirError

        try:
            folder = prepare_out_dir(out_dir, "out")
        except OutputDirError as exc:
            raise ClusterError(f"The sweep's output folder cannot be used: {exc}") from None
        marker = folder / f".enn-nb-shared-probe-{uuid.uuid4().hex[:12]}"
        marker.write_text("written by the client; every worker must see it\n", encoding="utf-8")
        paths.append(str(marker))
    try:
        seen = client.run(_exists, paths) if paths else {}
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    for worker, flags in seen.items():
        missing += [(worker, path) for path, ok in zip(paths, flags) if not ok]
    if not missing:
        return
    worker, path = missing[0]
    if marker is not None and path == str(marker):
        raise ClusterError(
            f"`--out {out_dir}` is a folder on this machine that the workers of `{runner.label}` cannot see "
            f"(worker {worker} does not find {marker.parent} at that path): their reports and artifacts would "
            "stay on their own disks. Pass a folder shared by every machine at the same path (a network "
            "mount), or run here with `--cluster local:N`."
        )
    raise ClusterError(
        f"Worker {worker} of `{runner.label}` cannot read `{path}` ({len(missing)} path(s) missing on the "
        "workers in all): the checkpoints must lie in a folder every worker sees at the same path."
    )


def is_url(path: Any) -> bool:
    """A string with a scheme (``s3://bucket/x``), which fsspec writers resolve, not a local folder."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", str(path)))


def _exists(paths: list[str]) -> list[bool]:
    return [os.path.exists(p) for p in paths]


def _dashboard(client: Any) -> str | None:
    try:
        return str(client.dashboard_link)
    except Exception:  # no dashboard (bokeh missing on the scheduler): the sweep runs all the same
        return None


def _announce(runner: Runner) -> Runner:
    where = f"Dask dashboard: {runner.dashboard}" if runner.dashboard else "no Dask dashboard"
    print(f"enn-nb: running on {runner.label} ({runner.workers} workers); {where}", file=sys.stderr, flush=True)
    return runner
