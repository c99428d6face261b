"""One Spark session for every test in tests/spark (local[2], few shuffle partitions, UI off)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    from spark.session import get_spark

    session = get_spark("local[2]", app_name="ncf-tests")
    yield session
    session.stop()


@pytest.fixture
def write_text(tmp_path):
    """Write a text file under tmp_path and return its path."""

    def write(name: str, text: str):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write
