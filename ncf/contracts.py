"""The platform's contracts in one place: the storage layout, schema versions, file names and metric names that
the steps, the registry, the gate and serving all rely on (docs/ARCHITECTURE.md describes them).

Storage layout under a storage root (local path or s3://):
  <root>/raw/dt=YYYY-MM-DD/          synthetic event logs (`ncfctl run` without --input)
  <root>/data/dt=YYYY-MM-DD/         partitions (spark/preprocess.py writes, ncf/data.py reads)
  <root>/models/<run>/               model packages (the train step writes, ncf/package.py reads)
  <root>/models/<run>.checkpoint/    the train step's per-epoch checkpoints
  <root>/reports/gate/<name>-v<n>/   gate reports (gate.json, gate.html)
  <root>/recommendations/dt=YYYY-MM-DD/            nightly top-K of every user (ncf/recommend.py)
  <root>/recommendations/_staging/dt=...-<fp>/     its resumable parts while it runs (removed when published)
Metric names: `hr@K`, `ndcg@K` (sampled protocol), `full_hr@K`, `full_ndcg@K` (full ranking), `val_` in front for
the validation split, `<full metric>_ci95` for the half-width of a full-ranking metric's 95% confidence interval,
`full_eval_users` for the number of test users the full ranking scored.
"""

from __future__ import annotations

import os
import re

from ncf import storage
from ncf.errors import UserError

# ---- partition (schema version 1) --------------------------------------------------------------------------

PARTITION_SCHEMA_VERSION = 1
PARTITION_TABLES = ("train", "test", "test_negatives", "user_map", "item_map")
PARTITION_STATS = "stats.json"

# ---- model package (schema versions 1 and 2) ---------------------------------------------------------------

# A package is written with the lowest version whose readers score it right (`ExportedModel.schema_version`), so
# an older predictor keeps serving what it can and refuses, naming the version, what it would score wrong:
#   1  every package before EASE's recency weights;
#   2  a tensor a version-1 reader would silently ignore: EASE's `history_weights` (a blend's member's too).
PACKAGE_SCHEMA_VERSIONS = (1, 2)  # what this code reads
PACKAGE_WEIGHTS = "weights.safetensors"
PACKAGE_CONFIG = "config.json"
PACKAGE_USER_IDS = "user_ids.json"
PACKAGE_ITEM_IDS = "item_ids.json"
PACKAGE_SEEN = "seen.npz"
PACKAGE_POPULARITY = "popularity.npy"
PACKAGE_METRICS = "metrics.json"
PACKAGE_FILES = (PACKAGE_WEIGHTS, PACKAGE_CONFIG, PACKAGE_USER_IDS, PACKAGE_ITEM_IDS, PACKAGE_SEEN,
                 PACKAGE_POPULARITY, PACKAGE_METRICS)
# Optional: the FAISS retrieval index over the item vectors (ncf/retrieval.py), written with the package when its
# retrieval settings (config.json "retrieval") choose two-stage serving for its catalogue; built at load if absent.
PACKAGE_ANN_INDEX = "retrieval.faiss"
# config.json names the model family that wrote the package; packages written before families existed have no
# `family` key and are NCF packages.
DEFAULT_FAMILY = "ncf"

# ---- gate report ---------------------------------------------------------------------------------------------

GATE_REPORT_JSON = "gate.json"
GATE_REPORT_HTML = "gate.html"

# ---- recommendations (schema version 1) ------------------------------------------------------------------------

RECOMMENDATIONS_SCHEMA_VERSION = 1
# Parquet parts, one per chunk of users: user_id string, rank int32 (1-based), item_id string, score float32.
RECOMMENDATIONS_COLUMNS = ("user_id", "rank", "item_id", "score")
# Starts with "_": Parquet readers (pyarrow, Spark) skip it when reading the directory as a dataset.
RECOMMENDATIONS_MANIFEST = "_manifest.json"

# ---- paths -----------------------------------------------------------------------------------------------------


def partition_uri(root: str | os.PathLike, run_date: str) -> str:
    """`<root>/data/dt=YYYY-MM-DD`: where the preprocess step writes a run date's partition."""
    return storage.join(root, "data", f"dt={run_date}")


def raw_uri(root: str | os.PathLike, run_date: str) -> str:
    """`<root>/raw/dt=YYYY-MM-DD`: a run date's synthetic event log."""
    return storage.join(root, "raw", f"dt={run_date}")


def model_uri(root: str | os.PathLike, run_name: str) -> str:
    """`<root>/models/<run>`: where the train step publishes a run's model package."""
    return storage.join(root, "models", run_name)


def checkpoint_uri(output_uri: str | os.PathLike) -> str:
    """`<package>.checkpoint`: the train step's checkpoints for the package it is writing."""
    return storage.join(output_uri).rstrip("/") + ".checkpoint"


def recommendations_uri(root: str | os.PathLike, run_date: str) -> str:
    """`<root>/recommendations/dt=YYYY-MM-DD`: a run date's top-K for every user (the recommend step)."""
    return storage.join(root, "recommendations", f"dt={run_date}")


def recommendations_staging_uri(output_uri: str | os.PathLike, fingerprint: str) -> str:
    """`<parent>/_staging/<name>-<fingerprint[:16]>`: where the recommend step keeps the parts of `output_uri`
    while it runs (stable across restarts of the same model and settings: the resume point)."""
    parent, _, name = storage.join(output_uri).rstrip("/").rpartition("/")
    return storage.join(parent or ".", "_staging", f"{name}-{fingerprint[:16]}")


def storage_root_of_model(package_uri: str | os.PathLike) -> str:
    """`<root>/models/<run>` -> `<root>`; UserError for a package outside that layout."""
    parts = storage.join(package_uri).rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and parts[1] == "models":
        return parts[0]
    raise UserError(f"{package_uri}: not under <storage root>/models/; pass --tracking-uri and --report-uri")


def gate_report_uri(root: str | os.PathLike, model_name: str, version: str) -> str:
    """`<root>/reports/gate/<model name>-v<version>`."""
    return storage.join(root, "reports", "gate", f"{model_name}-v{version}")


def complete_partitions(root: str | os.PathLike) -> list[str]:
    """Run dates under `<root>/data` whose partitions are complete, oldest first."""
    data = storage.join(root, "data")
    if not storage.exists(data):
        return []
    dates = [n[3:] for n in storage.list_dir(data) if n.startswith("dt=")]
    return [d for d in sorted(dates) if storage.is_complete(partition_uri(root, d))]


# ---- metric names ----------------------------------------------------------------------------------------------

_METRIC = re.compile(r"^(full_)?(hr|ndcg)@(\d+)$")
FULL_EVAL_USERS = "full_eval_users"


def metric_name(kind: str, top_k: int, *, full: bool = False, validation: bool = False) -> str:
    """`metric_name("ndcg", 10, full=True)` -> `full_ndcg@10`; `validation=True` -> `val_ndcg@10`."""
    return ("val_" if validation else "") + ("full_" if full else "") + f"{kind}@{top_k}"


def ci_name(metric: str) -> str:
    """The key of a metric's 95% confidence-interval half-width: `full_hr@10` -> `full_hr@10_ci95`."""
    return f"{metric}_ci95"


def parse_metric(name: str) -> tuple[bool, str, int]:
    """`full_ndcg@10` -> (full_ranking=True, "ndcg", 10)."""
    match = _METRIC.match(name)
    if not match:
        raise UserError(f"gate_metric: {name!r} is not one of hr@K, ndcg@K, full_hr@K, full_ndcg@K")
    return bool(match.group(1)), match.group(2), int(match.group(3))


def mlflow_metric_key(name: str) -> str:
    """MLflow keys cannot hold '@': `ndcg@10` -> `ndcg_at_10`."""
    return name.replace("@", "_at_")


def metric_line(hr: float, ndcg: float, loss: float | None = None) -> str:
    """The seed's line, scraped by `HR=(.*?);`, `NDCG=(.*?);`, `Loss=(.*?);` -- keep it byte-compatible.

    Families without a training loss print the line without its `Loss=` field.
    """
    line = f"HR={hr:.4f}; NDCG={ndcg:.4f};"
    return line if loss is None else f"{line} Loss={loss:.4f};"


# ---- evaluation defaults ------------------------------------------------------------------------------------

# Full ranking scores every item for each user; above this many test users it scores a fixed-seed sample of them
# (docs/training.md "Evaluation at scale" says how the number was chosen).
DEFAULT_FULL_EVAL_USERS = 1000
FULL_EVAL_SEED = 20260101
