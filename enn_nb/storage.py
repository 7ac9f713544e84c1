"""Object storage: every path with a URL scheme (``s3://``, ``gs://``, ``az://``, ``memory://`` ...) goes through fsspec.

A URL is never turned into a local folder. :func:`resolve` gives a :class:`Remote` (the filesystem
and the path on it) for a URL, and a plain :class:`~pathlib.Path` for a local path or a ``file://``
URL (local files keep the local guarantees: a temporary sibling, fsync, one rename).

Storage options come from where each filesystem package reads them (``AWS_*`` variables and
``~/.aws`` for s3fs, ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs, ``AZURE_STORAGE_*`` for adlfs,
``FSSPEC_<PROTOCOL>_<OPTION>`` for any of them) and from ``storage_options=`` / ``--storage-option
k=v``. They are handed to the filesystem only: no manifest, sidecar, report or error message
holds them, and every message built here goes through :func:`redact`.

Writes are atomic on stores that have no rename (:func:`open_atomic`): s3fs, gcsfs and adlfs make
an object visible only when its upload completes (one PUT, or a completed multipart upload), and an
upload that fails is aborted, never completed. Stores with a rename (``memory://``) get a hidden
temporary sibling moved into place. Reads are fetched once into a cache keyed by the object's ETag
(or version, or fsspec's ``ukey``), never by its name alone (:func:`fetch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from enn_nb.errors import CheckpointError, CheckpointWriteError, MissingDependencyError, SpecError, UnknownNameError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

#: scheme -> (the package that implements it, the enn-nb extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"), "adl": ("adlfs", "azure"),
}

#: option names whose values are secrets (matched anywhere in the name, case-insensitively)
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "key", "sas", "signature", "session")
#: environment variables whose values are secrets the packages read by themselves
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_KEY",
               "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING",
               "AZURE_CLIENT_SECRET", "GOOGLE_OAUTH_ACCESS_TOKEN", "HF_TOKEN")
REDACTED = "***"
#: the most handed to a store's file in one write (see _StoreFile.write)
UPLOAD_SLICE = 4 << 20


def is_url(path: Any) -> bool:
    """True for a string with a URL scheme (``s3://...``); ``C:\\x`` and relative paths are not URLs."""
    return isinstance(path, (str, Remote)) and (isinstance(path, Remote) or bool(_SCHEME.match(path)))


@dataclasses.dataclass(frozen=True, eq=False)
class Remote:
    """A file or folder on a fsspec filesystem: ``fs`` and its ``path``, shown as ``url``.

    The storage options live in ``fs`` only; ``str()`` and ``repr()`` show the URL.
    """

    url: str
    fs: Any = dataclasses.field(repr=False)
    path: str = dataclasses.field(repr=False)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    @property
    def parent(self) -> Remote:
        return self._with(str(PurePosixPath(self.path).parent), self.url.rstrip("/").rsplit("/", 1)[0])

    def child(self, name: str) -> Remote:
        return self._with(f"{self.path.rstrip('/')}/{name}", f"{self.url.rstrip('/')}/{name}")

    def sibling(self, name: str) -> Remote:
        return self.parent.child(name)

    def _with(self, path: str, url: str) -> Remote:
        return Remote(url=url, fs=self.fs, path=path, options=self.options)

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0].lower()


def resolve(path: Any, storage_options: Mapping[str, Any] | None = None) -> Path | Remote:
    """A local :class:`Path` or a :class:`Remote` for ``path`` (a ``file://`` URL is a local path).

    Raises:
        SpecError: a URL with a query string, a fragment or credentials in it.
        UnknownNameError: a scheme no fsspec filesystem implements.
        MissingDependencyError: the scheme's filesystem package is not installed (names the extra).
    """
    if isinstance(path, Remote):
        return path
    if not is_url(path):
        return Path(path)  # storage options apply to URLs only (convert may pair a local path with a URL)
    url = str(path)
    scheme = _SCHEME.match(url).group(1).lower()  # type: ignore[union-attr]
    parts = urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise SpecError(f"The URL `{url.split('?', 1)[0].split('#', 1)[0]}` carries a query string or fragment; "
                        "enn_nb takes plain object URLs. Pass options (version, endpoint, credentials) as "
                        "`storage_options=` / `--storage-option k=v` instead. Nothing was read or written.")
    if "@" in parts.netloc and scheme not in ("az", "abfs", "abfss"):  # adlfs names `container@account`
        raise SpecError(f"The `{scheme}://` URL holds credentials before `@`; enn_nb will not use or show them. "
                        "Give them as `storage_options=` or through the environment; nothing was read or written.")
    import fsspec
    from fsspec.registry import known_implementations, registry

    if scheme == "file" or scheme == "local":
        return Path(fsspec.core.strip_protocol(url) if hasattr(fsspec.core, "strip_protocol") else parts.path)
    if scheme not in known_implementations and scheme not in registry:
        known = sorted({"s3", "gs", "az", "memory", "file", "hf", "http", "https", *PACKAGES} & set(known_implementations))
        raise UnknownNameError(
            f"No filesystem implements the URL scheme `{scheme}://` (in `{url}`). Known schemes include "
            f"{', '.join(f'`{k}://`' for k in known)}. Nothing was read or written.", name=scheme, known=known)
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        package, extra = PACKAGES.get(scheme, (known_implementations.get(scheme, {}).get("class", scheme).split(".")[0], ""))
        from enn_nb.errors import pip_line

        line = pip_line(extra=extra, dist=package)
        raise MissingDependencyError(f"`{scheme}://` URLs need `{package}`, which is not installed. Install it with: "
                                     f"{line}", package=package, extra=extra) from None
    options = {**env_options(), **dict(storage_options or {})}
    try:
        fs, fs_path = fsspec.core.url_to_fs(url, **options)
    except Exception as exc:  # noqa: BLE001 - a bad option: the package's own words, redacted
        raise SpecError(redact(f"The storage options for `{url}` were refused by {scheme}'s filesystem: "
                               f"{type(exc).__name__}: {exc}", options)) from None
    with contextlib.suppress(Exception):  # fsspec reuses filesystem instances: never trust an old listing
        fs.invalidate_cache(fs_path.rstrip("/"))
    return Remote(url=url.rstrip("/") if url.rstrip("/") != f"{scheme}:/" else url, fs=fs,
                  path=fs_path.rstrip("/"), options=options)


#: JSON storage options every enn_nb process applies to URLs (under those of the call); the CLI's
#: ``--storage-option`` sets it for the report kernels it starts, so no option reaches a notebook.
ENV_OPTIONS = "ENN_NB_STORAGE_OPTIONS"


def env_options() -> dict[str, Any]:
    """The options in ``$ENN_NB_STORAGE_OPTIONS`` (a JSON object), or {}.

    Raises:
        SpecError: the variable is not a JSON object (its value is not shown: it may hold secrets).
    """
    text = os.environ.get(ENV_OPTIONS, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise SpecError(f"`${ENV_OPTIONS}` must hold a JSON object of storage options, e.g. '{{\"anon\": true}}'.")
    return value


def add_cli_argument(parser: Any) -> None:
    """``--storage-option KEY=VALUE`` (repeatable) on a subcommand that takes URLs."""
    parser.add_argument("--storage-option", dest="storage_option", action="append", default=[], metavar="KEY=VALUE",
                        help="an fsspec storage option for URLs, repeatable (anon=true, "
                        "client_kwargs.endpoint_url=http://127.0.0.1:9000); credentials are better left to the "
                        "environment (AWS_*, ~/.aws), where no process listing shows them")


def cli_options(args: Any) -> dict[str, Any] | None:
    """The ``--storage-option`` values of parsed ``args``, or None."""
    return parse_options(getattr(args, "storage_option", None)) or None


def existing(path: Any, storage_options: Mapping[str, Any] | None = None) -> Path | str | None:
    """``path`` as a local :class:`Path` or its URL string when something is there, else None."""
    where = resolve(path.strip() if isinstance(path, str) else path, storage_options)
    if isinstance(where, Path):
        where = where.expanduser()
        return where if where.exists() else None
    try:
        return where.url if where.exists() else None
    except Exception as exc:  # noqa: BLE001 - the store's own error types
        raise store_error(where, exc, writing=False) from None


def name_of(path: Any) -> str:
    """The last part of a path or URL (``s3://b/run/m.pt`` -> ``m.pt``)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["anon=true", "client_kwargs.endpoint_url=http://..."]`` -> nested options (true/false/numbers typed).

    Raises:
        SpecError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"`--storage-option {key}` needs the form `key=value` (e.g. `anon=true`, "
                            "`client_kwargs.endpoint_url=http://127.0.0.1:9000`).")
        value: Any = text
        low = text.lower()
        if low in ("true", "false"):
            value = low == "true"
        else:
            with contextlib.suppress(ValueError):
                value = json.loads(text) if text[:1] in "[{" or re.fullmatch(r"-?\d+(\.\d+)?", text) else text
        node = out
        *parents, last = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _secrets(options: Mapping[str, Any] | None) -> list[str]:
    found: list[str] = []

    def walk(tree: Any, secret: bool) -> None:
        if isinstance(tree, Mapping):
            for k, v in tree.items():
                walk(v, secret or any(w in str(k).lower() for w in _SECRET_WORDS))
        elif isinstance(tree, (list, tuple)):
            for v in tree:
                walk(v, secret)
        elif secret and isinstance(tree, str) and len(tree) >= 4:
            found.append(tree)

    walk(dict(options or {}), False)
    with contextlib.suppress(SpecError):
        walk(env_options(), False)
    found += [os.environ[name] for name in _SECRET_ENV if len(os.environ.get(name, "")) >= 4]
    return sorted(set(found), key=len, reverse=True)


def redact(text: str, options: Mapping[str, Any] | None = None) -> str:
    """``text`` with every secret of ``options`` and of the environment's credential variables replaced."""
    for secret in _secrets(options):
        text = text.replace(secret, REDACTED)
    return text


# -- errors ------------------------------------------------------------------------------------------------
def store_error(remote: Remote, exc: BaseException, *, writing: bool) -> Exception:
    """The enn_nb error for a store failure on ``remote``, redacted; says what to do and that nothing was replaced."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    bucket = remote.path.split("/", 1)[0]
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket does not exist" in low:
        why = f"the bucket `{bucket}` does not exist. Create it, or fix the URL"
    elif "credential" in low or "nocredentialserror" in low or "signature" in low:
        why = ("no valid credentials were found. Set them in the environment (`AWS_ACCESS_KEY_ID`/"
               "`AWS_SECRET_ACCESS_KEY`, a profile in `~/.aws`) or pass `storage_options=`, or "
               "`storage_options={'anon': True}` for a public bucket")
    elif isinstance(exc, PermissionError) or "accessdenied" in low or "access denied" in low or "forbidden" in low:
        why = f"the store refused access to `{remote.url}` ({'no write permission' if writing else 'no read permission'}); check the bucket policy and credentials"
    elif isinstance(exc, FileNotFoundError) or "nosuchkey" in low or "not found" in low:
        why = f"`{remote.url}` does not exist"
    else:
        why = f"the store failed ({text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__}) after its retries"
    done = ("nothing was replaced (the previous object, if any, is intact)" if writing else "nothing was loaded")
    message = redact(f"Could not {'write' if writing else 'read'} `{remote.url}`: {why}; {done}.", remote.options)
    if writing:
        return CheckpointWriteError(getattr(exc, "errno", None) or 5, message)
    if isinstance(exc, FileNotFoundError) or "does not exist" in why:
        from enn_nb.errors import NotACheckpointError

        return NotACheckpointError(message)
    return CheckpointError(message)


# -- writing -----------------------------------------------------------------------------------------------
def _uploads_on_close(fs: Any) -> bool:
    """True for object stores whose files upload on close and can abort (s3fs, gcsfs, adlfs...).

    fsspec's in-memory and local filesystems make a file visible as soon as it is opened; they have
    a rename instead.
    """
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    return not isinstance(fs, (MemoryFileSystem, LocalFileSystem))


@contextlib.contextmanager
def open_atomic(remote: Remote, *, block_size: int | None = None) -> Iterator[Any]:
    """A binary file to write ``remote``; it appears complete when the block ends, or not at all.

    Stores whose files upload on close (s3fs, gcsfs, adlfs) commit with that one upload (a single PUT or
    a completed multipart upload); an exception aborts the upload. Others are written to a hidden
    sibling (``.<name>.enn-tmp-<id>``) moved onto ``remote`` at the end.

    Raises:
        CheckpointWriteError: the store failed (message redacted; the old object is intact).
    """
    kwargs = {"block_size": block_size} if block_size else {}
    if _uploads_on_close(remote.fs):
        try:
            f = remote.fs.open(remote.path, "wb", **kwargs)
        except Exception as exc:  # noqa: BLE001 - the store's own error types vary
            raise store_error(remote, exc, writing=True) from None
        try:
            yield _StoreFile(f, remote)
        except BaseException:
            _abandon(f)
            raise
        try:
            f.close()  # the commit: one PUT, or CompleteMultipartUpload
        except Exception as exc:  # noqa: BLE001
            _abandon(f)
            raise store_error(remote, exc, writing=True) from None
        return
    # A filesystem with a rename (memory://, where an open file is visible at once): a temporary sibling.
    from enn_nb._fs import TEMP_MARK, new_token

    tmp = remote.sibling(f".{remote.name}{TEMP_MARK}{new_token()}")
    try:
        try:
            remote.fs.makedirs(remote.parent.path, exist_ok=True)
            f = remote.fs.open(tmp.path, "wb", **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise store_error(remote, exc, writing=True) from None
        with f:
            yield _StoreFile(f, remote)
        try:
            remote.fs.mv(tmp.path, remote.path)
        except Exception as exc:  # noqa: BLE001
            raise store_error(remote, exc, writing=True) from None
    except BaseException:
        with contextlib.suppress(Exception):
            remote.fs.rm(tmp.path)
        raise


class _StoreFile:
    """A file being uploaded: the store's failures in ``write``/``flush`` become one enn_nb error (redacted)."""

    def __init__(self, raw: Any, remote: Remote) -> None:
        self.raw, self.remote = raw, remote

    def write(self, data: Any) -> int:
        # In slices: the client buffers what it is given and uploads a part once a block is full, so
        # a 512 MiB tensor handed over at once would be copied whole into its buffer first.
        view = memoryview(data).cast("B")
        try:
            for start in range(0, len(view), UPLOAD_SLICE):
                self.raw.write(view[start:start + UPLOAD_SLICE])
        except Exception as exc:  # noqa: BLE001 - the store's own error types vary
            raise store_error(self.remote, exc, writing=True) from None
        return len(view)

    def flush(self) -> None:
        try:
            self.raw.flush()
        except Exception as exc:  # noqa: BLE001
            raise store_error(self.remote, exc, writing=True) from None

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def tell(self) -> int:
        return int(self.raw.tell())

    def writable(self) -> bool:
        return True


def _from_store(exc: BaseException) -> bool:
    """An error of the store or its client (turned into enn_nb's), not enn_nb's own or an interrupt."""
    from enn_nb.errors import EnnError

    return isinstance(exc, Exception) and not isinstance(exc, EnnError)


def _abandon(f: Any) -> None:
    """Drop a file being written without committing it (abort a multipart upload)."""
    with contextlib.suppress(Exception):
        f.discard()
    with contextlib.suppress(Exception):
        f.closed = True  # fsspec files close (and so commit) when garbage-collected otherwise


def put_file(local: Path, remote: Remote) -> None:
    """Upload one local file atomically (see :func:`open_atomic`), streamed in blocks."""
    with open(local, "rb") as src, open_atomic(remote) as dst:
        shutil.copyfileobj(src, dst, 8 << 20)


def put_tree(local: Path, remote: Remote) -> list[Remote]:
    """Upload every file under ``local`` to the same relative names under ``remote``; returns them."""
    out = []
    local = Path(local)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        target = remote if path == local else remote.child(path.relative_to(local).as_posix())
        put_file(path, target)
        out.append(target)
    return out


def sweep_incomplete_uploads(url: str, storage_options: Mapping[str, Any] | None = None, *,
                             older_than_s: float = 3600.0) -> list[str]:
    """Abort the multipart uploads under ``url`` (an ``s3://`` prefix) started more than ``older_than_s`` ago.

    A save killed mid-upload (the process, the machine) leaves its upload open on the store: never
    visible to a read, but its parts are stored (and billed) until aborted. A bucket lifecycle rule
    (``AbortIncompleteMultipartUpload``) does the same on the store's side. Returns the keys swept.
    """
    import datetime as _dt

    remote = resolve(url, storage_options)
    if isinstance(remote, Path) or remote.protocol not in ("s3", "s3a"):
        return []  # other stores: their uploads expire on their own (GCS, Azure) or have none (memory)
    bucket, _, prefix = remote.path.partition("/")
    now = _dt.datetime.now(_dt.timezone.utc)
    swept = []
    try:
        for upload in remote.fs.list_multipart_uploads(bucket):
            started = upload.get("Initiated")
            age = (now - started).total_seconds() if isinstance(started, _dt.datetime) else float("inf")
            if upload["Key"].startswith(prefix) and age >= older_than_s:
                remote.fs.abort_mpu(bucket, upload["Key"], upload["UploadId"])
                swept.append(f"s3://{bucket}/{upload['Key']}")
    except Exception as exc:  # noqa: BLE001
        raise store_error(remote, exc, writing=True) from None
    return swept


# -- reading -----------------------------------------------------------------------------------------------
def version_key(remote: Remote) -> str:
    """What identifies this object's content on the store: its ETag or version id, else fsspec's ``ukey``.

    Raises:
        NotACheckpointError / CheckpointError: the object is missing or cannot be read.
    """
    try:
        info = remote.fs.info(remote.path)
    except Exception as exc:  # noqa: BLE001
        raise store_error(remote, exc, writing=False) from None
    for field in ("VersionId", "ETag", "etag", "generation", "version_id"):
        if info.get(field) not in (None, "", "null"):
            return f"{field}:{info[field]}:{info.get('size')}"
    try:
        return f"ukey:{remote.fs.ukey(remote.path)}"
    except Exception:  # noqa: BLE001 - a filesystem without ukey: everything info says
        return "info:" + hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()


def remote_cache_dir() -> Path:
    """``<enn_nb cache>/remote``: fetched objects, one folder per (URL, version)."""
    from enn_nb._cachedir import cache_dir

    return cache_dir() / "remote"


#: (url, version key, folder) -> local copy, for this session: a second read finds it without a stat of the cache
_FETCHED: dict[tuple[str, str, str | None], Path] = {}


def fetch_target(remote: Remote, key: str, *, name: str | None = None, folder: str | None = None) -> Path:
    """Where :func:`fetch` keeps the copy of ``remote`` at version ``key`` (a streamed load completes it too)."""
    digest = hashlib.sha256((folder or f"{remote.protocol}://{remote.path}\0{key}").encode()).hexdigest()[:32]
    return remote_cache_dir() / digest / (name or remote.name or "object")


def fetch(remote: Remote, *, key: str | None = None, name: str | None = None, folder: str | None = None) -> Path:
    """The local copy of ``remote`` (a file), downloaded once per version into :func:`remote_cache_dir`.

    The download streams into a temporary file renamed into place when complete. A changed object
    (new ETag/version) is fetched again; the same one is not, in this session or a later one.
    ``folder`` names the cache folder instead (the files of one DCP checkpoint share one).
    """
    key = key or version_key(remote)
    known = _FETCHED.get((remote.url, key, folder))
    if known is not None and known.is_file():
        return known
    target = fetch_target(remote, key, name=name, folder=folder)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            # the filesystem's own download: one streamed request (s3fs), not a ranged request per block
            remote.fs.get_file(remote.path, str(tmp))
            os.replace(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if _from_store(exc):
                raise store_error(remote, exc, writing=False) from None
            raise
    _FETCHED[(remote.url, key, folder)] = target
    return target


def version_keys(base: Remote, names: Mapping[str, str]) -> tuple[dict[str, str], Path]:
    """Each object's version key (``local name -> key``; objects that do not exist are left out) and the cache
    folder :func:`fetch_many` keeps them in: keyed by all of them, so a change to any one is a new folder."""
    keys: dict[str, str] = {}
    for name, source in names.items():
        try:
            keys[name] = f"{source}:{version_key(base.child(source))}"
        except CheckpointError:
            continue
    return keys, version_keys_folder(base, keys)


def fetch_many(base: Remote, names: list[str] | Mapping[str, str], *, keys: Mapping[str, str] | None = None) -> Path:
    """The local copies of ``base/<name>`` for each of ``names``, side by side in one cache folder.

    ``names`` may map each local name to the object's name on the store when they differ.

    The folder is keyed by every object's ETag/version (:func:`version_keys`; ``keys``: those already
    looked up): a change to any of them fetches into a new folder (an unchanged object is still not
    fetched twice: each file is also found by its own key). Objects that do not exist are left out (the
    caller's checks name what is missing).
    """
    sources = dict(names) if isinstance(names, Mapping) else {name: name for name in names}
    if keys is None:
        keys, local = version_keys(base, sources)
    else:
        local = version_keys_folder(base, keys)
    folder = _folder_key(base, keys)
    for name, key in keys.items():
        fetch(base.child(sources[name]), key=key, name=name, folder=folder)
    local.mkdir(parents=True, exist_ok=True)
    return local


def version_keys_folder(base: Remote, keys: Mapping[str, str]) -> Path:
    """The cache folder of the objects whose version keys are ``keys`` (see :func:`version_keys`)."""
    return remote_cache_dir() / hashlib.sha256(_folder_key(base, keys).encode()).hexdigest()[:32]


def _folder_key(base: Remote, keys: Mapping[str, str]) -> str:
    return f"{base.url}\0" + "\0".join(f"{name}={key}" for name, key in sorted(keys.items()))


def read_range(remote: Remote, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of ``remote`` in one ranged request."""
    try:
        return bytes(remote.fs.cat_file(remote.path, start=start, end=end))
    except Exception as exc:  # noqa: BLE001
        raise store_error(remote, exc, writing=False) from None


def glob(pattern: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The URLs a ``*``/``?`` pattern matches on its store, sorted.

    Raises:
        SpecError: nothing matches (names the pattern).
    """
    base = resolve(pattern, storage_options)
    if isinstance(base, Path):
        import glob as _glob

        found = sorted(_glob.glob(str(base)))
    else:
        scheme = base.protocol
        try:
            found = sorted(f"{scheme}://{p}" for p in base.fs.glob(base.path))
        except Exception as exc:  # noqa: BLE001
            raise store_error(base, exc, writing=False) from None
    if not found:
        raise SpecError(f"The pattern `{pattern}` matches nothing; nothing was run. Check the bucket and the folder "
                        "(list it with `fsspec.filesystem(...).ls`).")
    return found
