"""The MLflow model registry, in one place: log a model package as a version, aliases, lineage, loading back.

- A version is an `mlflow.pyfunc` model (`NCFPythonModel`) whose artifact `package` is the model package directory
  (docs/ARCHITECTURE.md); the project's `ncf` and `serving` code travel with it (`code_paths`), so
  `mlflow.pyfunc.load_model("models:/ncf@champion")` works anywhere the pinned requirements are installed.
- Aliases, not stages: `champion` is what serving uses, `challenger` the latest candidate.
- Stores: a sqlite file + a local artifact directory by default (`sqlite:///<root>/mlflow.db`, artifacts in
  `<root>/mlartifacts`); any tracking server URI (`http://...`, e.g. `mlflow server` on PostgreSQL + S3) works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from ncf import storage
from ncf.errors import UserError

DEFAULT_MODEL_NAME = "ncf"
DEFAULT_EXPERIMENT = "ncf-registry"
CHAMPION = "champion"
CHALLENGER = "challenger"
PACKAGE_ARTIFACT = "package"
_REPO_ROOT = Path(__file__).resolve().parents[1]
# What a fresh environment needs to load the pyfunc; versions pinned to the ones it was logged with.
_REQUIREMENTS = ("torch", "numpy", "pandas", "safetensors", "mlflow", "boto3")


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


def client(tracking_uri: str):
    """An MlflowClient for `tracking_uri` (the tracking and registry store are the same)."""
    from mlflow import MlflowClient

    db = _sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
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


def ensure_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment's id, creating it; embedded stores keep artifacts next to the database, not in ./mlruns."""
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    db = _sqlite_path(tracking_uri)
    location = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
    return mlflow_client.create_experiment(name, artifact_location=location)


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


def metric_key(name: str) -> str:
    """MLflow keys cannot hold '@': `ndcg@10` -> `ndcg_at_10`."""
    return name.replace("@", "_at_")


def lineage_tags(package_uri: str, config: dict[str, Any], metrics: dict[str, float], *, partition_uri: str,
                 run_date: str, git_commit: str, pipeline_run_id: str) -> dict[str, str]:
    """Version tags: data partition + run date, code commit, pipeline run, hyperparameters, metrics."""
    tags = {
        "package_uri": str(package_uri),
        "partition_uri": partition_uri,
        "run_date": run_date,
        "git_commit": git_commit,
        "pipeline_run_id": pipeline_run_id,
        "model_type": str(config.get("model_type", "")),
        "trained_on_partition": str(config.get("partition_uri", "")),
        "train_run_id": str(config.get("mlflow_run_id", "")),
    }
    tags.update({f"hp.{k}": json.dumps(v) if not isinstance(v, str) else v
                 for k, v in sorted(config.get("hyperparameters", {}).items())})
    tags.update({f"metric.{metric_key(k)}": f"{v:.6f}" for k, v in sorted(metrics.items())
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
        first_user = json.loads((local_package / "user_ids.json").read_text())[0]
        with active_store(tracking_uri), mlflow.start_run(**run_args) as run:
            if params and not run_id:  # the training run has its parameters already
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            if metrics:
                prefix = "gate." if run_id else ""
                mlflow.log_metrics({prefix + metric_key(k): float(v) for k, v in metrics.items()})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=NCFPythonModel(),
                artifacts={PACKAGE_ARTIFACT: str(local_package)},
                code_paths=[str(_REPO_ROOT / "ncf"), str(_REPO_ROOT / "serving")],
                signature=signature(),
                input_example=(pd.DataFrame({"user_id": [str(first_user)], "k": [10]}), {"exclude_seen": True}),
                pip_requirements=pip_requirements(),
            )
    try:
        mlflow_client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException:
        mlflow_client.create_registered_model(model_name, description="NCF top-K recommender (model packages)")
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
