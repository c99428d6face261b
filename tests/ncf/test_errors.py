"""Fault classes: exception types, errnos, S3 error codes and JVM text -> one `error:` line and a distinct exit code.
(The faults themselves, injected for real, are in tests/test_faults.py.)"""

from __future__ import annotations

import errno
import os

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from ncf import errors
from ncf.errors import UserError, classify, classify_log, exit_on_user_error


def test_every_fault_class_has_its_own_exit_code():
    codes = [k.exit_code for k in errors.KINDS]
    assert len(codes) == len(set(codes)) and 0 not in codes


def _raised(exc: BaseException, wrapper: type[Exception] | None = None) -> BaseException:
    """`exc` raised, optionally re-raised as `wrapper` from it (as the storage module wraps S3 errors)."""
    try:
        try:
            raise exc
        except BaseException as inner:
            if wrapper is None:
                raise
            raise wrapper(f"s3://bucket/key: cannot read ({inner})") from inner
    except BaseException as outer:
        return outer


def _s3_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")


@pytest.mark.parametrize(("exc", "kind"), [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x"), errors.DISK_FULL),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errors.DISK_FULL),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), errors.READ_ONLY),
    (PermissionError(errno.EACCES, "Permission denied", "/locked/x"), errors.PERMISSION),
    (OSError(errno.EADDRINUSE, "Address already in use"), errors.PORT_IN_USE),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), errors.ENDPOINT),
    (NoCredentialsError(), errors.CREDENTIALS),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bucket"), errors.ENDPOINT),
    (_s3_error("InvalidAccessKeyId"), errors.CREDENTIALS),
    (_s3_error("SignatureDoesNotMatch"), errors.CREDENTIALS),
    (_s3_error("AccessDenied"), errors.PERMISSION),
    (RuntimeError("An error occurred while calling o600.parquet.\n: org.apache.spark.SparkException: "
                  "Task failed while writing rows to file:/data/.staging-1/train.\nCaused by: "
                  "java.io.IOException: No space left on device"), errors.DISK_FULL),
    (RuntimeError("java.nio.file.FileSystemException: /ro/x: Read-only file system"), errors.READ_ONLY),
    (RuntimeError("org.apache.hadoop.fs.s3a.auth.NoAuthWithAWSException: No AWS Credentials provided"),
     errors.CREDENTIALS),
    (ValueError("something else entirely"), errors.INTERNAL),
])
def test_classify_by_type_errno_code_and_text(exc, kind):
    assert classify(_raised(exc)).kind is kind
    if kind is not errors.INTERNAL:  # wrapped the way the storage module wraps S3 errors: same class, its message
        wrapped = classify(_raised(exc, UserError))
        assert wrapped.kind is kind and wrapped.message.startswith("s3://bucket/key: cannot read")


def test_a_plain_user_error_stays_bad_input_with_its_message():
    found = classify(_raised(UserError("data.csv row 7: missing field 'user_id'")))
    assert found.kind is errors.BAD_INPUT and found.line() == "error: data.csv row 7: missing field 'user_id'"


def test_the_line_names_cause_fix_and_where_the_trace_is():
    found = classify(_raised(OSError(errno.ENOSPC, "No space left on device", "/mnt/data/part-0")))
    line = found.line("/tmp/ncf-logs/x.log")
    assert line.startswith("error: disk full: No space left on device: /mnt/data/part-0 -- free space")
    assert line.endswith("(full trace: /tmp/ncf-logs/x.log)") and "\n" not in line


def test_the_wrapper_prints_one_line_and_saves_the_trace(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(errors.LOG_DIR_ENV, str(tmp_path / "logs"))
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)

    @exit_on_user_error
    def main():
        open(os.devnull, "rb").close()
        raise OSError(errno.EROFS, "Read-only file system", "/ro/models")

    assert main() == errors.READ_ONLY.exit_code == 6
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert line.startswith("error: read-only file system: Read-only file system: /ro/models -- write elsewhere")
    (log,) = (tmp_path / "logs").iterdir()
    assert f"(full trace: {log})" in line and "Traceback (most recent call last)" in log.read_text()


def test_debug_prints_the_trace_instead(monkeypatch, capsys):
    monkeypatch.setenv(errors.DEBUG_ENV, "1")

    @exit_on_user_error
    def main():
        raise KeyError("internal")

    assert main() == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("error: unexpected error")


def test_a_deliberate_fault_needs_no_trace_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(errors.LOG_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)

    @exit_on_user_error
    def main():
        raise errors.Fault(errors.PORT_IN_USE, "127.0.0.1:8080 (HTTP) is already in use")

    assert main() == 8
    assert "full trace" not in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_classify_a_failed_steps_log():
    log = ("[KFP Executor] ...\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
           "py4j.protocol.Py4JJavaError: An error occurred while calling o600.parquet.\n"
           ": org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to "
           "file:/data/.staging-9/train.\n\tat org.apache.spark...\nCaused by: java.io.IOException: "
           "No space left on device\n")
    found = classify_log(log)
    assert found.kind is errors.DISK_FULL and found.message == (
        "No space left on device (at file:/data/.staging-9/train)")
    bad = classify_log("Traceback (most recent call last):\n  File \"x\"\nncf.errors.UserError: in.csv: no rows\n")
    assert bad.kind is errors.BAD_INPUT and bad.message == "in.csv: no rows"
    assert classify_log("all good\n") is None
