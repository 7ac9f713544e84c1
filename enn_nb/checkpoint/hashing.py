"""Integrity hashes: BLAKE3 for what enn_nb writes, sha256 still checked; every digest names its algorithm.

A digest is stored as ``"<algorithm>:<hex>"`` (``"blake3:9f…"``), the convention of OCI content
digests, so one manifest can mix algorithms and a checkpoint written before the switch (sha256,
schema ``enn_nb.checkpoint/1``) still verifies. Hashes are taken in the pass that moves the bytes:

- on save, one background thread hashes each tensor while the writer puts it on disk (BLAKE3
  releases the GIL; single-threaded it runs at several GB/s, faster than any disk the writer feeds);
- on load, the bytes are hashed where the reader already has them: the memory map torch.load or
  safetensors made (with BLAKE3's own thread pool), or each DCP record as it arrives (on the
  background thread, while the next one is read; the shard files are checked beside the read).
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.errors import CorruptCheckpointError

from .tensors import byte_view, cpu_contiguous

if TYPE_CHECKING:
    import torch

ALGORITHM = "blake3"  # what enn_nb writes
ALGORITHMS = ("blake3", "sha256")  # what it can check
HEX_DIGITS = 64  # both produce 32-byte digests
FILE_CHUNK = 8 << 20  # DCP shards are read in chunks this size: each is hashed while in the CPU cache


def new_hasher(algorithm: str = ALGORITHM, *, threads: bool = False) -> Any:
    """A hashlib-like object; ``threads=True`` lets BLAKE3 spread one large update over all cores."""
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3(max_threads=blake3.AUTO if threads else 1)
    if algorithm == "sha256":
        return hashlib.sha256()
    raise CorruptCheckpointError(
        f"The manifest names hash algorithm `{algorithm}`; this enn_nb checks {', '.join(f'`{a}`' for a in ALGORITHMS)}. "
        "Upgrade enn_nb (`pip install -U enn-nb`), or load with `verify=False` if you trust the file."
    )


def split(digest: str) -> tuple[str, str]:
    """``"blake3:ab…"`` -> ``("blake3", "ab…")``.

    Raises:
        CorruptCheckpointError: not of the form ``<algorithm>:<hex>``.
    """
    algorithm, sep, hexdigest = digest.partition(":") if isinstance(digest, str) else ("", "", "")
    if not sep or not algorithm or not hexdigest:
        raise CorruptCheckpointError(f"The manifest holds the digest {digest!r}; expected `<algorithm>:<hex>`.")
    return algorithm, hexdigest


def short(value: str | None, hex_digits: int = 12) -> str:
    """``"blake3:3fa2c1d8e9ab"`` for tables; ``"-"`` for no digest."""
    if not value:
        return "-"
    algorithm, _, hexdigest = value.partition(":")
    return f"{algorithm}:{hexdigest[:hex_digits]}" if hexdigest else value[:hex_digits]


def digest(data: Any, algorithm: str = ALGORITHM, *, threads: bool = False) -> str:
    """``"<algorithm>:<hex>"`` of a bytes-like object."""
    hasher = new_hasher(algorithm, threads=threads)
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


def tensor_digest(tensor: torch.Tensor, algorithm: str = ALGORITHM, *, threads: bool = False) -> str:
    return digest(byte_view(cpu_contiguous(tensor)), algorithm, threads=threads)


class HashPool:
    """Hash tensors in one background thread while the caller writes (or reads) them.

    One thread, single-threaded BLAKE3: it outruns the writer (GB/s against the page cache's copy)
    and leaves the other cores to the writer. Tensors are hashed in the order given, which writers
    set to their write order, so both touch the same memory at about the same time. A reader hands
    each tensor over with :meth:`put` as it arrives; :meth:`results` waits for all of them.
    """

    def __init__(self, algorithm: str = ALGORITHM) -> None:
        self.algorithm = algorithm
        self._queue: queue.SimpleQueue[tuple[str, torch.Tensor, str] | None] = queue.SimpleQueue()
        self._results: dict[str, str] = {}
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # started by the first put: an idle pool costs nothing

    def submit_all(self, tensors: Mapping[str, torch.Tensor], order: Iterable[str] | None = None) -> HashPool:
        """Queue every tensor, in ``order`` (default: the mapping's)."""
        for name in order if order is not None else tensors:
            self.put(name, tensors[name])
        return self

    def put(self, name: str, tensor: torch.Tensor, algorithm: str | None = None) -> None:
        """Queue one tensor, hashed with ``algorithm`` (default: the pool's)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="enn-nb-hash", daemon=True)
            self._thread.start()
        self._queue.put((name, tensor, algorithm or self.algorithm))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._stop.is_set() or self._error is not None:
                continue  # drain without hashing
            name, tensor, algorithm = item
            try:
                self._results[name] = tensor_digest(tensor, algorithm)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller by results()
                self._error = exc

    def results(self) -> dict[str, str]:
        """Wait for every hash queued so far; ``{name: "<algorithm>:<hex>"}``."""
        self._finish()
        if self._error is not None:
            raise self._error
        return dict(self._results)

    def _finish(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        self._stop.set()
        self._finish()

    def __enter__(self) -> HashPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, str | None], *, what: str,
                  hashed: Mapping[str, str] | None = None) -> None:
    """Hash ``tensors`` with the algorithm each expected digest names and compare.

    ``hashed`` holds digests already taken (by a :class:`HashPool` fed while reading); those tensors
    are not hashed again.

    Raises:
        CorruptCheckpointError: one or more hashes differ (all named; ``.tensor`` holds the first).
    """
    bad = []
    for name, want in expected.items():
        if not want or name not in tensors:
            continue
        algorithm, _ = split(want)
        got = (hashed or {}).get(name)
        if got is None or not got.startswith(algorithm + ":"):
            got = tensor_digest(tensors[name], algorithm, threads=True)
        if got != want:
            bad.append(name)
    if bad:
        shown = ", ".join(f"`{n}`" for n in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise CorruptCheckpointError(
            f"The hash of tensor(s) {shown} in {what} does not match the manifest: the file is damaged. "
            "Restore it from a good copy, or pass `verify=False` to load it anyway (not recommended).",
            tensor=bad[0],
        )


def file_digest(path: Path, algorithm: str = ALGORITHM) -> str:
    """``"<algorithm>:<hex>"`` of a file, read once in chunks that are hashed while still cached."""
    hasher = new_hasher(algorithm, threads=True)
    buffer = bytearray(FILE_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            hasher.update(view[:n])
    return f"{algorithm}:{hasher.hexdigest()}"


def file_matches(path: Path, nbytes: int, expected: str) -> bool:
    """True when ``path`` has ``nbytes`` bytes and the digest ``expected`` (in its own algorithm)."""
    algorithm, _ = split(expected)
    try:
        if path.stat().st_size != nbytes:
            return False
        return file_digest(path, algorithm) == expected
    except OSError:
        return False


class HashingStream(io.RawIOBase):
    """A write-only file wrapper that hashes exactly the bytes written through it, as they pass."""

    def __init__(self, raw: Any, algorithm: str = ALGORITHM) -> None:
        super().__init__()
        self.raw = raw
        self.algorithm = algorithm
        self.hasher = new_hasher(algorithm)
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        written = self.raw.write(view)
        written = len(view) if written is None else written
        self.hasher.update(view[:written])
        self.count += written
        return written

    def digest(self) -> str:
        return f"{self.algorithm}:{self.hasher.hexdigest()}"

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes through us first
            self.raw.close()
