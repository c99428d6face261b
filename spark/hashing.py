"""Counter-based randomness: values that are pure functions of (seed, ids), so results do not depend on how
Spark partitions the data, on the number of workers or on the order rows arrive in."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a fast, well-distributed 64-bit hash (vectorized, wraps on overflow)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_ints(seed: int, *keys) -> np.ndarray:
    """A uint64 hash of the seed and integer key arrays (broadcast together)."""
    h = mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    for key in keys:
        h = mix64(h ^ np.asarray(key).astype(np.uint64))
    return h


def hash_uniform(seed: int, ids: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) floats, a pure function of (seed, id, stream)."""
    bits = hash_ints(seed, stream, ids)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
