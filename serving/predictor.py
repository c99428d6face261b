"""The KServe custom predictor: real-time top-K from a model package.

Sources (`NCFModel(source=...)`): a local package directory (e.g. `/mnt/models`, where KServe's storage initializer
puts `storageUri`), an `s3://` package (read through ncf.storage, which honours AWS_ENDPOINT_URL), or a registry
URI `models:/ncf@champion` / `models:/ncf/3` (resolved again on every load, so a reload picks up a moved alias).

Protocols (KServe provides the endpoints; this class supplies predict + metadata):
- V1  POST /v1/models/ncf:predict  {"instances": [{"user_id": "196", "k": 10, "exclude_seen": true,
                                                   "candidates": ["242", "302"]}]}
      -> {"predictions": [{"user_id", "item_ids", "scores", "fallback"}], "model_version": ...}
- V2  POST /v2/models/ncf/infer (and gRPC ModelInfer): inputs `user_id` BYTES [B], optional `k` INT32/INT64
      [1 or B], optional `exclude_seen` BOOL [1 or B] -> outputs `item_ids` BYTES [B, K], `scores` FP32 [B, K],
      `fallback` BOOL [B]; the response id echoes the request id.
Invalid requests raise kserve's InvalidInput (HTTP 400, gRPC INVALID_ARGUMENT) with a message naming the field.
Ids longer than `max_id_length` are refused before any message echoes them (body size and Content-Type are
handled in front of KServe, serving/server.py).
Hot swap: `NCFRepository.load` (POST /v2/repository/models/ncf/load) builds and loads a new model off the event
loop, then swaps it in; requests in flight finish on the old one.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prometheus_client import Counter

from ncf.retrieval import package_settings
from serving.recommender import DEFAULT_K, MAX_INSTANCES, MAX_K, Recommender, RequestError

MODEL_NAME = "ncf"
DEFAULT_MODEL_DIR = "/mnt/models"
MAX_ID_LENGTH = 256
# A lone request scoring at most this many (user, item) pairs is scored on the event loop (ScoringQueue): a 1M-item
# two-stage query re-ranks 500 candidates (~2 ms); an exact query over 100,000 items (~90 ms for NeuMF x3) is not.
INLINE_SCORES = 20_000

RECOMMENDATIONS = Counter("ncf_recommendations", "Recommendation lists served, by kind (model or popularity fallback)",
                          ["model_name", "kind"])
INVALID_REQUESTS = Counter("ncf_invalid_requests", "Requests rejected with 400 (invalid input)", ["model_name"])
LOADS = Counter("ncf_model_loads", "Model (re)loads, by outcome", ["model_name", "outcome"])


class ScoringQueue:
    """Where requests are scored: on the event loop when a request is alone and small, else on one scoring thread
    where requests that arrive while it is busy are scored together in its next forward.

    - Alone and small (nothing else in flight, at most `INLINE_SCORES` (user, item) scores): scored at once on the
      event loop. Handing a request to a thread and back costs two wake-ups, ~0.5 ms of a 1M-item request's 4.3 ms
      (bench/serve.py, docs/serving.md), and a lone request gains nothing from another thread.
    - Otherwise the scoring thread: torch releases the GIL, so the event loop parses and answers other requests while
      a forward runs (HTTP work and scoring overlap when the pod has a second core), the queued requests share one
      batched forward (less per-call overhead), and a large request (an exact whole-catalogue ranking) never blocks
      the loop, its health probes included.
    A request yields to the loop once before choosing, so requests that arrived together see each other.
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncf-scoring")
        self._lock = threading.Lock()
        self._pending: list[tuple[Recommender, list, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._in_flight = 0  # requests inside recommend(), on either path (event-loop thread only)

    async def recommend(self, recommender: Recommender, queries: list) -> list:
        self._in_flight += 1
        try:
            if recommender.scores_per_query * len(queries) <= INLINE_SCORES:
                await asyncio.sleep(0)  # let requests that arrived with this one get here too
                if self._in_flight == 1:
                    return recommender.recommend(queries)
            return await self._on_thread(recommender, queries)
        finally:
            self._in_flight -= 1

    async def _on_thread(self, recommender: Recommender, queries: list) -> list:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._pending.append((recommender, queries, future, loop))
            idle = len(self._pending) == 1  # else a drain is already queued and will take this one too
        if idle:
            self._executor.submit(self._drain)
        return await future

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        # A hot swap can leave requests for two models in one batch: one forward per model.
        for recommender in dict.fromkeys(item[0] for item in batch):
            items = [item for item in batch if item[0] is recommender]
            try:
                recs = recommender.recommend([q for item in items for q in item[1]])
            except Exception as exc:  # hand the failure to every waiting request
                for _, _, future, loop in items:
                    loop.call_soon_threadsafe(_settle, future, None, exc)
                continue
            start = 0
            for _, queries, future, loop in items:
                loop.call_soon_threadsafe(_settle, future, recs[start:start + len(queries)], None)
                start += len(queries)


def _settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if not future.done():  # the client may have gone away
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


SCORING = ScoringQueue()


def _fetch_package(source: str, tracking_uri: str | None) -> tuple[Any, str | None]:
    """Load the package a source names; returns (ModelPackage, registry version or None)."""
    from ncf.package import load_package

    if not source.startswith("models:/"):
        return load_package(source), None
    from ncf import registry

    if not tracking_uri:
        from ncf.errors import UserError

        raise UserError(f"{source}: a registry source needs a tracking URI (--tracking-uri or MLFLOW_TRACKING_URI)")
    name, _, _ = registry.parse_model_uri(source)
    version = registry.resolve_version(tracking_uri, source)
    tmp = tempfile.mkdtemp(prefix="ncf-serve-")
    try:  # the loaded package maps its weights: the mapping outlives the deleted download
        return load_package(registry.download_package(tracking_uri, name, version, tmp)), version
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _column(request: InferRequest, name: str, size: int) -> list | None:
    """Input `name` as a list of `size` values ([1] broadcasts); None when absent."""
    inp = next((i for i in request.inputs if i.name == name), None)
    if inp is None:
        return None
    try:
        values = inp.as_numpy().reshape(-1).tolist()
    except Exception as exc:  # kserve raises several types for data that does not match shape / datatype
        raise RequestError(f"inputs.{name}: unreadable as {inp.datatype} {inp.shape} ({exc})") from exc
    if len(values) == 1 and size > 1:
        values = values * size
    if len(values) != size:
        raise RequestError(f"inputs.{name}: {len(values)} values for {size} user ids (give 1 or one per user)")
    return values


def _check_id(value: Any, where: str, max_length: int) -> None:
    if isinstance(value, str | bytes) and len(value) > max_length:
        raise RequestError(f"{where}: {len(value)} characters, at most {max_length}")


def _check_instance_ids(instances: Any, max_length: int) -> None:
    """Refuse over-long user / candidate ids before validation messages could echo them."""
    if not isinstance(instances, list):
        return
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            continue
        _check_id(inst.get("user_id"), f"instances[{i}].user_id", max_length)
        candidates = inst.get("candidates")
        if isinstance(candidates, list):
            for j, item in enumerate(candidates):
                _check_id(item, f"instances[{i}].candidates[{j}]", max_length)


class NCFModel(Model):
    def __init__(self, name: str = MODEL_NAME, source: str = DEFAULT_MODEL_DIR, *, tracking_uri: str | None = None,
                 max_k: int = MAX_K, max_instances: int = MAX_INSTANCES, max_id_length: int = MAX_ID_LENGTH,
                 retrieval: dict[str, Any] | None = None):
        """`retrieval`: overrides of the package's retrieval settings (`ncf.retrieval.RetrievalSettings` fields;
        None / "" / 0 keep the package's or the NCF_RETRIEVAL* environment's value)."""
        super().__init__(name)
        self.source = source
        self.tracking_uri = tracking_uri
        self.max_k = max_k
        self.max_instances = max_instances
        self.max_id_length = max_id_length
        self.retrieval_overrides = dict(retrieval or {})
        self.recommender: Recommender | None = None
        self.version: str | None = None
        # The counters' children, looked up once: `labels()` costs a lock and a dict lookup per call.
        self._served = {kind: RECOMMENDATIONS.labels(name, kind) for kind in ("model", "fallback")}
        self._invalid = INVALID_REQUESTS.labels(name)

    def load(self) -> bool:
        try:
            package, registry_version = _fetch_package(self.source, self.tracking_uri)
        except Exception:
            LOADS.labels(self.name, "failed").inc()
            raise
        settings = package_settings(package.config).with_environment().replace(**self.retrieval_overrides)
        self.recommender = Recommender(package, max_k=self.max_k, max_instances=self.max_instances,
                                       retrieval=settings)
        self.recommender.recommend([self.recommender.query(package.user_ids[0], 1)])  # warm-up: first forward
        self.version = registry_version or str(package.config.get("created_at", "local"))
        LOADS.labels(self.name, "ok").inc()
        self.ready = True
        return self.ready

    # ---- inference ---------------------------------------------------------------------------------------------
    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        try:
            if isinstance(payload, InferRequest):
                return await self._predict_v2(payload)
            if not isinstance(payload, dict) or "instances" not in payload:
                raise RequestError('request body: expected a JSON object {"instances": [...]}')
            _check_instance_ids(payload["instances"], self.max_id_length)
            recs = await self._recommend(self.recommender.parse_instances(payload["instances"]))
            return {"predictions": [r.to_dict() for r in recs], "model_version": self.version}
        except RequestError as exc:
            self._invalid.inc()
            raise InvalidInput(str(exc)) from exc

    async def _recommend(self, queries):
        recs = await SCORING.recommend(self.recommender, queries)
        fallbacks = sum(r.fallback for r in recs)
        if fallbacks:
            self._served["fallback"].inc(fallbacks)
        if len(recs) > fallbacks:
            self._served["model"].inc(len(recs) - fallbacks)
        return recs

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        names = [i.name for i in request.inputs]
        unknown = sorted(set(names) - {"user_id", "k", "exclude_seen"})
        if unknown:
            raise RequestError(f"inputs: unknown input(s) {unknown}; expected user_id, k, exclude_seen")
        if "user_id" not in names:
            raise RequestError("inputs.user_id: required (BYTES, one per user)")
        user_input = next(i for i in request.inputs if i.name == "user_id")
        if user_input.datatype != "BYTES":
            raise RequestError(f"inputs.user_id: datatype must be BYTES, got {user_input.datatype}")
        users = _column(request, "user_id", int(np.prod(user_input.shape)))
        if not users or len(users) > self.max_instances:
            raise RequestError(f"inputs.user_id: between 1 and {self.max_instances} user ids, got {len(users or [])}")
        for i, user in enumerate(users):
            _check_id(user, f"inputs.user_id[{i}]", self.max_id_length)
        ks = _column(request, "k", len(users)) or [DEFAULT_K] * len(users)
        excludes = _column(request, "exclude_seen", len(users)) or [True] * len(users)
        queries = [self.recommender.query(u, k, e, where=f"inputs[{i}]")
                   for i, (u, k, e) in enumerate(zip(users, ks, excludes, strict=True))]
        recs = await self._recommend(queries)
        width = max(len(r.item_ids) for r in recs)
        # Rows are padded to one width only when exclude_seen left a user fewer than k items ("" / NaN).
        ids = [r.item_ids + [""] * (width - len(r.item_ids)) for r in recs]
        scores = [r.scores + [float("nan")] * (width - len(r.scores)) for r in recs]
        outputs = [
            InferOutput("item_ids", [len(recs), width], "BYTES", [x for row in ids for x in row]),
            InferOutput("scores", [len(recs), width], "FP32", [x for row in scores for x in row]),
            InferOutput("fallback", [len(recs)], "BOOL", [r.fallback for r in recs]),
        ]
        return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=outputs, model_version=self.version)

    # ---- metadata (GET /v2/models/ncf) -------------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [
            {"name": "user_id", "datatype": "BYTES", "shape": [-1]},
            {"name": "k", "datatype": "INT32", "shape": [-1], "parameters": {"optional": True, "default": DEFAULT_K,
                                                                             "max": self.max_k}},
            {"name": "exclude_seen", "datatype": "BOOL", "shape": [-1], "parameters": {"optional": True,
                                                                                       "default": True}},
        ]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": "item_ids", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "fallback", "datatype": "BOOL", "shape": [-1]},
        ]


class NCFRepository(ModelRepository):
    """A model repository whose `load(name)` builds a fresh model (`factory(name)`), loads it off the event loop,
    then swaps it in: the old model keeps serving until the new one is ready, and a failed load changes nothing."""

    def __init__(self, factory: Callable[[str], NCFModel]):
        super().__init__()
        self.factory = factory
        self._swap_lock = asyncio.Lock()

    async def all_ready(self) -> bool:
        """Server readiness: at least one model registered and every registered model loaded."""
        models = self.get_models()
        return bool(models) and all([await model.healthy() for model in models.values()])

    def metadata_with_version(self, model_metadata):
        """KServe's `model_metadata` plus the V2 protocol's optional `versions`: the version being served (what
        `ncfctl status` reports), which KServe leaves out."""

        async def with_version(model_name: str) -> dict:
            metadata = await model_metadata(model_name)
            version = getattr(self.get_model(model_name), "version", None)
            return {**metadata, "versions": [version]} if version else metadata

        return with_version

    async def load(self, name: str) -> bool:
        async with self._swap_lock:  # one reload at a time
            model = self.factory(name)
            await asyncio.to_thread(model.load)
            self.update(model)
            return model.ready
