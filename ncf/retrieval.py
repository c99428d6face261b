"""Two-stage top-K for large catalogues: FAISS retrieval over inner-product vectors, exact re-ranking.

Scoring every item per request is linear in the catalogue (a 1M-item NeuMF ensemble: ~1 s per user on one core).
Past `threshold` items the predictor instead

1. retrieves `candidates` items per user from an IVF index over the scorer's `item_vectors()`, searched with the
   user's `user_vectors()` row (inner product; `Scorer.inner_product` "exact" for GMF / iALS, "partial" for NeuMF,
   whose product is only the GMF branch's share of the logit). With exclude-seen it asks the index for
   `candidates + len(seen)` items and drops the seen ones, so every user still gets `candidates` unseen items;
2. re-ranks them with the full model (`Scorer.score_candidates`): the scores in the answer are the family's own.

Families without vectors (NCF MLP, EASE, popularity) always take the exact path. The index is an IVF with
`nlist` lists (k-means on the item vectors), searched over `nprobe` lists, whose vectors are stored as
- "pq4" (default): each vector's residual from its list's centroid as product-quantised 4-bit codes, one
  sub-quantiser per 2 dimensions, scanned with FAISS's SIMD fast-scan kernels (`IndexIVFPQFastScan`): an eighth
  of float32 and, at 1M items, an order of magnitude faster to search than sq8 (docs/serving.md, "Codes"). Its
  scores are coarser, which the re-ranking stage absorbs: it retrieves `candidates` (500) items to re-rank 10;
- "sq8": 8-bit scalar-quantised codes (a quarter of float32); "flat": float32.
It is built when a package is exported (`ncf.package.write_package`, when these settings choose two-stage for its
catalogue) and saved as `contracts.PACKAGE_ANN_INDEX`; a package without it (or with one built with other `nlist`
/ storage) gets one built when it is loaded. A saved sq8 / flat index is memory-mapped (pq4's block layout is read
into memory: 33 bytes per item with its ids).

Settings (`RetrievalSettings`): `config.json` "retrieval" (the package's), then the predictor's flags /
`NCF_RETRIEVAL*` environment variables on top (`ncfctl serve --retrieval ann`), then these defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ncf.errors import UserError

MODES = ("auto", "exact", "ann")
STORAGES = ("pq4", "sq8", "flat")
CONFIG_KEY = "retrieval"  # config.json key of the package's settings
# Environment overrides (the serving container's way to set them without flags); flags win over these.
ENV = {"mode": "NCF_RETRIEVAL", "threshold": "NCF_RETRIEVAL_THRESHOLD", "candidates": "NCF_RETRIEVAL_CANDIDATES",
       "nprobe": "NCF_RETRIEVAL_NPROBE", "nlist": "NCF_RETRIEVAL_NLIST", "storage": "NCF_RETRIEVAL_STORAGE"}
# k-means trains on a seeded sample of at most this many item vectors per list, for this many iterations: building
# the index costs ~ nlist^2 * points * iterations, which is what bounds nlist (measured: docs/serving.md).
TRAIN_POINTS_PER_LIST = 40
KMEANS_ITERATIONS = 10
# Exclude-seen marks the seen items of a few users at a time in a bool matrix of at most this many bytes, allocated
# once per thread and cleared after each use: zeroing a fresh one per call cost more than the lookups (1M items, 8
# users: 1.2 ms against 0.13).
SEEN_MARKS = 1 << 24


@dataclasses.dataclass(frozen=True)
class RetrievalSettings:
    """How the predictor ranks a whole catalogue. `mode`: auto (two-stage from `threshold` items on, when the
    family has inner-product vectors), exact (score every item), ann (two-stage whatever the size)."""

    mode: str = "auto"
    threshold: int = 100_000
    candidates: int = 500  # items retrieved per user, then re-ranked by the full model (docs/serving.md: why 500)
    nlist: int = 0  # IVF lists; 0: 2 * sqrt(num_items), at most num_items / 8
    nprobe: int = 64  # lists searched per user
    storage: str = "pq4"  # index codes: pq4 (4-bit PQ, fast-scan), sq8 (8-bit scalar quantiser), flat (float32)
    item_bias: bool = True  # "partial" scorers: one more dimension, each item's mean residual score (below)
    bias_users: int = 16  # users sampled (seeded) to estimate it
    seed: int = 1234  # of the k-means and user samples

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"retrieval.mode: {self.mode!r}, expected one of {list(MODES)}")
        if self.storage not in STORAGES:
            raise UserError(f"retrieval.storage: {self.storage!r}, expected one of {list(STORAGES)}")
        for name in ("threshold", "candidates", "nprobe", "bias_users"):
            if getattr(self, name) < 1:
                raise UserError(f"retrieval.{name}: must be >= 1, got {getattr(self, name)}")
        if self.nlist < 0:
            raise UserError(f"retrieval.nlist: must be >= 0 (0: automatic), got {self.nlist}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> RetrievalSettings:
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"retrieval: unknown setting(s) {unknown}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> RetrievalSettings:
        """These settings with the given overrides; None / "" / 0 leave a setting as it is."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v not in (None, "", 0)})

    def with_environment(self, environ: dict[str, str] | None = None) -> RetrievalSettings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in ENV.items():
            text = environ.get(var, "").strip()
            if not text:
                continue
            kind = type(getattr(self, name))
            try:
                values[name] = kind(text)
            except ValueError as exc:
                raise UserError(f"{var}: {text!r} is not a valid {name} ({kind.__name__})") from exc
        return self.replace(**values)

    def two_stage(self, num_items: int, inner_product: str) -> bool:
        """Whether a catalogue of `num_items` items scored by a scorer with this `inner_product` is served
        two-stage (never without vectors)."""
        if not inner_product or self.mode == "exact":
            return False
        return self.mode == "ann" or num_items >= self.threshold

    def lists(self, num_items: int) -> int:
        """The IVF list count for a catalogue: `nlist`, or 2 * sqrt(num_items) (>= 1, at most num_items / 8)."""
        wanted = self.nlist or int(round(2 * math.sqrt(num_items)))
        return max(1, min(wanted, num_items // 8 or 1))


def package_settings(config: dict[str, Any]) -> RetrievalSettings:
    """The settings a package's config.json records (defaults for a package without them)."""
    try:
        return RetrievalSettings.from_dict(config.get(CONFIG_KEY))
    except TypeError as exc:
        raise UserError(f"config.json {CONFIG_KEY}: {exc}") from exc


def retrieval_vectors(scorer, settings: RetrievalSettings) -> np.ndarray:
    """The item side of the index: `item_vectors()`, and for a "partial" scorer with `item_bias` one more column,
    each item's residual (score minus inner product; NeuMF: the MLP tower's term) averaged over `bias_users`
    sampled users. Queries get a 1 in that column, so retrieval ranks by the GMF product plus the item's typical
    tower term: the part of the tower that does not depend on the user is no longer invisible to retrieval."""
    import torch

    items = scorer.item_vectors().float().numpy()
    if not use_bias(scorer, settings):
        return items
    num_users = _num_users(scorer)
    sample = np.random.default_rng(settings.seed).choice(num_users, min(num_users, settings.bias_users),
                                                         replace=False)
    residual = np.zeros(items.shape[0], dtype=np.float64)
    with torch.no_grad():
        for user in sample:
            users = np.asarray([user], dtype=np.int64)
            scores = scorer.score_all(users)[0].double().numpy()
            residual += scores - items.astype(np.float64) @ scorer.user_vectors(users)[0].double().numpy()
    return np.ascontiguousarray(np.c_[items, residual / len(sample)], dtype=np.float32)


def use_bias(scorer, settings: RetrievalSettings) -> bool:
    return settings.item_bias and scorer.inner_product == "partial"


def _num_users(scorer) -> int:
    user_gmf = getattr(scorer, "user_gmf", None)  # ItemScorer: [K, U, f]
    return int(user_gmf.shape[1]) if user_gmf is not None else int(scorer.user_vectors().shape[0])


def _faiss():
    import faiss

    return faiss


def index_dim(dim: int, storage: str) -> int:
    """The index's width for vectors of width `dim`: pq4 pads to an even width (one sub-quantiser per 2
    dimensions; the zero column changes no inner product), the others keep it."""
    return dim + dim % 2 if storage == "pq4" else dim


def _padded(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[1] < dim:
        vectors = np.c_[vectors, np.zeros((len(vectors), dim - vectors.shape[1]), dtype=np.float32)]
    return np.ascontiguousarray(vectors)


def build_index(item_vectors, settings: RetrievalSettings, log=None):
    """An IVF inner-product index over `item_vectors` [N, d] (float32); ids are the item indices."""
    faiss = _faiss()
    started = time.perf_counter()
    n, width = np.shape(item_vectors)
    d = index_dim(width, settings.storage)
    vectors = _padded(item_vectors, d)
    nlist = settings.lists(n)
    quantizer = faiss.IndexFlatIP(d)
    if settings.storage == "pq4":
        index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, d // 2, 4, faiss.METRIC_INNER_PRODUCT)
        # Encode each vector's residual from its list's centroid, not the vector: 16 levels per sub-quantiser then
        # span a list's spread, not the catalogue's. Without it the item-bias column of a NeuMF package kept 16
        # levels over all items, and the top-10 overlap with exact fell from 1.000 to 0.77-0.94 (synthetic 216k).
        index.by_residual = True
    elif settings.storage == "sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # the index owns (and frees) its quantizer
    sample = min(n, nlist * TRAIN_POINTS_PER_LIST)
    rows = np.sort(np.random.default_rng(settings.seed).choice(n, sample, replace=False)) if sample < n else None
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    index.cp.seed = settings.seed
    index.cp.niter = KMEANS_ITERATIONS
    index.train(vectors if rows is None else vectors[rows])
    index.add(vectors)
    if log is not None:
        log(f"retrieval: IVF{nlist},{settings.storage.upper()} index over {n:,} items x {width} built in "
            f"{time.perf_counter() - started:.1f}s")
    return index


def index_storage(index) -> str:
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVFPQFastScan):
        return "pq4"
    return "sq8" if isinstance(index, faiss.IndexIVFScalarQuantizer) else "flat"


def index_matches(index, num_items: int, dim: int, settings: RetrievalSettings) -> bool:
    """Whether a (saved) index is the one `settings` would build for retrieval vectors of width `dim`
    (`retrieval_vectors`: the item-bias column included)."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    storage = index_storage(index)
    return (index.ntotal == num_items and index.d == index_dim(dim, settings.storage)
            and ivf.nlist == settings.lists(num_items) and storage == settings.storage
            and (storage != "pq4" or ivf.by_residual) and index.metric_type == faiss.METRIC_INNER_PRODUCT)


def write_index(index, path: str | Path) -> None:
    _faiss().write_index(index, str(path))


def read_index(path: str | Path):
    """A saved index, its inverted lists memory-mapped from the file (paged in as searched)."""
    faiss = _faiss()
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Retriever:
    """Candidates for users from the index; `candidates(users, seen)` -> (items int64 [B, C], valid bool [B, C])."""

    def __init__(self, scorer, index, settings: RetrievalSettings):
        self.scorer = scorer
        self.index = index
        self.settings = settings
        self.num_items = scorer.num_items
        self.size = min(settings.candidates, self.num_items)
        self.nlist = _faiss().extract_index_ivf(index).nlist if index is not None else 0
        self.bias = use_bias(scorer, settings)
        self._per_thread = threading.local()  # each thread's seen-marks matrix (`_seen`)

    @classmethod
    def for_package(cls, package, settings: RetrievalSettings, log=_stderr) -> Retriever | None:
        """The package's retriever under `settings`, or None when it is served exact. Uses the package's saved
        index when it matches the settings, else builds one."""
        scorer = package.scorer
        if not settings.two_stage(scorer.num_items, scorer.inner_product):
            return None
        if settings.candidates >= scorer.num_items:  # every item is a candidate: no index needed
            return cls(scorer, None, settings)
        index = getattr(package, "ann_index", None)
        if index is not None:
            dim = scorer.item_vectors().shape[1] + use_bias(scorer, settings)
            if not index_matches(index, scorer.num_items, dim, settings):
                log(f"retrieval: the package's index does not match the settings ({settings}); rebuilding it")
                index = None
        if index is None:
            index = build_index(retrieval_vectors(scorer, settings), settings, log)
        return cls(scorer, index, settings)

    def candidates(self, users: np.ndarray, seen: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        """For each user index in `users`: up to C = min(candidates, num_items) item indices (retrieval order,
        best first), none of them in that user's `seen` array (None: nothing excluded); `valid` marks the filled
        slots (fewer than C only when the catalogue holds fewer unseen items). A user whose `nprobe` lists hold fewer
        than C unseen items is searched again over 4x as many lists, up to all of them."""
        b, c = len(users), self.size
        out = np.zeros((b, c), dtype=np.int64)
        valid = np.zeros((b, c), dtype=bool)
        if self.index is None:  # the whole catalogue
            for row, excluded in enumerate(seen):
                items = np.arange(self.num_items) if excluded is None or not len(excluded) \
                    else np.setdiff1d(np.arange(self.num_items), excluded, assume_unique=True)
                out[row, :len(items)], valid[row, :len(items)] = items, True
            return out, valid
        queries = self.queries(users)
        # Each row asks for C + its own seen count, and rows asking for the same count are searched together: a
        # row's answer never depends on the other rows of its batch (quantised scores tie, and which tied items
        # fill the last places depends on how many the search returns).
        wanted = np.minimum(c + np.fromiter((0 if s is None else len(s) for s in seen), np.int64, count=b),
                            self.num_items)
        if (wanted == wanted[0]).all():  # one request's user, or users with as many seen items: one search
            self._fill(np.arange(b), int(wanted[0]), queries, seen, out, valid)
            return out, valid
        order = np.argsort(wanted, kind="stable")
        counts, starts = np.unique(wanted[order], return_index=True)
        for k, group in zip(counts, np.split(order, starts[1:]), strict=True):
            self._fill(group, int(k), queries, seen, out, valid)
        return out, valid

    def queries(self, users: np.ndarray) -> np.ndarray:
        """The index's query rows for `users`: their `user_vectors`, a 1 in the item-bias column when the index
        has one, zeros in pq4's padding column."""
        vectors = self.scorer.user_vectors(users).float().numpy()
        queries = np.zeros((len(users), self.index.d), dtype=np.float32)
        queries[:, :vectors.shape[1]] = vectors
        if self.bias:
            queries[:, vectors.shape[1]] = 1.0
        return queries

    def _fill(self, rows: np.ndarray, k: int, queries: np.ndarray, seen, out: np.ndarray, valid: np.ndarray) -> None:
        """out / valid of `rows`: their first C unseen items among the k best of the probed lists."""
        c, nprobe = self.size, self.settings.nprobe
        while len(rows):
            _, found = self._search(queries[rows], k, nprobe)
            kept = (found >= 0) & ~self._seen(found, [seen[row] for row in rows])
            slot = np.cumsum(kept, axis=1) - 1  # each kept item's place among its row's kept items
            take = kept & (slot < c)
            hit_row, hit_col = np.nonzero(take)
            valid[rows] = False
            out[rows[hit_row], slot[hit_row, hit_col]] = found[hit_row, hit_col]
            valid[rows[hit_row], slot[hit_row, hit_col]] = True
            # Top up: the probed lists held fewer than C unseen items; search more lists (at most all of them).
            if nprobe >= self.nlist:
                break
            rows, nprobe = rows[take.sum(axis=1) < c], min(self.nlist, 4 * nprobe)

    def _seen(self, found: np.ndarray, seen: list[np.ndarray | None]) -> np.ndarray:
        """bool [B, k]: whether found[row, j] is in seen[row]. The seen items of a few rows at a time are marked in
        a [rows, num_items] bool matrix (at most SEEN_MARKS bytes) that the found items are looked up in: no sort
        and no per-user call, so it costs the same per row whatever the batch."""
        hits = np.zeros(found.shape, dtype=bool)
        step = max(1, SEEN_MARKS // self.num_items)
        marks = self._marks(min(step, len(found)))
        for lo in range(0, len(found), step):
            part = [s if s is not None else np.empty(0, np.int64) for s in seen[lo:lo + step]]
            lengths = np.fromiter((len(s) for s in part), dtype=np.int64, count=len(part))
            if not lengths.any():
                continue
            rows, cols = np.repeat(np.arange(len(part)), lengths), np.concatenate(part)
            marks[rows, cols] = True
            try:
                block = found[lo:lo + step]
                hits[lo:lo + step] = marks[np.arange(len(block))[:, None], np.maximum(block, 0)]
            finally:
                marks[rows, cols] = False  # all False again for the next call
        return hits

    def _marks(self, rows: int) -> np.ndarray:
        """This thread's all-False bool [>= rows, num_items] (grown when a call needs more rows)."""
        marks = getattr(self._per_thread, "marks", None)
        if marks is None or len(marks) < rows:
            marks = self._per_thread.marks = np.zeros((rows, self.num_items), dtype=bool)
        return marks

    def _search(self, queries: np.ndarray, k: int, nprobe: int):
        faiss = _faiss()
        return self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))

    def describe(self) -> str:
        if self.index is None:
            return f"two-stage over all {self.num_items:,} items"
        bias = ", + item bias" if self.bias else ""
        return (f"two-stage: {self.size} candidates from IVF{self.nlist},{self.settings.storage.upper()} "
                f"(nprobe {self.settings.nprobe}{bias}), re-ranked by the full model")
