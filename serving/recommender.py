"""Top-K recommendation over a model package: request validation, one batched forward, exclusion, fallback.

Shared by the KServe predictor (serving/predictor.py) and the MLflow pyfunc wrapper (ncf/registry.py), so a
registry-loaded model and the live endpoint answer the same query the same way.

Large catalogues are served two-stage (`ncf.retrieval`): FAISS retrieval of candidates over the scorer's
inner-product vectors, then exact re-ranking of those with `score_candidates`; small ones (and families without
vectors) score every item. The answer has the same shape either way.

Scores come from the package's scorer (`ncf.families`: NCF logits, EASE / iALS scores, ...; higher is better); for
unknown users the answer is the most popular items, `fallback=True`, scored by their training interaction counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ncf.retrieval import RetrievalSettings, Retriever, package_settings

DEFAULT_K = 10
MAX_K = 100
MAX_INSTANCES = 64
_INSTANCE_KEYS = ("user_id", "k", "exclude_seen", "candidates")


class RequestError(ValueError):
    """An invalid request; the message names the offending field (`instances[2].k: ...`)."""


@dataclasses.dataclass(frozen=True)
class Query:
    user_id: str
    user_idx: int | None  # None: unknown user -> popularity fallback
    k: int
    exclude_seen: bool = True
    candidates: np.ndarray | None = None  # item indices, or None for the whole catalogue


@dataclasses.dataclass(frozen=True)
class Recommendation:
    user_id: str
    item_ids: list[str]
    scores: list[float]
    fallback: bool

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies the lists, a measurable share of a request.
        return {"user_id": self.user_id, "item_ids": self.item_ids, "scores": self.scores, "fallback": self.fallback}


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


class Recommender:
    """Holds a loaded package and its family's scorer; answers batches of queries."""

    def __init__(self, package, *, max_k: int = MAX_K, max_instances: int = MAX_INSTANCES,
                 retrieval: RetrievalSettings | None = None, log=None):
        """`retrieval`: the settings to serve with (default: the package's config.json "retrieval", then the
        NCF_RETRIEVAL* environment variables on top)."""
        self.package = package
        self.scorer = package.scorer
        self.item_ids = np.asarray(package.item_ids, dtype=object)
        self.num_items = len(self.item_ids)
        self.user_index: dict[str, int] = package.user_index
        self.item_index: dict[str, int] = package.item_index
        self.seen_indptr = np.asarray(package.seen_indptr, dtype=np.int64)
        self.seen_indices = np.asarray(package.seen_indices, dtype=np.int64)
        self.popularity = np.asarray(package.popularity, dtype=np.float32)
        self.popular_order = np.argsort(-self.popularity, kind="stable")
        self.max_k = min(max_k, self.num_items)
        self.max_instances = max_instances
        self.retrieval = retrieval or package_settings(package.config).with_environment()
        kwargs = {} if log is None else {"log": log}
        self.retriever: Retriever | None = Retriever.for_package(package, self.retrieval, **kwargs)

    @property
    def scores_per_query(self) -> int:
        """Items one whole-catalogue query scores: the catalogue, or the two-stage path's candidates."""
        return self.num_items if self.retriever is None else self.retriever.size

    @property
    def path(self) -> str:
        """How whole-catalogue queries are ranked: "exact" or a description of the two-stage path."""
        return "exact" if self.retriever is None else self.retriever.describe()

    # ---- validation -------------------------------------------------------------------------------------
    def query(self, user_id: Any, k: Any = DEFAULT_K, exclude_seen: Any = True, candidates: Any = None,
              where: str = "instance") -> Query:
        """One validated query; raises RequestError naming `where` and the field."""
        if isinstance(user_id, bytes):
            user_id = user_id.decode("utf-8", "replace")
        if not isinstance(user_id, str) or not user_id:
            raise RequestError(f"{where}.user_id: expected a non-empty string, got {user_id!r}")
        if not _is_int(k):
            raise RequestError(f"{where}.k: expected an integer, got {k!r}")
        if not 1 <= k <= self.max_k:
            raise RequestError(f"{where}.k: must be between 1 and {self.max_k}, got {k}")
        if not isinstance(exclude_seen, bool | np.bool_):
            raise RequestError(f"{where}.exclude_seen: expected true or false, got {exclude_seen!r}")
        cand_idx = None
        if candidates is not None:
            cand_idx = self._candidate_indices(candidates, f"{where}.candidates")
        return Query(user_id, self.user_index.get(user_id), int(k), bool(exclude_seen), cand_idx)

    def _candidate_indices(self, candidates: Any, where: str) -> np.ndarray:
        if not isinstance(candidates, list | tuple) or not candidates:
            raise RequestError(f"{where}: expected a non-empty list of item ids")
        if len(candidates) > self.num_items:
            raise RequestError(f"{where}: {len(candidates)} ids, more than the {self.num_items} items in the catalogue")
        if not all(isinstance(c, str) for c in candidates):
            bad = next(c for c in candidates if not isinstance(c, str))
            raise RequestError(f"{where}: item ids must be strings, got {bad!r}")
        unknown = [c for c in candidates if c not in self.item_index]
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise RequestError(f"{where}: {len(unknown)} unknown item id(s): {shown}")
        return np.unique(np.fromiter((self.item_index[c] for c in candidates), dtype=np.int64))

    def parse_instances(self, instances: Any) -> list[Query]:
        """V1 `instances`: a list of {"user_id", "k"?, "exclude_seen"?, "candidates"?} objects."""
        if not isinstance(instances, list) or not instances:
            raise RequestError("instances: expected a non-empty list of objects")
        if len(instances) > self.max_instances:
            raise RequestError(f"instances: {len(instances)} given, at most {self.max_instances} per request")
        queries = []
        for i, inst in enumerate(instances):
            where = f"instances[{i}]"
            if not isinstance(inst, dict):
                raise RequestError(f"{where}: expected an object with user_id, got {type(inst).__name__}")
            unknown = sorted(set(inst) - set(_INSTANCE_KEYS))
            if unknown:
                raise RequestError(f"{where}: unknown field(s) {unknown}; allowed: {list(_INSTANCE_KEYS)}")
            if "user_id" not in inst:
                raise RequestError(f"{where}.user_id: required")
            queries.append(self.query(inst["user_id"], inst.get("k", DEFAULT_K), inst.get("exclude_seen", True),
                                      inst.get("candidates"), where))
        return queries

    # ---- scoring ----------------------------------------------------------------------------------------
    def seen(self, user_idx: int) -> np.ndarray:
        return self.seen_indices[self.seen_indptr[user_idx]:self.seen_indptr[user_idx + 1]]

    def recommend(self, queries: list[Query]) -> list[Recommendation]:
        """Known users share one batched forward over all items; unknown users get the popularity ranking."""
        if self.retriever is not None:
            return self._recommend_two_stage(queries)
        known = [q.user_idx for q in queries if q.user_idx is not None]
        scores = self.scorer.score_all(np.asarray(known, dtype=np.int64)).cpu().numpy() if known else None
        out, row = [], 0
        for q in queries:
            if q.user_idx is None:
                out.append(self._popular(q))
                continue
            user_scores = scores[row]
            row += 1
            if q.exclude_seen:
                user_scores[self.seen(q.user_idx)] = -np.inf
            items = q.candidates if q.candidates is not None else None
            values = user_scores if items is None else user_scores[items]
            out.append(self._top(q, values, items, fallback=False))
        return out

    def _recommend_two_stage(self, queries: list[Query]) -> list[Recommendation]:
        """Known users: retrieved candidates (seen items dropped before the cut when excluded) re-ranked by the
        full model, one batched `score_candidates`; a query with its own candidates scores exactly those."""
        out: list[Recommendation | None] = [None] * len(queries)
        whole = [i for i, q in enumerate(queries) if q.user_idx is not None and q.candidates is None]
        for i, q in enumerate(queries):
            if q.user_idx is None:
                out[i] = self._popular(q)
            elif q.candidates is not None:
                values = self.scorer.score_candidates(np.asarray([q.user_idx]), q.candidates).cpu().numpy()[0]
                if q.exclude_seen:
                    values[np.isin(q.candidates, self.seen(q.user_idx))] = -np.inf
                out[i] = self._top(q, values, q.candidates, fallback=False)
        if whole:
            users = np.asarray([queries[i].user_idx for i in whole], dtype=np.int64)
            seen = [self.seen(queries[i].user_idx) if queries[i].exclude_seen else None for i in whole]
            items, valid = self.retriever.candidates(users, seen)
            scores = self.scorer.score_candidates(users, items).cpu().numpy()
            scores[~valid] = -np.inf  # unfilled slots never come back
            for row, i in enumerate(whole):
                out[i] = self._top(queries[i], scores[row], items[row], fallback=False)
        return out

    def _popular(self, q: Query) -> Recommendation:
        if q.candidates is None:
            top = self.popular_order[:q.k]
            return Recommendation(q.user_id, self.item_ids[top].tolist(), self.popularity[top].tolist(), True)
        return self._top(q, self.popularity[q.candidates], q.candidates, fallback=True)

    def _top(self, q: Query, values: np.ndarray, items: np.ndarray | None, fallback: bool) -> Recommendation:
        k = min(q.k, len(values))
        top = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
        top = top[np.argsort(-values[top], kind="stable")]
        top = top[np.isfinite(values[top])]  # excluded (seen) items never come back
        ids = top if items is None else items[top]
        return Recommendation(q.user_id, self.item_ids[ids].tolist(), values[top].astype(float).tolist(), fallback)
