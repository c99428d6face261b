"""Integration: train on the MovieLens-100K leave-one-out split, well above popularity ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncf.data import Partition
from ncf.package import load_package
from ncf.sampling import NegativeSampler
from ncf.train import TrainConfig, run
from tests.tiny_data import write_partition


def ml100k_partition(path) -> Partition:
    """The paper's split built in numpy (the Spark job does this in production; too slow to start per test):
    each user's latest interaction is the test item, ranked among 99 items the user never interacted with."""
    raw = np.loadtxt(path, dtype=np.int64)
    users, items, ts = raw[:, 0] - 1, raw[:, 1] - 1, raw[:, 3]
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1
    order = np.lexsort((np.arange(users.size), ts, users))
    last = order[np.r_[users[order][1:] != users[order][:-1], True]]
    train = np.ones(users.size, dtype=bool)
    train[last] = False
    test_users = users[last]
    sampler = NegativeSampler(users, items, num_users, num_items)
    negatives = sampler.sample_distinct(torch.from_numpy(test_users), 99, torch.Generator().manual_seed(0))
    return Partition(
        uri="ml-100k", train_users=users[train].astype(np.int32), train_items=items[train].astype(np.int32),
        train_ts=ts[train], test_users=test_users.astype(np.int32), test_items=items[last].astype(np.int32),
        test_negatives=negatives.numpy().astype(np.int32),
        user_ids=np.asarray([str(u + 1) for u in range(num_users)], dtype=object),
        item_ids=np.asarray([str(i + 1) for i in range(num_items)], dtype=object),
        stats={"num_users": num_users, "num_items": num_items})


@pytest.mark.slow
def test_ml100k_beats_popularity(ml100k_path, tmp_path):
    partition = ml100k_partition(ml100k_path)
    uri = write_partition(partition, tmp_path / "data" / "dt=2026-01-01")
    popularity = np.bincount(partition.train_items, minlength=partition.num_items)
    candidates = np.c_[partition.test_items, partition.test_negatives]
    pop_hr = float(((popularity[candidates][:, 1:] >= popularity[candidates][:, :1]).sum(1) < 10).mean())
    result = run(TrainConfig(partition_uri=uri, output_uri=str(tmp_path / "models" / "m"), model="GMF", candidates="",
                             epochs=5, batch_size=1024, lr=0.005, patience=0, progress="off"))
    assert 0.25 < pop_hr < 0.5
    assert result.metrics["hr@10"] > pop_hr + 0.15, (result.metrics, pop_hr)
    assert result.metrics["full_hr@10"] > 0.03
    assert load_package(result.model_uri).item_ids[0] == "1"
