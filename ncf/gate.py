"""The champion/challenger gate: adopt only retrains that are better on the same, newest data.

1. Register the challenger (a model package) as a new version of the registered model; alias `challenger`.
2. Score the challenger AND the current `champion` on the same test users of the newest partition (a champion's
   old metric on old data is not comparable). Models trained on other partitions know other users / items: each
   model is scored in its own id space, on the test rows every model can rank (the report says how many).
3. Promote (move `champion`) only if the challenger beats the champion by at least `min_delta` (and strictly)
   on `gate_metric` and clears the absolute `floor`; the first model needs only the floor. Optionally the gain
   must be significant under a paired bootstrap over users.
4. Tag the version with the decision and both scores; write gate.json + gate.html under `report_uri`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ncf import registry, storage
from ncf.config import add_arguments, from_namespace, param
from ncf.errors import UserError, exit_on_user_error

_METRIC = re.compile(r"^(full_)?(hr|ndcg)@(\d+)$")


@dataclasses.dataclass
class GateConfig:
    model_uri: str = param(help="the challenger's model package (local path or s3://)")
    partition_uri: str = param("", "newest data partition to score on (default: the package's training partition)")
    tracking_uri: str = param("", "MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                                  "sqlite:///<storage root>/mlflow.db with the root taken from model_uri)",
                              pipeline=True)
    model_name: str = param(registry.DEFAULT_MODEL_NAME, "registered model name", pipeline=True)
    gate_metric: str = param("ndcg@10", "metric the gate compares: hr@K, ndcg@K, full_hr@K, full_ndcg@K",
                             pipeline=True)
    min_delta: float = param(0.0, "the challenger must beat the champion by at least this much (>= 0)",
                             pipeline=True)
    floor: float = param(0.0, "absolute minimum of gate_metric for any model to be promoted", pipeline=True)
    bootstrap_samples: int = param(0, "paired bootstrap resamples over users (0: no significance test)")
    significance: float = param(0.05, "max one-sided p-value of the bootstrap for the gain to count")
    seed: int = param(0, "bootstrap random seed")
    report_uri: str = param("", "where gate.json / gate.html go (default: <storage root>/reports/gate/<version>)")
    experiment: str = param(registry.DEFAULT_EXPERIMENT, "MLflow experiment of the registration runs")
    run_date: str = param("", "lineage: the data's run date (default: from the partition's stats.json)")
    pipeline_run_id: str = param("", "lineage: the pipeline run that produced the model")
    git_commit: str = param("", "lineage: the code commit (default: `git rev-parse HEAD` when available)")


@dataclasses.dataclass
class Decision:
    promoted: bool
    reason: str
    delta: float | None = None
    p_value: float | None = None


@dataclasses.dataclass
class GateResult:
    promoted: bool
    model_name: str
    version: str
    gate_metric: str
    challenger_score: float
    champion_score: float | None
    champion_version: str | None
    reason: str
    p_value: float | None
    num_users: int
    report_uri: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None


def parse_metric(name: str) -> tuple[bool, str, int]:
    """`full_ndcg@10` -> (full_ranking=True, "ndcg", 10)."""
    match = _METRIC.match(name)
    if not match:
        raise UserError(f"gate_metric: {name!r} is not one of hr@K, ndcg@K, full_hr@K, full_ndcg@K")
    return bool(match.group(1)), match.group(2), int(match.group(3))


def paired_bootstrap_p(challenger: np.ndarray, champion: np.ndarray, samples: int, seed: int = 0) -> float:
    """One-sided p-value that the challenger's mean is NOT above the champion's (resampling users, paired)."""
    diff = np.asarray(challenger, dtype=np.float64) - np.asarray(champion, dtype=np.float64)
    if diff.size == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 256):  # bounded memory: 256 resamples at a time
        n = min(256, samples - start)
        means[start:start + n] = diff[rng.integers(0, diff.size, (n, diff.size))].mean(axis=1)
    return float((np.count_nonzero(means <= 0.0) + 1) / (samples + 1))


def decide(challenger: float, champion: float | None, *, min_delta: float, floor: float,
           challenger_per_user: np.ndarray | None = None, champion_per_user: np.ndarray | None = None,
           bootstrap_samples: int = 0, significance: float = 0.05, seed: int = 0) -> Decision:
    """The gate rule (pure). Never promotes a challenger that does not score strictly above the champion."""
    if min_delta < 0:
        raise UserError(f"min_delta: must be >= 0 (a negative margin could promote a worse model), got {min_delta}")
    if not math.isfinite(challenger):
        return Decision(False, f"challenger score is {challenger}")
    if challenger < floor:
        return Decision(False, f"challenger {challenger:.4f} is below the floor {floor:.4f}")
    if champion is None:
        return Decision(True, f"first model: {challenger:.4f} clears the floor {floor:.4f}")
    delta = challenger - champion
    if not delta > 0:
        return Decision(False, f"challenger {challenger:.4f} is not better than champion {champion:.4f}", delta)
    if delta < min_delta:
        return Decision(False, f"gain {delta:.4f} is below min_delta {min_delta:.4f}", delta)
    if bootstrap_samples > 0:
        if challenger_per_user is None or champion_per_user is None:
            raise ValueError("a bootstrap needs both models' per-user scores")
        p = paired_bootstrap_p(challenger_per_user, champion_per_user, bootstrap_samples, seed)
        if p > significance:
            return Decision(False, f"gain {delta:.4f} is not significant (paired bootstrap p={p:.4f} > "
                                   f"{significance})", delta, p)
        return Decision(True, f"gain {delta:.4f} >= {min_delta:.4f}, significant (p={p:.4f})", delta, p)
    return Decision(True, f"gain {delta:.4f} >= min_delta {min_delta:.4f}", delta)


# ---- scoring both models on the same rows --------------------------------------------------------------------

def _map_ids(ids: np.ndarray, index: dict[str, int]) -> np.ndarray:
    """Raw ids -> the model's indices; -1 where the model does not know the id."""
    return np.fromiter((index.get(str(x), -1) for x in ids), dtype=np.int64, count=len(ids))


def model_view(partition, package):
    """The partition in the package's id space, and which test rows the model can rank (user, item, negatives)."""
    users = _map_ids(partition.user_ids, package.user_index)
    items = _map_ids(partition.item_ids, package.item_index)
    test_users, test_items = users[partition.test_users], items[partition.test_items]
    negatives = items[partition.test_negatives]
    rankable = (test_users >= 0) & (test_items >= 0) & (negatives >= 0).all(axis=1)
    train_users, train_items = users[partition.train_users], items[partition.train_items]
    known_pair = (train_users >= 0) & (train_items >= 0)
    view = dataclasses.replace(
        partition,
        train_users=train_users[known_pair].astype(np.int32), train_items=train_items[known_pair].astype(np.int32),
        train_ts=partition.train_ts[known_pair], test_users=test_users.astype(np.int32),
        test_items=test_items.astype(np.int32), test_negatives=negatives.astype(np.int32),
        user_ids=np.asarray(package.user_ids, dtype=object), item_ids=np.asarray(package.item_ids, dtype=object),
    )
    return view, rankable


def _rows(view, keep: np.ndarray):
    return dataclasses.replace(view, test_users=view.test_users[keep], test_items=view.test_items[keep],
                               test_negatives=view.test_negatives[keep])


@dataclasses.dataclass
class Scores:
    metrics: dict[str, float]
    per_user: np.ndarray  # the gate metric, per test row


def score_packages(packages: list, partition, gate_metric: str) -> tuple[list[Scores], int]:
    """Evaluate each package on the test rows that every package can rank; returns scores and the row count."""
    from ncf.evaluate import evaluate

    full, kind, top_k = parse_metric(gate_metric)
    views = [model_view(partition, p) for p in packages]
    keep = np.logical_and.reduce([rankable for _, rankable in views])
    if not keep.any():
        raise UserError(f"{partition.uri}: no test user can be ranked by every model (disjoint id maps)")
    out = []
    for package, (view, _) in zip(packages, views, strict=True):
        result = evaluate(package.model, _rows(view, keep), top_k, full_ranking=True)
        per_user = getattr(result, f"{'full_' if full else ''}{kind}_per_user")
        out.append(Scores(result.metrics(), per_user))
    return out, int(keep.sum())


# ---- the step ---------------------------------------------------------------------------------------------

def _storage_root(model_uri: str) -> str:
    """`<root>/models/<run-id>` -> `<root>` (the package layout of the train step)."""
    parts = storage.join(model_uri).rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and parts[1] == "models":
        return parts[0]
    raise UserError(f"{model_uri}: not under <storage root>/models/; pass --tracking-uri and --report-uri")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _render_html(report: dict[str, Any]) -> str:
    verdict = "PROMOTED" if report["promoted"] else "REJECTED"
    color = "#1a7f37" if report["promoted"] else "#cf222e"
    metrics = sorted(set(report["challenger_metrics"]) | set(report.get("champion_metrics") or {}))

    def cell(values, key):
        return f"{values[key]:.4f}" if values and key in values else "&ndash;"

    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{cell(report['challenger_metrics'], m)}</td>"
        f"<td>{cell(report.get('champion_metrics'), m)}</td></tr>" for m in metrics)
    champion = f"v{report['champion_version']}" if report["champion_version"] else "none"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Gate: {html.escape(report['model_name'])}
v{report['version']}</title><style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 12px;
border-bottom:1px solid #ddd;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1 style="color:{color}">{verdict}: {html.escape(report['model_name'])} v{report['version']}</h1>
<p>{html.escape(report['reason'])}</p>
<p>Gate metric <b>{html.escape(report['gate_metric'])}</b>, min_delta {report['min_delta']}, floor {report['floor']};
scored on {report['num_users']} test users of <code>{html.escape(report['partition_uri'])}</code>.
Champion before the gate: {champion}.</p>
<table><tr><th>metric</th><th>challenger v{report['version']}</th><th>champion {champion}</th></tr>{rows}</table>
<p><small>{html.escape(report['decided_at'])}</small></p></body></html>
"""


def run(config: GateConfig) -> GateResult:
    from ncf.data import load_partition
    from ncf.package import load_package

    parse_metric(config.gate_metric)
    if config.min_delta < 0:
        raise UserError(f"min_delta: must be >= 0, got {config.min_delta}")
    if config.bootstrap_samples < 0 or not 0 < config.significance < 1:
        raise UserError("bootstrap_samples must be >= 0 and significance in (0, 1)")
    root = None if config.tracking_uri and config.report_uri else _storage_root(config.model_uri)
    tracking_uri = registry.resolve_tracking_uri(config.tracking_uri, root)

    challenger = load_package(config.model_uri)
    partition_uri = config.partition_uri or challenger.config.get("partition_uri") or ""
    if not partition_uri:
        raise UserError(f"{config.model_uri}: no partition_uri in config.json; pass --partition-uri")
    partition = load_partition(partition_uri)

    previous = registry.alias_version(tracking_uri, config.model_name, registry.CHAMPION)
    packages = [challenger]
    if previous is not None:
        with tempfile.TemporaryDirectory(prefix="ncf-champion-") as tmp:
            packages.append(load_package(registry.download_package(tracking_uri, config.model_name,
                                                                   str(previous.version), tmp)))
    scores, num_users = score_packages(packages, partition, config.gate_metric)
    chall, champ = scores[0], (scores[1] if previous is not None else None)

    decision = decide(
        chall.metrics[config.gate_metric], champ.metrics[config.gate_metric] if champ else None,
        min_delta=config.min_delta, floor=config.floor, challenger_per_user=chall.per_user,
        champion_per_user=champ.per_user if champ else None, bootstrap_samples=config.bootstrap_samples,
        significance=config.significance, seed=config.seed)

    champion_score = champ.metrics[config.gate_metric] if champ else None
    tags = registry.lineage_tags(
        config.model_uri, challenger.config, {**challenger.metrics, **{f"eval.{k}": v for k, v in chall.metrics.items()}},
        partition_uri=partition.uri, run_date=config.run_date or str(partition.stats.get("run_date", "")),
        git_commit=config.git_commit or _git_commit(), pipeline_run_id=config.pipeline_run_id)
    tags.update({
        "gate": "passed" if decision.promoted else "rejected",
        "gate.metric": config.gate_metric,
        "gate.challenger_score": f"{chall.metrics[config.gate_metric]:.6f}",
        "gate.reason": decision.reason,
        "gate.num_users": str(num_users),
    })
    if previous is not None:
        tags.update({"gate.champion_score": f"{champion_score:.6f}", "gate.champion_version": str(previous.version)})
    if decision.p_value is not None:
        tags["gate.p_value"] = f"{decision.p_value:.6f}"
    version = registry.register_package(
        config.model_uri, tracking_uri=tracking_uri, model_name=config.model_name, experiment=config.experiment,
        tags=tags, metrics=chall.metrics, params=challenger.config.get("hyperparameters"),
        train_run_id=str(challenger.config.get("mlflow_run_id", "")))
    registry.set_alias(tracking_uri, config.model_name, registry.CHALLENGER, version.version)
    if decision.promoted:
        registry.set_alias(tracking_uri, config.model_name, registry.CHAMPION, version.version)

    report_uri = config.report_uri or storage.join(root, "reports", "gate", f"{config.model_name}-v{version.version}")
    result = GateResult(
        promoted=decision.promoted, model_name=config.model_name, version=version.version,
        gate_metric=config.gate_metric, challenger_score=chall.metrics[config.gate_metric],
        champion_score=champion_score, champion_version=None if previous is None else str(previous.version),
        reason=decision.reason, p_value=decision.p_value, num_users=num_users, report_uri=str(report_uri),
        challenger_metrics=chall.metrics, champion_metrics=champ.metrics if champ else None)
    report = {**dataclasses.asdict(result), "min_delta": config.min_delta, "floor": config.floor,
              "partition_uri": partition.uri, "model_uri": config.model_uri, "tracking_uri": tracking_uri,
              "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    with storage.staged_output(report_uri) as tmp:
        storage.write_json(tmp / "gate.json", report)
        (tmp / "gate.html").write_text(_render_html(report))
    return result


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ncfctl gate", description=__doc__.split("\n")[0])
    add_arguments(parser, GateConfig)
    result = run(from_namespace(GateConfig, parser.parse_args(argv)))
    verdict = "promoted to champion" if result.promoted else "not promoted"
    champion = f"{result.champion_score:.4f} (v{result.champion_version})" if result.champion_version else "none"
    print(f"{result.model_name} v{result.version}: {verdict}. {result.gate_metric}: challenger "
          f"{result.challenger_score:.4f}, champion {champion}. {result.reason}. Report: {result.report_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
