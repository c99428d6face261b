"""Fixtures shared by every test area: the real MovieLens-100K file and a real S3 API (moto server)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ncf.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NCF_SHARED_DIR", REPO_ROOT.parent / "shared"))
ML100K = SHARED / "datasets" / "ml-100k" / "u.data"
_ARCHIVE_DUMP = pytest.StashKey["subprocess.Popen | None"]()


def pytest_configure(config) -> None:
    """Spark drivers start from a class-data-sharing archive with C1 only (tests/spark_jvm.py). The controller
    sets the options before xdist starts its workers, which inherit the environment, and dumps a missing archive
    in the background meanwhile."""
    from tests import spark_jvm

    os.environ.setdefault("SPARK_DAEMON_JAVA_OPTS", spark_jvm.DAEMON_OPTIONS)
    if "SPARK_SUBMIT_OPTS" in os.environ:
        return
    if not hasattr(config, "workerinput"):
        config.stash[_ARCHIVE_DUMP] = spark_jvm.start_archive_dump()
    os.environ["SPARK_SUBMIT_OPTS"] = spark_jvm.java_options(spark_jvm.archive_path())


def pytest_unconfigure(config) -> None:
    from tests import spark_jvm

    dump = config.stash.get(_ARCHIVE_DUMP, None)
    problem = spark_jvm.finish_archive_dump(dump) if dump is not None else None
    if problem:
        print(f"warning: {problem}: Spark drivers start without it (slower)", file=sys.stderr)


def pytest_collection_modifyitems(items) -> None:
    """Files holding slow tests run first. `make test` runs a pytest-xdist worker per core, each taking a whole
    file at a time in this order, so no minutes-long file starts last while the other worker sits idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the collection order within each group


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """MovieLens-100K `u.data`, read from ../shared (its licence forbids committing it)."""
    if not ML100K.exists():
        pytest.skip(f"MovieLens-100K not found at {ML100K} (set NCF_SHARED_DIR to the folder holding datasets/)")
    return ML100K


@pytest.fixture(scope="session")
def moto_server():
    """A moto S3 server on 127.0.0.1; yields its endpoint URL. Credentials are dummies scoped to the tests."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_server, monkeypatch):
    """A fresh bucket on the moto server, with AWS_ENDPOINT_URL pointing the project's storage module at it."""
    import uuid

    import boto3

    from ncf import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage.reset_client()
    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    yield name
    storage.reset_client()
