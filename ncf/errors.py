"""User-facing errors: one `error:` line that names the cause and the fix, a distinct exit code per fault class,
and the full trace in a log file (or on stderr with `--debug` / NCF_DEBUG=1). Never a stack trace as the only
message.

A step raises `UserError` for bad input it can name (exit 2). Faults of the environment are recognised wherever
they come from (`classify`): by exception type and errno along the cause chain (OSError ENOSPC / EROFS / EACCES /
EADDRINUSE, botocore's credential and connection errors and S3 error codes) and by the messages of exceptions that
only carry text (Spark's Py4JJavaError: "No space left on device", ...). Code that knows the fault better raises
`Fault(kind, message)` itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import functools
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

DEBUG_ENV = "NCF_DEBUG"
LOG_DIR_ENV = "NCF_LOG_DIR"
_MAX_DETAIL = 400


@dataclasses.dataclass(frozen=True)
class Kind:
    """A fault class: what the `error:` line calls it, its exit code, and what to do about it."""

    name: str
    exit_code: int
    fix: str


INTERNAL = Kind("unexpected error", 1, "this is a bug: please report it with the trace")
BAD_INPUT = Kind("bad input", 2, "")  # the UserError's own message names the file / row / field and what to pass
CREDENTIALS = Kind("S3 credentials missing or rejected", 3,
                   "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an IAM role) for this "
                   "endpoint; on a cluster, the ncf-s3-credentials Secret")
ENDPOINT = Kind("endpoint unreachable", 4,
                "check the URL (AWS_ENDPOINT_URL for S3, --tracking-uri for MLflow) and that the server is up; "
                "S3 calls are retried AWS_MAX_ATTEMPTS times (default 3)")
DISK_FULL = Kind("disk full", 5, "free space on that file system, or write elsewhere (--storage-root, --output-uri, "
                                 "--scratch-dir, TMPDIR)")
READ_ONLY = Kind("read-only file system", 6, "write elsewhere (--storage-root, --output-uri, --scratch-dir, TMPDIR) "
                                             "or remount it read-write")
PERMISSION = Kind("permission denied", 7, "give this user write access there, or write to a location it owns; "
                                          "for S3, grant the credentials s3:GetObject / PutObject / ListBucket")
PORT_IN_USE = Kind("port in use", 8, "stop whatever listens there, or choose another port (ncfctl serve "
                                     "--http-port / --grpc-port, ncfctl run --port)")
INTERRUPTED = Kind("interrupted", 130, "")
KINDS = (INTERNAL, BAD_INPUT, CREDENTIALS, ENDPOINT, DISK_FULL, READ_ONLY, PERMISSION, PORT_IN_USE, INTERRUPTED)


class UserError(Exception):
    """Bad input or environment the user can fix. The message names the file / row / field involved."""

    kind = BAD_INPUT

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code


class Fault(UserError):
    """A fault of the environment, raised where the code knows which one it is (a busy port checked up front)."""

    def __init__(self, kind: Kind, message: str):
        super().__init__(message)
        self.kind = kind


_ERRNO_KINDS = {
    errno.ENOSPC: DISK_FULL, errno.EDQUOT: DISK_FULL, errno.EROFS: READ_ONLY, errno.EACCES: PERMISSION,
    errno.EPERM: PERMISSION, errno.EADDRINUSE: PORT_IN_USE, errno.ECONNREFUSED: ENDPOINT,
    errno.EHOSTUNREACH: ENDPOINT, errno.ENETUNREACH: ENDPOINT, errno.ETIMEDOUT: ENDPOINT,
}
_S3_CODE_KINDS = {
    "InvalidAccessKeyId": CREDENTIALS, "SignatureDoesNotMatch": CREDENTIALS, "ExpiredToken": CREDENTIALS,
    "InvalidToken": CREDENTIALS, "InvalidClientTokenId": CREDENTIALS, "AuthFailure": CREDENTIALS,
    "AccessDenied": PERMISSION, "AllAccessDisabled": PERMISSION, "403": PERMISSION,
}
_BOTOCORE_KINDS = {
    "NoCredentialsError": CREDENTIALS, "PartialCredentialsError": CREDENTIALS, "CredentialRetrievalError": CREDENTIALS,
    "NoAuthTokenError": CREDENTIALS, "EndpointConnectionError": ENDPOINT, "ConnectTimeoutError": ENDPOINT,
    "ConnectionClosedError": ENDPOINT, "ProxyConnectionError": ENDPOINT,
}
# Text of exceptions that carry no type to go by (Py4JJavaError holds the JVM's stack trace as text); first match.
_TEXT_KINDS = (
    (re.compile(r"No space left on device|Disk quota exceeded"), DISK_FULL),
    (re.compile(r"Read-only file system"), READ_ONLY),
    (re.compile(r"NoAuthWithAWSException|No AWS Credentials provided|Unable to locate credentials"
                r"|InvalidAccessKeyId|SignatureDoesNotMatch"), CREDENTIALS),
    (re.compile(r"AccessDeniedException|Permission denied|Access Denied"), PERMISSION),
    (re.compile(r"[Aa]ddress already in use"), PORT_IN_USE),
    (re.compile(r"UnknownHostException|Connection refused|Could not connect to the endpoint URL"
                r"|ConnectTimeoutException"), ENDPOINT),
)
# Where a JVM-side fault happened, when its text says (Spark names the file it was writing).
_LOCATION = re.compile(r"(?:file:|s3a?://|hdfs://)[^\s'\",;]+")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, outermost first (explicit causes and the exceptions being handled)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL - 3] + "..."


def _typed_kind(exc: BaseException) -> tuple[Kind, str] | None:
    """The fault class an exception's type (and errno / error code) says, with the detail worth printing."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO_KINDS:
        where = " ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        return _ERRNO_KINDS[exc.errno], f"{exc.strerror or exc}" + (f": {where}" if where else "")
    name = type(exc).__name__
    if type(exc).__module__.startswith("botocore"):
        if name in _BOTOCORE_KINDS:
            return _BOTOCORE_KINDS[name], str(exc)
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in _S3_CODE_KINDS:
            return _S3_CODE_KINDS[code], str(exc)
    return None


def _text_kind(text: str) -> tuple[Kind, str] | None:
    for pattern, kind in _TEXT_KINDS:
        match = pattern.search(text)
        if match:
            location = _LOCATION.search(text)
            return kind, match.group(0) + (f" (at {location.group(0).rstrip('.')})" if location else "")
    return None


@dataclasses.dataclass(frozen=True)
class Classified:
    kind: Kind
    message: str  # what happened: the UserError's own message, else the deepest fault's detail

    def line(self, log_path: str | None = None) -> str:
        """The one `error:` line."""
        parts = [self.message if self.kind is BAD_INPUT else f"{self.kind.name}: {self.message}"]
        if self.kind.fix:
            parts.append(self.kind.fix)
        text = "error: " + " -- ".join(parts)
        return text + (f" (full trace: {log_path})" if log_path else "")


def classify(exc: BaseException) -> Classified:
    """The fault class of `exc`, looking through its cause chain; a UserError keeps its message."""
    chain = list(_chain(exc))
    user = next((e for e in chain if isinstance(e, UserError)), None)
    if isinstance(user, Fault):
        return Classified(user.kind, _one_line(str(user)))
    found = next((k for k in map(_typed_kind, chain) if k is not None), None)
    if found is None:
        found = next((k for k in (_text_kind(str(e)) for e in chain) if k is not None), None)
    if found is not None:
        kind, detail = found
        return Classified(kind, _one_line(str(user) if user is not None else detail))
    if user is not None:
        return Classified(BAD_INPUT, _one_line(str(user)))
    return Classified(INTERNAL, _one_line(f"{type(exc).__name__}: {exc}"))


def classify_log(text: str) -> Classified | None:
    """The fault behind a failed step, read from its log: the last traceback's error line, and any fault text in
    that traceback. None when the log shows no traceback."""
    start = text.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    tail = text[start:]
    last = [line for line in tail.splitlines() if re.match(r"^[A-Za-z_][\w.]*(?:Error|Exception|Fault)\b", line)]
    final = last[-1] if last else tail.strip().splitlines()[-1]
    exc_type, _, message = final.partition(": ")
    found = _text_kind(tail)
    if exc_type.endswith(("UserError", "Fault")):
        return Classified(found[0] if found else BAD_INPUT, _one_line(message))
    if found is not None:
        return Classified(found[0], _one_line(found[1]))
    return Classified(INTERNAL, _one_line(final))


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def save_trace(exc: BaseException, prog: str) -> str | None:
    """Write the full trace to a log file (NCF_LOG_DIR, else <tmp>/ncf-logs) and return its path; None if even that
    cannot be written (the disk that is full may be the one the temp dir is on)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', prog)}-{stamp}-{os.getpid()}.log"
    for base in filter(None, (os.environ.get(LOG_DIR_ENV), str(Path(tempfile.gettempdir()) / "ncf-logs"))):
        try:
            path = Path(base) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(exc)))
            return str(path)
        except OSError:
            continue
    return None


def report(exc: BaseException, prog: str) -> int:
    """Print the one `error:` line for `exc` to stderr (the trace too with --debug); return the exit code."""
    classified = classify(exc)
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
        log = None
    elif classified.kind is BAD_INPUT or (isinstance(exc, UserError) and exc.kind is classified.kind):
        log = None  # raised by code that knew the fault: the message is the whole story
    else:
        log = save_trace(exc, prog) or "not saved; rerun with --debug"
    print(classified.line(log), file=sys.stderr, flush=True)
    return classified.kind.exit_code


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI `main`: any failure becomes one `error:` line on stderr and its class's exit code."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED.exit_code
        except Exception as exc:
            return report(exc, f"{main.__module__}")

    return wrapper
