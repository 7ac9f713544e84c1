"""Uploads to S3 whose first bytes are known last: the rest goes up first, in parts, while they are computed.

A safetensors file starts with a header that carries every tensor's hash, so a front-to-back upload
has to hash every tensor before its first byte leaves, and the client's buffered file uploads one
part at a time (copying every byte into its buffer twice). S3's multipart upload takes its parts in
any order and assembles them by number: here parts 2..N (tensor bytes only) are uploaded at once, two
at a time, straight from the tensors' memory, while the caller hashes the same memory; part 1 (the
head, then the first tensor bytes) goes up last, when the caller can produce it. The object appears
only when ``CompleteMultipartUpload`` succeeds: any failure or interrupt aborts the upload and the old
object stays (the same commit as :func:`enn_nb.storage.open_atomic`).

Only for s3fs (the S3 multipart API through the filesystem's own ``call_s3``); other stores keep the
front-to-back upload.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enn_nb.storage import Remote

#: Part size: S3 wants at least 5 MiB per part but the last; 16 MiB keeps a few parts in flight small.
PART_SIZE = 16 << 20
#: Parts uploaded at once (each reads the tensors' memory; none holds a copy of its part).
IN_FLIGHT = 2
MAX_PARTS = 10_000  # S3's limit on the parts of one upload


def accepts_parts(remote: Remote) -> bool:
    """True when ``remote`` is on S3 through s3fs (its multipart API takes parts out of order)."""
    fs = remote.fs
    return type(fs).__module__.split(".")[0] == "s3fs" and callable(getattr(fs, "call_s3", None))


class _Views(io.RawIOBase):
    """A read-only, seekable file over memoryviews laid end to end (botocore reads, checksums and rewinds it)."""

    def __init__(self, views: Sequence[Any]) -> None:
        super().__init__()
        self._views = [memoryview(v).cast("B") for v in views]
        self._starts = list(itertools.accumulate((len(v) for v in self._views), initial=0))
        self._size = self._starts[-1]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        index = bisect.bisect_right(self._starts, self._pos) - 1  # the view holding the position
        while done < len(out) and self._pos < self._size:
            view, start = self._views[index], self._starts[index]
            take = min(start + len(view) - self._pos, len(out) - done)
            out[done:done + take] = view[self._pos - start:self._pos - start + take]
            done += take
            self._pos += take
            index += 1
        return done

    def __len__(self) -> int:
        return self._size


def _slice(views: Sequence[memoryview], start: int, end: int) -> list[memoryview]:
    """The pieces of ``views`` (laid end to end) covering bytes ``[start, end)``, without copying."""
    out, offset = [], 0
    for view in views:
        lo, hi = max(start, offset), min(end, offset + len(view))
        if lo < hi:
            out.append(view[lo - offset:hi - offset])
        offset += len(view)
        if offset >= end:
            break
    return out


def upload_head_last(remote: Remote, head_size: int, body: Sequence[Any], head: Callable[[], bytes]) -> None:
    """Upload ``head() + body`` to ``remote``: the body's parts first, ``head()`` (exactly ``head_size`` bytes) last.

    ``head`` is called once, while the body's parts upload; it may wait for work running beside them.

    Raises:
        CheckpointWriteError: the store failed (redacted; the old object is intact, the upload aborted).
        EnnError: ``head`` raised one (the upload aborted).
    """
    from enn_nb.storage import store_error

    views = [memoryview(v).cast("B") for v in body]
    total = head_size + sum(len(v) for v in views)
    part = max(PART_SIZE, math.ceil(total / MAX_PARTS))
    first = max(part, head_size)  # part 1 holds the whole head
    bucket, key, _version = remote.fs.split_path(remote.path)

    def whole_head() -> bytes:
        data = head()
        if len(data) != head_size:
            raise RuntimeError(f"enn_nb internal error: the head is {len(data)} bytes, {head_size} were reserved")
        return data

    if total <= first:  # one part: a single PUT once the head is known
        data = whole_head()
        try:
            remote.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=_Views([data, *views]))
        except Exception as exc:  # noqa: BLE001 - the store's own error types vary
            raise store_error(remote, exc, writing=True) from None
        _forget_listing(remote)
        return
    try:
        upload_id = remote.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    except Exception as exc:  # noqa: BLE001
        raise store_error(remote, exc, writing=True) from None

    def send(number: int, pieces: Sequence[Any]) -> dict[str, Any]:
        answer = remote.fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                   Body=_Views(pieces))
        return {"PartNumber": number, "ETag": answer["ETag"]}

    bounds = [(0, first)] + [(lo, min(lo + part, total)) for lo in range(first, total, part)]
    futures: list[Future[dict[str, Any]]] = []
    pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="enn_nb-upload")
    in_head = False  # an error of the caller's head() is raised as it is, the store's are named and redacted
    try:
        for number, (lo, hi) in enumerate(bounds[1:], start=2):
            futures.append(pool.submit(send, number, _slice(views, lo - head_size, hi - head_size)))
        in_head = True
        data = whole_head()
        in_head = False
        futures.append(pool.submit(send, 1, [data, *_slice(views, 0, first - head_size)]))
        parts = sorted((f.result() for f in futures), key=lambda p: p["PartNumber"])
        remote.fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                          MultipartUpload={"Parts": parts})  # the commit
    except BaseException as exc:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)
        with contextlib.suppress(Exception):  # drop the parts already sent; the store's old object is untouched
            remote.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        from enn_nb.errors import EnnError

        if not in_head and isinstance(exc, Exception) and not isinstance(exc, EnnError):
            raise store_error(remote, exc, writing=True) from None
        raise
    pool.shutdown(wait=True)
    _forget_listing(remote)


def _forget_listing(remote: Remote) -> None:
    """Drop s3fs's cached listings of the object's folders: the next look sees the new object."""
    with contextlib.suppress(Exception):
        remote.fs.invalidate_cache(remote.path)
