"""The one place that talks to storage: local paths and `s3://bucket/key` URIs.

- boto3 honours `AWS_ENDPOINT_URL` (and `AWS_ENDPOINT_URL_S3`), so the same code talks to AWS, MinIO or a
  moto server on 127.0.0.1.
- Directories are published atomically with `_SUCCESS` written last; a directory without `_SUCCESS` does not
  exist for readers (`is_complete`).
  * local: build in a temp sibling, then rename over the old one (a failed run leaves the old one intact).
  * S3 (no rename there): upload to a staging prefix first (the slow, failure-prone part), then remove the old
    `_SUCCESS`, copy server-side into place, prune stale keys, write `_SUCCESS` last. A failure during that short
    swap leaves the directory without `_SUCCESS` (absent for readers, never half-read).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ncf.errors import UserError

SUCCESS = "_SUCCESS"


def user_cache_dir() -> Path:
    """This machine's cache for files the platform can always rebuild ($XDG_CACHE_HOME, else ~/.cache, then
    `ncf-platform`): the MLflow store template, the test suite's Spark class-data archive."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ncf-platform"


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(("s3://", "s3a://"))


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    rest = str(uri).split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UserError(f"{uri}: no bucket in S3 URI")
    return bucket, key.strip("/")


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


_client = None


def s3_client():
    """A cached boto3 S3 client (endpoint from AWS_ENDPOINT_URL when set)."""
    global _client
    if _client is None:
        import boto3
        from botocore.config import Config

        # Bounded retries: an unreachable endpoint fails in seconds, not after botocore's legacy back-off
        # (AWS_MAX_ATTEMPTS / AWS_RETRY_MODE, when set, win).
        config = None if os.environ.get("AWS_MAX_ATTEMPTS") else Config(
            retries={"total_max_attempts": 3, "mode": os.environ.get("AWS_RETRY_MODE", "standard")},
            connect_timeout=10)
        _client = boto3.client("s3", config=config)
    return _client


def reset_client() -> None:
    """Forget the cached client (tests that change AWS_ENDPOINT_URL call this)."""
    global _client
    _client = None


def _list_keys(bucket: str, prefix: str) -> list[str]:
    paginator = s3_client().get_paginator("list_objects_v2")
    keys: list[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def exists(uri: str | os.PathLike) -> bool:
    """A file, a directory or an S3 prefix with at least one object."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception:
            prefix = key.rstrip("/") + "/" if key else ""
            try:
                resp = s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
            except Exception as exc:  # credentials, endpoint, permissions: name the URI (ncf.errors classifies)
                raise UserError(f"{uri}: cannot look it up ({exc})") from exc
            return resp.get("KeyCount", 0) > 0
    return Path(uri).exists()


def is_complete(uri: str | os.PathLike) -> bool:
    """True when the directory has its `_SUCCESS` marker."""
    return exists(join(uri, SUCCESS))


def require_complete(uri: str | os.PathLike, what: str, hint: str = "") -> None:
    """Raise a UserError naming `uri` unless it exists and carries `_SUCCESS` (`what`: "partition", ...)."""
    if not exists(uri):
        raise UserError(f"{uri}: no such {what}")
    if not is_complete(uri):
        raise UserError(f"{uri}: {what} is incomplete (no _SUCCESS marker)" + (f"; {hint}" if hint else ""))


def read_bytes(uri: str | os.PathLike) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise UserError(f"{uri}: cannot read ({exc})") from exc
    try:
        return Path(uri).read_bytes()
    except OSError as exc:
        raise UserError(f"{uri}: cannot read ({exc.strerror})") from exc


def read_json(uri: str | os.PathLike) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise UserError(f"{uri}: invalid JSON at line {exc.lineno} ({exc.msg})") from exc


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write one file atomically (temp + rename locally; a single PUT on S3)."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full or failing disk leaves no partial file behind
        raise


def write_json(uri: str | os.PathLike, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def list_dir(uri: str | os.PathLike) -> list[str]:
    """Names directly under a directory / prefix (files and sub-directories), sorted."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        prefix = key.rstrip("/") + "/" if key else ""
        names: set[str] = set()
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
            names.update(o["Key"][len(prefix):] for o in page.get("Contents", []))
        return sorted(n for n in names if n)
    path = Path(uri)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def remove_tree(uri: str | os.PathLike) -> None:
    """Delete a directory / every object under a prefix (nothing when absent)."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        for k in _list_keys(bucket, key.rstrip("/") + "/"):
            s3_client().delete_object(Bucket=bucket, Key=k)
        return
    shutil.rmtree(uri, ignore_errors=True)


def download(uri: str, dest: str | os.PathLike) -> Path:
    """Copy an S3 object or prefix to a local path; returns the local path."""
    bucket, key = split_s3(uri)
    dest = Path(dest)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3_client().download_file(bucket, key, str(dest))
        return dest
    except Exception:
        pass
    prefix = key.rstrip("/") + "/"
    keys = _list_keys(bucket, prefix)
    if not keys:
        raise UserError(f"{uri}: no such S3 object or prefix")
    for k in keys:
        target = dest / k[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3_client().download_file(bucket, k, str(target))
    return dest


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike) -> Iterator[Path]:
    """A local path to read `uri` from: the path itself when local, a temporary download when on S3."""
    if not is_s3(uri):
        if not Path(uri).exists():
            raise UserError(f"{uri}: no such file or directory")
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="ncf-stage-") as tmp:
        name = split_s3(str(uri))[1].rstrip("/").rsplit("/", 1)[-1] or "object"
        yield download(str(uri), Path(tmp) / name)


def _publish_local(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(SUCCESS))
    (tmp / SUCCESS).touch()
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _publish_s3(src: Path, dest: str) -> None:
    bucket, key = split_s3(dest)
    client = s3_client()
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.name != SUCCESS)
    staging = f"_staging/{key}-{uuid.uuid4().hex[:8]}"

    def drop_staging() -> None:
        """Best effort, a second pass for what the first left: staging is invisible to readers either way."""
        for _ in range(2):
            with contextlib.suppress(Exception):
                for k in _list_keys(bucket, staging + "/"):
                    with contextlib.suppress(Exception):
                        client.delete_object(Bucket=bucket, Key=k)

    try:
        for path in files:
            client.upload_file(str(path), bucket, f"{staging}/{path.relative_to(src).as_posix()}")
        client.delete_object(Bucket=bucket, Key=f"{key}/{SUCCESS}")
        wanted = set()
        for path in files:
            rel = path.relative_to(src).as_posix()
            wanted.add(f"{key}/{rel}")
            client.copy_object(Bucket=bucket, Key=f"{key}/{rel}",
                               CopySource={"Bucket": bucket, "Key": f"{staging}/{rel}"})
        for stale in set(_list_keys(bucket, key + "/")) - wanted:
            client.delete_object(Bucket=bucket, Key=stale)
        client.put_object(Bucket=bucket, Key=f"{key}/{SUCCESS}", Body=b"")
    finally:
        drop_staging()


def publish_dir(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Publish a finished local directory at `dest` (local or S3), replacing any previous one, `_SUCCESS` last."""
    src = Path(src)
    if is_s3(dest):
        _publish_s3(src, str(dest))
    else:
        _publish_local(src, Path(dest))


@contextlib.contextmanager
def staging_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty local directory to build `dest` in (next to it when local: same file system); removed on exit."""
    if is_s3(dest):
        parent = None
    else:
        parent = Path(dest).parent
        parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_output(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty local directory to write into; on success publish it at `dest`, on error drop it."""
    with staging_dir(dest) as tmp:
        yield tmp
        publish_dir(tmp, dest)


LOCKS = ".locks"


def _lock_uri(uri: str | os.PathLike) -> str:
    """The lock of `<parent>/<name>`: `<parent>/.locks/<name>` (kept: deleting a file lock would race)."""
    parent, slash, name = str(uri).rstrip("/").rpartition("/")
    return f"{parent}{slash}{LOCKS}/{name}"


@contextlib.contextmanager
def exclusive(uri: str | os.PathLike, timeout_s: float = 1800.0, stale_after_s: float = 3600.0) -> Iterator[None]:
    """Hold the lock of `uri` (a directory about to be published) across processes and hosts sharing the storage.

    Local: an OS file lock on `.locks/<name>` beside it (released by the OS if the holder dies). S3: the object
    `.locks/<name>` beside it, created only when absent (conditional PUT, `If-None-Match: *`) and deleted on
    release; a lock older than `stale_after_s` is taken as left by a dead holder and broken. Waits up to
    `timeout_s`.
    """
    lock = _lock_uri(uri)
    if not is_s3(uri):
        from filelock import FileLock, Timeout

        Path(lock).parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(lock, timeout=timeout_s):
                yield
        except Timeout:
            raise UserError(f"{uri}: another run is publishing it (waited {timeout_s:.0f}s for {lock})") from None
        return
    token = _acquire_s3_lock(lock, timeout_s, stale_after_s)
    try:
        yield
    finally:
        _release_s3_lock(lock, token)


def _acquire_s3_lock(lock: str, timeout_s: float, stale_after_s: float) -> str:
    import datetime as dt
    import socket
    import time

    from botocore.exceptions import ClientError

    bucket, key = split_s3(lock)
    token = uuid.uuid4().hex
    body = json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid()}).encode()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            return token
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") not in (409, 412):
                raise
        try:
            held = s3_client().head_object(Bucket=bucket, Key=key)
            age = (dt.datetime.now(dt.UTC) - held["LastModified"]).total_seconds()
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise
            continue  # released in between: try again
        if age > stale_after_s:
            s3_client().delete_object(Bucket=bucket, Key=key)
            continue
        if time.monotonic() > deadline:
            raise UserError(f"{lock}: another run has held this lock for {age:.0f}s (waited {timeout_s:.0f}s)")
        time.sleep(1.0)


def _release_s3_lock(lock: str, token: str) -> None:
    """Delete the lock if it is still ours (a holder presumed dead may have had it broken and re-taken)."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3(lock)
    try:
        held = json.loads(s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError:
        return
    if held.get("token") == token:
        s3_client().delete_object(Bucket=bucket, Key=key)
