"""Faults injected for real into the `ncfctl` commands a user runs: S3 without credentials (moto server), an S3
endpoint that refuses connections, a full disk (a small tmpfs) during preprocessing and training, read-only
storage (a read-only mount) during both, a directory the process may not write (root without CAP_DAC_OVERRIDE,
via setpriv), a negative thread count and a busy port. Each must end in ONE `error:` line naming the cause and the
fix, its fault class's exit code, the full trace in the log file the line names, and nothing half-written.

These need root (mount, setpriv) and a moto server: when a part cannot be set up the test fails, it never skips.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ncf import errors
from ncf.ports import free_port
from tests.conftest import REPO_ROOT
from tests.mlflow_fixtures import make_package, oracle_model
from tests.tiny_data import make_partition, write_partition

# What a Spark JVM prints on stderr as it starts, before any log setting applies (not an error line).
JVM_BANNER = re.compile(r"^(WARNING: Using incubator modules: .*|Setting default log level to .*|"
                        r"To adjust logging level use sc\.setLogLevel.*)$")
PROGRESS = re.compile(r"^\[[\w.-]+\] epoch \d+/\d+ |^HR=[\d.]+; NDCG=")  # ncfctl train's per-epoch lines
FULL_TRACE = re.compile(r"\(full trace: (?P<path>[^)]+)\)$")


def _must(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot set up the fault: {' '.join(command)}: {done.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A real tmpfs of `size` at `path` (read-only if asked); lazily unmounted (a JVM may still hold it briefly)."""
    path.mkdir(parents=True, exist_ok=True)
    _must(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(path)])
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A clean environment: no AWS settings or ~/.aws, traces into tmp_path/logs."""
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", errors.DEBUG_ENV))}
    return {**clean, "HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
            errors.LOG_DIR_ENV: str(tmp_path / "logs"), "PYTHONPATH": str(REPO_ROOT)}


def ncfctl(*args: str, env: dict[str, str], prefix: tuple[str, ...] = (), timeout: float = 600):
    return subprocess.run([*prefix, sys.executable, "-m", "ncfctl", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=timeout)


def assert_one_error_line(done: subprocess.CompletedProcess, kind: errors.Kind, *phrases: str) -> str:
    """Exit code of `kind`; stderr is one `error:` line (besides JVM start-up banners and training progress) that
    names the cause, the fix and a trace file holding the full trace; no trace or Java frames on the terminal."""
    assert done.returncode == kind.exit_code, (done.returncode, done.stderr[-3000:])
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not JVM_BANNER.match(ln) and
             not PROGRESS.match(ln)]
    assert len(lines) == 1, done.stderr[-3000:]
    (line,) = lines
    assert line.startswith(f"error: {kind.name}: ") and kind.fix in line, line
    for phrase in phrases:
        assert phrase in line, line
    assert "Traceback" not in done.stderr + done.stdout and "\tat " not in done.stderr
    trace = FULL_TRACE.search(line)
    assert trace and "Traceback (most recent call last)" in Path(trace["path"]).read_text(), line
    return line


def half_written(root: Path) -> list[str]:
    """Staging / temp leftovers, and partition or package directories without their _SUCCESS marker."""
    found = [str(p) for p in root.rglob("*") if ".staging-" in p.name or ".tmp-" in p.name]
    for parent in ("data", "models"):
        for directory in (root / parent).glob("*") if (root / parent).is_dir() else []:
            if directory.is_dir() and not directory.name.endswith(".checkpoint") and \
                    not (directory / "_SUCCESS").exists():
                found.append(str(directory))
    return found


@pytest.fixture(scope="module")
def partition_uri(tmp_path_factory) -> str:
    return write_partition(make_partition(num_users=200, num_items=300, per_user=10),
                           tmp_path_factory.mktemp("faults-data") / "dt=2026-01-01")


TRAIN = ("--epochs", "2", "--ensemble", "1", "--batch-size", "256", "--factor-num", "8", "--progress", "off",
         "--candidates", "")


def _event_log(path: Path, users: int = 1500, per_user: int = 20) -> Path:
    """A generic event CSV (user_id,item_id,ts) big enough that its partition outgrows a 256k disk."""
    rows = ["user_id,item_id,ts"]
    rows += [f"u{u},i{(u * 7 + e * 13) % 900},{1_700_000_000 + u * 100 + e}" for u in range(users)
             for e in range(per_user)]
    path.write_text("\n".join(rows) + "\n")
    return path


# ---- S3 -------------------------------------------------------------------------------------------------------

@pytest.fixture
def bucket_with_input(moto_server, tmp_path):
    import uuid

    import boto3

    name = f"faults-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=name)
    s3.upload_file(str(_event_log(tmp_path / "events.csv", users=50, per_user=10)), name, "raw/events.csv")
    return name, s3


def test_s3_without_credentials(bucket_with_input, moto_server, env):
    bucket, s3 = bucket_with_input
    done = ncfctl("preprocess", "--input-uri", f"s3://{bucket}/raw/events.csv", "--storage-root",
                  f"s3://{bucket}/root", "--run-date", "2026-01-01", env={**env, "AWS_ENDPOINT_URL": moto_server})
    assert_one_error_line(done, errors.CREDENTIALS, "Unable to locate credentials", "AWS_ACCESS_KEY_ID")
    assert s3.list_objects_v2(Bucket=bucket, Prefix="root/").get("KeyCount", 0) == 0
    done = ncfctl("train", "--partition-uri", f"s3://{bucket}/root/data/dt=2026-01-01", "--output-uri",
                  f"s3://{bucket}/root/models/m", *TRAIN, env={**env, "AWS_ENDPOINT_URL": moto_server})
    assert_one_error_line(done, errors.CREDENTIALS, f"s3://{bucket}/root/data/dt=2026-01-01")


def test_unreachable_s3_endpoint_fails_fast(env, tmp_path):
    # The same command failing without any network call (a missing local input) is the baseline: start-up and
    # imports cost the same in both, however busy the machine; unbounded retries added ~14 s on top.
    started = time.monotonic()
    baseline = ncfctl("preprocess", "--input-uri", str(tmp_path / "missing.csv"), "--storage-root",
                      str(tmp_path / "root"), env=env)
    baseline_s = time.monotonic() - started
    assert baseline.returncode != 0, baseline.stderr[-2000:]
    closed = free_port()  # nothing listens there
    started = time.monotonic()
    done = ncfctl("preprocess", "--input-uri", "s3://bucket/raw/events.csv", "--storage-root", "s3://bucket/root",
                  env={**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"})
    elapsed = time.monotonic() - started
    assert_one_error_line(done, errors.ENDPOINT, f"http://127.0.0.1:{closed}", "AWS_ENDPOINT_URL")
    assert elapsed - baseline_s < 6, f"{elapsed:.1f}s against {baseline_s:.1f}s without S3: the retries are not bounded"


# ---- local storage ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_disk_full_during_preprocessing(tmp_path, env):
    events = _event_log(tmp_path / "events.csv")
    with tmpfs(tmp_path / "full", "256k") as root:
        done = ncfctl("preprocess", "--input-uri", str(events), "--storage-root", str(root), "--run-date",
                      "2026-01-01", env=env)
        assert_one_error_line(done, errors.DISK_FULL, "No space left on device")
        assert half_written(root) == []


@pytest.mark.slow
def test_read_only_storage_during_preprocessing(tmp_path, env):
    events = _event_log(tmp_path / "events.csv", users=100)
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as root:
        done = ncfctl("preprocess", "--input-uri", str(events), "--storage-root", str(root), "--run-date",
                      "2026-01-01", env=env)
        assert_one_error_line(done, errors.READ_ONLY, str(root))
        assert list(root.iterdir()) == []


def test_disk_full_during_training(tmp_path, env, partition_uri):
    with tmpfs(tmp_path / "full", "64k") as root:
        done = ncfctl("train", "--partition-uri", partition_uri, "--output-uri", str(root / "models" / "m"), *TRAIN,
                      env=env)
        assert_one_error_line(done, errors.DISK_FULL, "No space left on device")
        assert half_written(root) == []


def test_read_only_storage_during_training(tmp_path, env, partition_uri):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as root:
        done = ncfctl("train", "--partition-uri", partition_uri, "--output-uri", str(root / "models" / "m"), *TRAIN,
                      env=env)
        assert_one_error_line(done, errors.READ_ONLY, str(root))
        assert list(root.iterdir()) == []


def test_a_directory_the_process_may_not_write(tmp_path, env, partition_uri):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # Root ignores permission bits; without CAP_DAC_OVERRIDE it is held to them like any user.
    drop = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")
    probe = subprocess.run([*drop, "touch", str(locked / "probe")], capture_output=True, text=True)
    if probe.returncode == 0:
        pytest.fail("setpriv did not drop CAP_DAC_OVERRIDE: cannot set up a permission fault")
    done = ncfctl("train", "--partition-uri", partition_uri, "--output-uri", str(locked / "models" / "m"), *TRAIN,
                  env=env, prefix=drop)
    assert_one_error_line(done, errors.PERMISSION, str(locked))
    assert list(locked.iterdir()) == []


# ---- bad settings and busy ports --------------------------------------------------------------------------------

def test_negative_thread_count_is_bad_input(tmp_path, env, partition_uri):
    done = ncfctl("train", "--partition-uri", partition_uri, "--output-uri", str(tmp_path / "m"), *TRAIN,
                  "--threads", "-3", env=env)
    assert done.returncode == errors.BAD_INPUT.exit_code
    assert done.stderr.strip().splitlines() == ["error: threads: must be >= 0 (0: chosen from the cores and batch "
                                                "size), got -3"]
    assert not (tmp_path / "m").exists()


def test_busy_port_for_serve(tmp_path, env):
    partition = make_partition(num_users=12, num_items=30, per_user=4, num_neg=5)
    package = make_package(str(tmp_path / "pkg"), partition, oracle_model(partition, 0.0))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = ncfctl("serve", "--model-uri", package, "--http-port", str(port), "--grpc-port", str(free_port()),
                      env=env, timeout=120)
    assert done.returncode == errors.PORT_IN_USE.exit_code, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"error: port in use: 127.0.0.1:{port} (HTTP) is already in use -- {errors.PORT_IN_USE.fix}"]


def test_debug_shows_the_trace(tmp_path, env):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as root:
        done = ncfctl("--debug", "train", "--partition-uri", str(tmp_path / "none"), "--output-uri",
                      str(root / "m"), *TRAIN, env=env)
    assert done.returncode == errors.BAD_INPUT.exit_code
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: ") and "no such partition" in done.stderr
