"""Uploads to S3 whose first bytes are known last: the rest goes up first, in parts, while they are computed.

A safetensors file starts with a header that carries every tensor's hash, so a front-to-back upload
has to hash every tensor before its first byte leaves, and the client's buffered file uploads one
part at a time (copying every byte into its buffer twice). S3's multipart upload takes its parts in
any order and assembles them by number: here parts 2..N (tensor bytes only) go up first, two at a
time, each copied out of the tensors' memory only when its turn comes, while the caller hashes the
same memory; part 1 (the head, then the first tensor bytes) goes up last, when the caller can produce
it. The object appears only when ``CompleteMultipartUpload`` succeeds: any failure or interrupt
aborts the upload and the old object stays (the same commit as :func:`enn_nb.storage.open_atomic`).

Only for s3fs (the S3 multipart API through the filesystem's own ``call_s3``); other stores keep the
front-to-back upload.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enn_nb.storage import Remote

#: Part size: 16 MiB keeps the parts in flight small; a smaller ``default_block_size`` the store was given
#: wins, down to S3's least part size (5 MiB, the last part excepted).
PART_SIZE = 16 << 20
MIN_PART = 5 << 20
#: Parts uploaded at once: each holds a copy of its bytes while it uploads (2 x 16 MiB at most).
IN_FLIGHT = 2
MAX_PARTS = 10_000  # S3's limit on the parts of one upload


def accepts_parts(remote: Remote) -> bool:
    """True when ``remote`` is on S3 through s3fs (its multipart API takes parts out of order)."""
    fs = remote.fs
    return type(fs).__module__.split(".")[0] == "s3fs" and callable(getattr(fs, "call_s3", None))


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
    configured = int(getattr(remote.fs, "default_block_size", None) or PART_SIZE)
    part = max(MIN_PART, min(PART_SIZE, configured), math.ceil(total / MAX_PARTS))
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
            remote.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"".join([data, *views]))
        except Exception as exc:  # noqa: BLE001 - the store's own error types vary
            raise store_error(remote, exc, writing=True) from None
        _forget_listing(remote)
        return
    try:
        upload_id = remote.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    except Exception as exc:  # noqa: BLE001
        raise store_error(remote, exc, writing=True) from None

    def send(number: int, pieces: Sequence[Any]) -> dict[str, Any]:
        # bytes, made here on the uploading thread (at most IN_FLIGHT parts exist at once): s3fs retries a
        # failed request with the same body, which a file-like body, read to its end, could not send again
        answer = remote.fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                   Body=b"".join(pieces))
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
