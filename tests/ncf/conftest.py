"""Tiny in-memory partitions for the ncf unit tests."""

from __future__ import annotations

import pytest

from ncf.data import Partition
from tests.tiny_data import make_partition, write_partition


@pytest.fixture
def tiny_partition() -> Partition:
    return make_partition(num_users=30, num_items=60, per_user=10)


@pytest.fixture(scope="session")
def tiny_partition_uri(tmp_path_factory) -> str:
    return write_partition(make_partition(num_users=40, num_items=80, per_user=12),
                           tmp_path_factory.mktemp("data") / "dt=2026-01-01")


@pytest.fixture(scope="session")
def gated_store(tmp_path_factory):
    """A registry with a first, a rejected, a promoted and a trained version (tests/ncf/gated.py)."""
    from tests.ncf.gated import build

    return build(tmp_path_factory.mktemp("gated"))
