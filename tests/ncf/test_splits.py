"""The data a family fits on: ncf/splits.py."""

from __future__ import annotations

import numpy as np

from ncf.splits import Interactions


def test_seen_values_follow_the_seen_csr_and_keep_the_largest_of_a_repeated_pair():
    rows = Interactions(np.array([1, 0, 1, 0, 1], dtype=np.int32), np.array([2, 5, 0, 1, 2], dtype=np.int32),
                        np.zeros(5, dtype=np.int64), 2, 6)
    indptr, indices = rows.seen_csr()
    assert indptr.tolist() == [0, 2, 4] and indices.tolist() == [1, 5, 0, 2]
    assert rows.seen_values(np.array([10.0, 20.0, 30.0, 40.0, 50.0])).tolist() == [40.0, 20.0, 30.0, 50.0]
