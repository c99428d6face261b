"""The MLflow model registry, in one place: log a model package as a version, aliases, lineage, loading back.

- A version is an `mlflow.pyfunc` model (`NCFPythonModel`) whose artifact `package` is the model package directory
  (docs/ARCHITECTURE.md); the project's `ncf` and `serving` code travel with it (`code_paths`), so
  `mlflow.pyfunc.load_model("models:/ncf@champion")` works anywhere the pinned requirements are installed.
- Aliases, not stages: `champion` is what serving uses, `challenger` the latest candidate.
- Stores: a sqlite file + a local artifact directory by default (`sqlite:///<root>/mlflow.db`, artifacts in
  `<root>/mlartifacts`); any tracking server URI (`http://...`, e.g. `mlflow server` on PostgreSQL + S3) works.
  A fresh sqlite store is created by one process at a time (a file lock next to the .db), as a copy of an empty
  migrated store kept per machine (`_store_template`), else by MLflow's migrations.
- `gate_lock`: the gate's read champion -> score -> move alias runs one at a time per model name, for any store,
  through MLflow's own API (docs/serving.md, "Concurrent gates").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from ncf import storage
from ncf.contracts import DEFAULT_FAMILY, PACKAGE_USER_IDS, mlflow_metric_key
from ncf.errors import UserError

DEFAULT_MODEL_NAME = "ncf"
DEFAULT_EXPERIMENT = "ncf-registry"
CHAMPION = "champion"
CHALLENGER = "challenger"
PACKAGE_ARTIFACT = "package"
_REPO_ROOT = Path(__file__).resolve().parents[1]
# What a fresh environment needs to load the pyfunc; versions pinned to the ones it was logged with.
_REQUIREMENTS = ("torch", "numpy", "pandas", "safetensors", "mlflow", "boto3")
# Per-process: sqlite stores whose tables this process has seen created (or created itself, under the file lock).
_READY_SQLITE: set[Path] = set()
_SQLITE_INIT_TIMEOUT_S = 300.0


def default_tracking_uri(storage_root: str | os.PathLike) -> str:
    """The embedded store under a local storage root: `sqlite:///<root>/mlflow.db`."""
    if storage.is_s3(storage_root):
        raise UserError(f"{storage_root}: an S3 storage root needs an explicit --tracking-uri (an MLflow server)")
    return f"sqlite:///{Path(storage_root).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str, storage_root: str | os.PathLike | None = None) -> str:
    """`tracking_uri` if given, else $MLFLOW_TRACKING_URI, else the embedded store under `storage_root`."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage_root is None:
        raise UserError("tracking_uri: not set (pass --tracking-uri or set MLFLOW_TRACKING_URI)")
    return default_tracking_uri(storage_root)


def _sqlite_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def _sqlite_store_is_current(db: Path) -> bool:
    """The store exists and MLflow's migrations have all run (its alembic revision is this MLflow's head)."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=20)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no such table yet, or being created
        return False
    return row is not None and row[0] == _get_latest_schema_revision()


def _store_template() -> Path | None:
    """An empty store with MLflow's migrations run, made once per machine and schema revision (under
    $XDG_CACHE_HOME, else ~/.cache): MLflow's ~50 alembic migrations take ~3 s for every fresh store, a copy takes
    milliseconds. None when it cannot be made (a read-only home, say): the caller then migrates as MLflow does."""
    import sqlite3

    from mlflow import MlflowClient
    from mlflow.store.db.utils import _get_latest_schema_revision

    cache = storage.user_cache_dir()
    template = cache / f"mlflow-store-{_get_latest_schema_revision()}.db"
    if _sqlite_store_is_current(template):
        return template
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
            fresh = MlflowClient(tracking_uri=uri, registry_uri=uri)
            fresh.search_experiments(max_results=1)
            fresh.search_registered_models(max_results=1)
            os.replace(Path(tmp) / "mlflow.db", template)  # whole or absent; concurrent makers write the same
    except (OSError, sqlite3.Error):
        return None
    return template if _sqlite_store_is_current(template) else None


def _store_from_template(db: Path) -> bool:
    """Create the store `db` as a copy of the template, its Default experiment's artifacts beside it (as
    `ensure_experiment` puts every other experiment's), published by one rename; False when there is no template."""
    import sqlite3

    template = _store_template()
    if template is None:
        return False
    partial = db.with_name(f"{db.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(template, partial)
        with contextlib.closing(sqlite3.connect(partial)) as conn:
            now_ms = int(time.time() * 1000)
            conn.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                         "WHERE experiment_id = 0", ((db.parent / "mlartifacts" / "0").as_uri(), now_ms, now_ms))
            conn.commit()
        os.replace(partial, db)
    except (OSError, sqlite3.Error):
        partial.unlink(missing_ok=True)
        return False
    return True


def _ensure_sqlite_store(tracking_uri: str, db: Path) -> None:
    """Create (or migrate) a sqlite store in one process only: MLflow runs its alembic migrations in every process
    that finds tables missing, and two at once crash one another. A file lock next to the .db serialises that;
    a current store is used without it."""
    from filelock import FileLock, Timeout
    from mlflow import MlflowClient

    db = db.resolve()
    if db in _READY_SQLITE:
        return
    if not _sqlite_store_is_current(db):
        db.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(f"{db}.init-lock", timeout=_SQLITE_INIT_TIMEOUT_S):
                if db.exists() or not _store_from_template(db):
                    # Each store (tracking, registry) creates its tables on first use: touch both under the lock.
                    fresh = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
                    fresh.search_experiments(max_results=1)
                    fresh.search_registered_models(max_results=1)
        except Timeout:
            raise UserError(f"{db}: another process has been creating this MLflow store for over "
                            f"{_SQLITE_INIT_TIMEOUT_S:.0f}s (lock {db}.init-lock); retry when it is done") from None
    _READY_SQLITE.add(db)


def client(tracking_uri: str):
    """An MlflowClient for `tracking_uri` (the tracking and registry store are the same)."""
    from mlflow import MlflowClient

    db = _sqlite_path(tracking_uri)
    if db is not None:
        _ensure_sqlite_store(tracking_uri, db)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextlib.contextmanager
def active_store(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (`mlflow.start_run`, `mlflow.pyfunc.load_model`, ...) at `tracking_uri` for a block.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI to the process environment; left there it would
    silently redirect every later default (`resolve_tracking_uri("")`) in a long-lived process. Restored on exit.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    db = _sqlite_path(tracking_uri)
    if db is not None:
        _ensure_sqlite_store(tracking_uri, db)
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", ""))


def ensure_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment's id, creating it; embedded stores keep artifacts next to the database, not in ./mlruns."""
    import mlflow

    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    db = _sqlite_path(tracking_uri)
    location = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException as exc:  # another process created it in between
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow_client.get_experiment_by_name(name).experiment_id


def _ensure_registered_model(mlflow_client, name: str, description: str) -> None:
    """Create the registered model unless it exists; a concurrent creator winning the race is fine."""
    import mlflow

    try:
        mlflow_client.get_registered_model(name)
        return
    except mlflow.exceptions.MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        mlflow_client.create_registered_model(name, description=description)
    except mlflow.exceptions.MlflowException as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise


class NCFPythonModel(mlflow.pyfunc.PythonModel):
    """pyfunc over the package artifact: DataFrame[user_id, k?] -> DataFrame[user_id, item_ids, scores, fallback].

    Param `exclude_seen` (default true) drops each user's training items; unknown users get the popularity ranking.
    """

    def load_context(self, context) -> None:
        from ncf.package import load_package
        from serving.recommender import Recommender

        self.recommender = Recommender(load_package(context.artifacts[PACKAGE_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from serving.recommender import DEFAULT_K, RequestError

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "user_id" not in frame:
            raise RequestError("model input: needs a 'user_id' column")
        ks = frame["k"].tolist() if "k" in frame else [DEFAULT_K] * len(frame)
        exclude_seen = bool((params or {}).get("exclude_seen", True))
        queries = [
            self.recommender.query(str(user), DEFAULT_K if k is None or k != k else int(k), exclude_seen,
                                   where=f"row {i}")
            for i, (user, k) in enumerate(zip(frame["user_id"].tolist(), ks, strict=True))
        ]
        records = [r.to_dict() for r in self.recommender.recommend(queries)]
        return pd.DataFrame(records, columns=["user_id", "item_ids", "scores", "fallback"])


def signature():
    """Input: user ids (+ optional k); output: ranked item ids and scores per user; param exclude_seen."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "user_id"), ColSpec(DataType.long, "k", required=False)]),
        outputs=Schema([ColSpec(DataType.string, "user_id"), ColSpec(Array(DataType.string), "item_ids"),
                        ColSpec(Array(DataType.double), "scores"), ColSpec(DataType.boolean, "fallback")]),
        params=ParamSchema([ParamSpec("exclude_seen", DataType.boolean, True)]),
    )


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in _REQUIREMENTS]


def lineage_tags(package_uri: str, config: dict[str, Any], metrics: dict[str, float], *, partition_uri: str,
                 run_date: str, git_commit: str, pipeline_run_id: str) -> dict[str, str]:
    """Version tags: data partition + run date, code commit, pipeline run, hyperparameters, metrics."""
    tags = {
        "package_uri": str(package_uri),
        "partition_uri": partition_uri,
        "run_date": run_date,
        "git_commit": git_commit,
        "pipeline_run_id": pipeline_run_id,
        "family": str(config.get("family", DEFAULT_FAMILY)),
        # A blend's members ("GMF+ease"): what `ncfctl status` shows beside the family.
        "model_type": str(config.get("model_type") or "+".join(m.get("name", "") for m in config.get("members", []))),
        "trained_on_partition": str(config.get("partition_uri", "")),
        "train_run_id": str(config.get("mlflow_run_id", "")),
    }
    tags.update({f"hp.{k}": json.dumps(v) if not isinstance(v, str) else v
                 for k, v in sorted(config.get("hyperparameters", {}).items())})
    tags.update({f"metric.{mlflow_metric_key(k)}": f"{v:.6f}" for k, v in sorted(metrics.items())
                 if isinstance(v, int | float)})
    return {k: v for k, v in tags.items() if v != ""}


@dataclasses.dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str  # models:/<name>/<version>


def _existing_run(mlflow_client, run_id: str) -> str | None:
    """`run_id` when that run exists in this store (the training run, when train logged to the same store)."""
    import mlflow

    if not run_id:
        return None
    try:
        return mlflow_client.get_run(run_id).info.run_id
    except mlflow.exceptions.MlflowException:
        return None


def register_package(package_uri: str, *, tracking_uri: str, model_name: str = DEFAULT_MODEL_NAME,
                     experiment: str = DEFAULT_EXPERIMENT, tags: dict[str, str] | None = None,
                     metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
                     train_run_id: str = "") -> RegisteredVersion:
    """Log the package as a pyfunc and register it as a new version of `model_name`, tagged.

    The model is logged into the training run when that run is in this store (the version then links to its
    per-epoch curves; `metrics` are added as `gate.<metric>`), else into a new run of `experiment`.
    """
    import mlflow

    mlflow_client = client(tracking_uri)
    run_id = _existing_run(mlflow_client, train_run_id)
    run_args = {"run_id": run_id} if run_id else {
        "experiment_id": ensure_experiment(tracking_uri, experiment), "run_name": f"register-{model_name}"}
    with storage.local_copy(package_uri) as source, tempfile.TemporaryDirectory(prefix="ncf-register-") as tmp:
        if not (source / storage.SUCCESS).exists():
            raise UserError(f"{package_uri}: model package is incomplete (no _SUCCESS marker)")
        # MLflow names an artifact directory after its basename: stage it as `package/`.
        local_package = Path(shutil.copytree(source, Path(tmp) / PACKAGE_ARTIFACT))
        first_user = json.loads((local_package / PACKAGE_USER_IDS).read_text())[0]
        with active_store(tracking_uri), mlflow.start_run(**run_args) as run:
            if params and not run_id:  # the training run has its parameters already
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            if metrics:
                prefix = "gate." if run_id else ""
                mlflow.log_metrics({prefix + mlflow_metric_key(k): float(v) for k, v in metrics.items()})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=NCFPythonModel(),
                artifacts={PACKAGE_ARTIFACT: str(local_package)},
                code_paths=[str(_REPO_ROOT / "ncf"), str(_REPO_ROOT / "serving")],
                signature=signature(),
                input_example=(pd.DataFrame({"user_id": [str(first_user)], "k": [10]}), {"exclude_seen": True}),
                pip_requirements=pip_requirements(),
            )
    _ensure_registered_model(mlflow_client, model_name, "NCF top-K recommender (model packages)")
    with active_store(tracking_uri):  # the embedded store resolves the `models:/m-...` source through the globals
        version = mlflow_client.create_model_version(model_name, source=info.model_uri, run_id=run.info.run_id,
                                                     tags=tags or {}, model_id=info.model_id)
    return RegisteredVersion(model_name, str(version.version), run.info.run_id,
                             f"models:/{model_name}/{version.version}")


def alias_version(tracking_uri: str, model_name: str, alias: str):
    """The ModelVersion an alias points at, or None (no registered model or no such alias)."""
    import mlflow

    try:
        return client(tracking_uri).get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(tracking_uri: str, model_name: str, alias: str, version: str) -> None:
    client(tracking_uri).set_registered_model_alias(model_name, alias, str(version))


def package_artifact_uri(tracking_uri: str, model_name: str, version: str) -> str:
    """Where the version's package directory lives in the artifact store (s3://... on a server with S3)."""
    base = client(tracking_uri).get_model_version_download_uri(model_name, str(version))
    return f"{base.rstrip('/')}/artifacts/{PACKAGE_ARTIFACT}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` -> (name, None, alias); `models:/name/3` -> (name, "3", None)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, None, alias
    name, _, version = rest.partition("/")
    if not name or not version:
        raise UserError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return name, version, None


def resolve_version(tracking_uri: str, uri: str) -> str:
    """The version number a `models:/` URI names right now."""
    name, version, alias = parse_model_uri(uri)
    if version is not None:
        return version
    found = alias_version(tracking_uri, name, alias)
    if found is None:
        raise UserError(f"{uri}: no version of registered model {name!r} has alias {alias!r} ({tracking_uri})")
    return str(found.version)


def download_package(tracking_uri: str, model_name: str, version: str, dest: str | os.PathLike | None = None) -> Path:
    """Download a version's package directory to a local folder (a new temp folder by default)."""
    import mlflow

    dest = Path(dest or tempfile.mkdtemp(prefix=f"ncf-{model_name}-v{version}-"))
    uri = package_artifact_uri(tracking_uri, model_name, version)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking_uri)
    except Exception as exc:  # MLflow raises store-specific errors (file, S3, HTTP)
        raise UserError(f"{model_name} v{version}: cannot download its package from {uri} ({exc})") from exc
    return Path(local)


# ---- the gate lock: one gate at a time per model name, on any MLflow store ----------------------------------

GATE_LOCK_SUFFIX = ".gate-lock"
GATE_LOCK_LEASE_S = 60.0  # a ticket whose holder has not heartbeaten for this long is broken by the next gate
_LOCK_SOURCE = "ncf-gate-lock:/ticket"  # a model version source is required; tickets hold no model


def gate_lock_name(model_name: str) -> str:
    return model_name + GATE_LOCK_SUFFIX


def _transient(call, *, attempts: int = 8):
    """`call()`, retried while the store reports a transient failure: sqlite "database is locked" after its 20 s
    busy timeout (TEMPORARILY_UNAVAILABLE), or a lost version-number race ("Giving up after 3 attempts")."""
    import mlflow

    for attempt in range(attempts):
        try:
            return call()
        except mlflow.exceptions.MlflowException as exc:
            if _error_code(exc) not in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR") or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2 ** attempt * random.uniform(0.5, 1.5))


def _lease_ms(ticket) -> float:
    """The lease its holder declared (tag `lease_s`); the default for tickets without one."""
    try:
        return float(ticket.tags.get("lease_s", GATE_LOCK_LEASE_S)) * 1000
    except ValueError:
        return GATE_LOCK_LEASE_S * 1000


class GateLock:
    """A ticket in the queue of `<model>.gate-lock`, kept alive by a heartbeat thread (see `gate_lock`)."""

    def __init__(self, mlflow_client, model_name: str, ticket, lease_s: float):
        self.client, self.model_name, self.lease_s = mlflow_client, model_name, lease_s
        self.lock_name = gate_lock_name(model_name)
        self.version = int(ticket.version)
        self.holder = ticket.tags.get("holder", "")
        # Lease ages are measured on the store's clock (it stamps last_updated_timestamp), never on ours.
        self._store_ms, self._beat_at = ticket.last_updated_timestamp, time.monotonic()
        self.lost = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeats, name=f"{self.lock_name}-heartbeat", daemon=True)
        self._thread.start()

    def store_now_ms(self) -> float:
        return self._store_ms + (time.monotonic() - self._beat_at) * 1000

    def _heartbeats(self) -> None:
        import mlflow

        beats = 0
        while not self._stop.wait(self.lease_s / 6):
            beats += 1
            try:
                ticket = self.client.update_model_version(self.lock_name, str(self.version),
                                                          description=f"{self.holder}: heartbeat {beats}")
            except mlflow.exceptions.MlflowException as exc:
                if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
                    self.lost = "its ticket was deleted by another gate that found its lease expired"
                    return
                continue  # transient: the next beat retries; check() refuses once the lease has run out
            self._store_ms, self._beat_at = ticket.last_updated_timestamp, time.monotonic()

    def check(self) -> None:
        """Raise unless this process still holds the lock: call it right before acting on what was read under it."""
        import mlflow

        stale_s = time.monotonic() - self._beat_at
        if not self.lost and stale_s > self.lease_s:
            self.lost = f"no heartbeat reached the store for {stale_s:.0f}s (lease {self.lease_s:g}s)"
        if not self.lost:
            try:
                self.client.get_model_version(self.lock_name, str(self.version))
            except mlflow.exceptions.MlflowException as exc:
                if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self.lost = "its ticket was deleted by another gate that found its lease expired"
        if self.lost:
            raise UserError(f"{self.lock_name}: this gate ({self.holder}, ticket {self.version}) lost the lock: "
                            f"{self.lost}; nothing was moved, re-run the gate")

    def _live_tickets(self) -> list:
        found = _transient(lambda: self.client.search_model_versions(f"name='{self.lock_name}'"))
        return sorted(found, key=lambda t: int(t.version))

    def wait_turn(self, timeout_s: float, poll_s: float) -> None:
        """Block until every ticket ahead of ours is gone or expired (expired ones are deleted: broken)."""
        import mlflow

        deadline, announced = time.monotonic() + timeout_s, False
        while True:
            tickets = self._live_tickets()
            if self.version not in {int(t.version) for t in tickets}:
                self.lost = "its ticket was deleted by another gate while it waited"
                self.check()
            ahead = [t for t in tickets if int(t.version) < self.version]
            now = self.store_now_ms()
            for stale in [t for t in ahead if now - t.last_updated_timestamp > _lease_ms(t)]:
                print(f"{self.lock_name}: breaking the lock of {stale.tags.get('holder', '?')} (ticket "
                      f"{stale.version}): no heartbeat for {(now - stale.last_updated_timestamp) / 1000:.0f}s",
                      file=sys.stderr, flush=True)
                with contextlib.suppress(mlflow.exceptions.MlflowException):  # another waiter broke it first
                    _transient(lambda v=stale.version: self.client.delete_model_version(self.lock_name, v))
                ahead.remove(stale)
            if not ahead:
                return
            holder = ahead[0]
            if time.monotonic() > deadline:
                raise UserError(
                    f"{self.lock_name}: another gate ({holder.tags.get('holder', '?')}, ticket {holder.version}, "
                    f"last heartbeat {(now - holder.last_updated_timestamp) / 1000:.0f}s ago) still holds the gate "
                    f"of {self.model_name!r} after {timeout_s:.0f}s; gates of one model run one at a time. Retry "
                    f"when it is done, or wait longer with --lock-timeout-s")
            if not announced:
                print(f"{self.lock_name}: waiting for the gate of {holder.tags.get('holder', '?')} (ticket "
                      f"{holder.version}, {len(ahead)} ahead) to finish", file=sys.stderr, flush=True)
                announced = True
            time.sleep(poll_s * random.uniform(0.5, 1.5))

    def release(self) -> None:
        import mlflow

        self._stop.set()
        self._thread.join()
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # already broken: nothing to release
            _transient(lambda: self.client.delete_model_version(self.lock_name, str(self.version)))


@contextlib.contextmanager
def gate_lock(tracking_uri: str, model_name: str, *, timeout_s: float = 900.0,
              lease_s: float = GATE_LOCK_LEASE_S, poll_s: float = 1.0) -> Iterator[GateLock]:
    """Hold the gate of `model_name` for a block: gates of one model run one at a time, across processes and hosts.

    A mutex from MLflow's own API, so it works on every store (sqlite, `mlflow server` over HTTP, ...): each gate
    takes a ticket, a new version of the registered model `<model>.gate-lock`. The store numbers versions
    uniquely and in order, so the oldest live ticket holds the lock and the others queue behind it (first come,
    first served). A heartbeat thread refreshes the ticket every lease/6; a ticket not refreshed for `lease_s`
    (its holder crashed or hung) is deleted by the next waiter, which `GateLock.check()` then reports to its
    holder. Waiting past `timeout_s` raises a UserError naming the holder. Released (ticket deleted) on exit.
    """
    import mlflow

    if timeout_s < 0 or lease_s <= 0:
        raise UserError(f"gate lock: timeout must be >= 0 and lease > 0 (got {timeout_s}, {lease_s})")
    mlflow_client = client(tracking_uri)
    lock_name = gate_lock_name(model_name)
    _transient(lambda: _ensure_registered_model(
        mlflow_client, lock_name, f"Gate lock of {model_name!r}: each version is a gate's ticket (ncf.registry)"))
    holder = f"{socket.gethostname()}:{os.getpid()}"
    try:
        ticket = _transient(lambda: mlflow_client.create_model_version(
            lock_name, _LOCK_SOURCE, tags={"holder": holder, "model": model_name, "lease_s": f"{lease_s:g}"}, description=f"{holder}: taken"))
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"{lock_name}: cannot take a gate ticket in {tracking_uri} ({exc.message})") from exc
    lock = GateLock(mlflow_client, model_name, ticket, lease_s)
    try:
        lock.wait_turn(timeout_s, poll_s)
        yield lock
    finally:
        lock.release()
