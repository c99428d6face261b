"""The champion/challenger gate: adopt only retrains that are better on the same, newest data.

1. Register the challenger (a model package) as a new version of the registered model; alias `challenger`.
2. Score the challenger, the current `champion` AND a popularity baseline on the same test rows of the newest
   partition, with the same candidates (a champion's old metric on old data is not comparable): the sampled
   protocol on every test row, full ranking on the same fixed-seed sample of at most `full_eval_users` rows, with 95%
   intervals. Any model family scores through its package's scorer (`ncf.families`); the baseline is the
   `popularity` family fit on the newest partition's training rows (its interaction counts). A model trained on another
   partition may not know some users / items: an unknown user gets the model's popularity ranking (as in serving),
   an unknown item ranks below every known one and the held-out item loses ties, so an unknown held-out item is a
   miss. The report says how many rows each model ranked natively.
3. Promote (move `champion`) only if the challenger clears the absolute `floor`, beats the popularity baseline by
   at least `min_baseline_gain` (and strictly, unless that margin is negative) and beats the champion by at least
   `min_delta` (and strictly) on `gate_metric`; the first model needs the floor and the baseline. Optionally the
   gain over the champion must be significant under a paired bootstrap over users.
4. Tag the version with the decision and the three scores; write gate.json + gate.html under `report_uri`.

Steps 2-4 (reading the champion, scoring, moving the aliases) hold the model's gate lock (`registry.gate_lock`):
gates of one model run one at a time, so a second gate scores against the champion the first one set. Each
package's training partition is checked against the fingerprint the package recorded (`training_partitions`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ncf import contracts, registry, storage
from ncf.config import add_arguments, from_namespace, param
from ncf.contracts import parse_metric
from ncf.errors import UserError, exit_on_user_error
from ncf.families.base import Scorer
from ncf.ranking import all_cores


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
    min_baseline_gain: float = param(
        0.0, "every challenger, the first model included, must beat the popularity baseline (the newest partition's "
             "training interaction counts, scored on the same rows) on gate_metric by at least this much; 0: "
             "strictly better than popularity; negative: tolerate a model up to that much worse (e.g. to ship a "
             "popularity model itself)", pipeline=True)
    full_eval_users: int = param(contracts.DEFAULT_FULL_EVAL_USERS,
                                 "full-ranking metrics over a fixed-seed sample of at most this many test users, the "
                                 "same users for both models (every user when fewer; 0: every user)")
    bootstrap_samples: int = param(0, "paired bootstrap resamples over users (0: no significance test)")
    significance: float = param(0.05, "max one-sided p-value of the bootstrap for the gain to count")
    seed: int = param(0, "bootstrap random seed")
    report_uri: str = param("", "where gate.json / gate.html go (default: <storage root>/reports/gate/<version>)")
    experiment: str = param(registry.DEFAULT_EXPERIMENT, "MLflow experiment of the registration runs")
    run_date: str = param("", "lineage: the data's run date (default: from the partition's stats.json)")
    pipeline_run_id: str = param("", "lineage: the pipeline run that produced the model")
    git_commit: str = param("", "lineage: the code commit (default: `git rev-parse HEAD` when available)")
    lock_timeout_s: float = param(900.0, "how long to wait for another gate of the same model to finish")


@dataclasses.dataclass
class Decision:
    promoted: bool
    reason: str
    delta: float | None = None
    p_value: float | None = None
    baseline_gain: float | None = None  # challenger - baseline (None: no baseline was given)


@dataclasses.dataclass
class PartitionCheck:
    """A package's training partition now vs. the fingerprint the package recorded when it was trained."""
    status: str  # "unchanged", "changed" (re-run under the package, e.g. --overwrite) or "unknown"
    partition_uri: str
    recorded: str | None  # package config.json `partition_fingerprint`
    current: str | None  # the partition's stats.json `fingerprint` now
    detail: str


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
    num_users: int  # test rows both models were scored on (every test row of the partition)
    full_eval_users: int  # of those, the rows full ranking scored (the same fixed-seed sample for both models)
    report_uri: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    challenger_coverage: Coverage
    champion_coverage: Coverage | None
    # the popularity baseline (BASELINE) fit on the partition's training rows, scored on the same rows
    baseline_score: float
    baseline_metrics: dict[str, float]
    # "challenger" / "champion" -> whether its training partition still holds the data it was trained on
    training_partitions: dict[str, PartitionCheck] = dataclasses.field(default_factory=dict)


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
           baseline: float | None = None, min_baseline_gain: float = 0.0,
           challenger_per_user: np.ndarray | None = None, champion_per_user: np.ndarray | None = None,
           bootstrap_samples: int = 0, significance: float = 0.05, seed: int = 0) -> Decision:
    """The gate rule (pure). Never promotes a challenger that does not score strictly above the champion, nor (with
    a `baseline` and `min_baseline_gain` >= 0) one that does not score strictly above the baseline.

    In order: a non-finite score, the `floor`, the baseline (`challenger - baseline >= min_baseline_gain`, and
    `> 0` unless `min_baseline_gain` is negative: a negative margin knowingly tolerates a model that much worse
    than the baseline), then the champion (`challenger - champion > 0` and `>= min_delta`, optionally significant
    under a paired bootstrap); the first reason that refuses is the decision's.
    """
    if min_delta < 0:
        raise UserError(f"min_delta: must be >= 0 (a negative margin could promote a worse model), got {min_delta}")
    if not math.isfinite(min_baseline_gain):
        raise UserError(f"min_baseline_gain: must be a finite number, got {min_baseline_gain}")
    if not math.isfinite(challenger):
        return Decision(False, f"challenger score is {challenger}")
    if challenger < floor:
        return Decision(False, f"challenger {challenger:.4f} is below the floor {floor:.4f}")
    gain = None
    if baseline is not None:
        if not math.isfinite(baseline):
            return Decision(False, f"baseline score is {baseline}: cannot tell the challenger beats popularity")
        gain = challenger - baseline
        if not (gain > 0 or min_baseline_gain < 0):
            return Decision(False, f"challenger {challenger:.4f} is not better than the popularity baseline "
                                   f"{baseline:.4f}", baseline_gain=gain)
        if gain < min_baseline_gain:
            return Decision(False, f"challenger {challenger:.4f} is {gain:+.4f} against the popularity baseline "
                                   f"{baseline:.4f}, below min_baseline_gain {min_baseline_gain:.4f}",
                            baseline_gain=gain)
    over = "" if gain is None else f"; {gain:+.4f} over the popularity baseline {baseline:.4f}"
    if champion is None:
        return Decision(True, f"first model: {challenger:.4f} clears the floor {floor:.4f}{over}", baseline_gain=gain)
    delta = challenger - champion
    if not delta > 0:
        return Decision(False, f"challenger {challenger:.4f} is not better than champion {champion:.4f}", delta,
                        baseline_gain=gain)
    if delta < min_delta:
        return Decision(False, f"gain {delta:.4f} is below min_delta {min_delta:.4f}", delta, baseline_gain=gain)
    if bootstrap_samples > 0:
        if challenger_per_user is None or champion_per_user is None:
            raise ValueError("a bootstrap needs both models' per-user scores")
        p = paired_bootstrap_p(challenger_per_user, champion_per_user, bootstrap_samples, seed)
        if p > significance:
            return Decision(False, f"gain {delta:.4f} is not significant (paired bootstrap p={p:.4f} > "
                                   f"{significance})", delta, p, gain)
        return Decision(True, f"gain {delta:.4f} >= {min_delta:.4f}, significant (p={p:.4f}){over}", delta, p, gain)
    return Decision(True, f"gain {delta:.4f} >= min_delta {min_delta:.4f}{over}", delta, baseline_gain=gain)


# ---- scoring both models on the same rows --------------------------------------------------------------------


@dataclasses.dataclass
class Coverage:
    """How much of the newest partition's test set a model knows (the rest is scored by the fallback rules)."""

    rows: int  # test rows scored (all of them, for every model)
    known_user: int  # rows whose user is in the model's id map (else: popularity fallback)
    known_test_item: int  # rows whose held-out item the model knows (else: ranked last, a miss)
    native: int  # rows the model ranks entirely itself: known user, test item and every sampled negative


@dataclasses.dataclass
class Scores:
    metrics: dict[str, float]
    per_user: np.ndarray  # the gate metric per scored row: all test rows (sampled) or the full-ranking sample
    coverage: Coverage


def _map_ids(ids: np.ndarray, index: dict[str, int]) -> np.ndarray:
    """Raw ids -> the model's indices; -1 where the model does not know the id."""
    return np.fromiter((index.get(str(x), -1) for x in ids), dtype=np.int64, count=len(ids))


class PartitionScorer(Scorer):
    """A package's scorer (`package.scorer`, any family) in the PARTITION's id space.

    - A known user gets the model's scores; an unknown user the package's training popularity (what serving falls
      back to), so every row is scored.
    - `known_items` marks the partition items the model knows; the ranking gives the others -inf (below every item
      it knows) and makes a held-out item it does not know a miss at every K (`ncf.ranking`).
    """

    def __init__(self, package, partition):
        self.scorer = package.scorer
        self.num_items = partition.num_items
        self.users = torch.as_tensor(_map_ids(partition.user_ids, package.user_index))
        self.items = torch.as_tensor(_map_ids(partition.item_ids, package.item_index))
        self.known_items = self.items >= 0
        popularity = torch.as_tensor(package.popularity, dtype=torch.float32)
        self.popularity = torch.where(self.known_items, popularity[self.items.clamp(min=0)], -math.inf)

    def _scores(self, users: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
        """Rows for partition `users`: all partition items (items None) or per-row candidates [B, C]."""
        model_users = self.users[users]
        known_user = model_users >= 0
        out = self.popularity.expand(len(users), -1).clone() if items is None else self.popularity[items]
        if known_user.any():
            kept = model_users[known_user]
            if items is None:
                native = self.scorer.score_all(kept)[:, self.items.clamp(min=0)]
            else:
                native = self.scorer.score_candidates(kept, self.items[items[known_user]].clamp(min=0))
            out[known_user] = native.float().cpu()
        return out

    def score_all(self, users) -> torch.Tensor:
        return self._scores(torch.as_tensor(users, dtype=torch.long).view(-1), None)

    def score_candidates(self, users, items) -> torch.Tensor:
        return self._scores(torch.as_tensor(users, dtype=torch.long).view(-1), torch.as_tensor(items, dtype=torch.long))

    def coverage(self, partition) -> Coverage:
        known_user = (self.users[torch.as_tensor(partition.test_users, dtype=torch.long)] >= 0).numpy()
        known_test = self.known_items[torch.as_tensor(partition.test_items, dtype=torch.long)].numpy()
        known_negatives = self.known_items[torch.as_tensor(partition.test_negatives, dtype=torch.long)].numpy()
        native = known_user & known_test & known_negatives.all(axis=1)
        return Coverage(len(known_user), int(known_user.sum()), int(known_test.sum()), int(native.sum()))


def _check_scorable(partition) -> None:
    if len(partition.test_users) == 0:
        raise UserError(f"{partition.uri}: the partition has no test rows to score the gate on")


def _scores(scorer, partition, gate_metric: str, full_eval_users: int, known_items, coverage: Coverage) -> Scores:
    """`ncf.evaluate.evaluate` on the partition's test rows; the gate metric's per-user values."""
    from ncf.evaluate import evaluate

    full, kind, top_k = parse_metric(gate_metric)
    with all_cores():
        result = evaluate(scorer, partition, top_k, full_eval_users=full_eval_users, known_items=known_items)
    per_user = {(False, "hr"): result.hr_per_user, (False, "ndcg"): result.ndcg_per_user,
                (True, "hr"): result.full_hr_per_user, (True, "ndcg"): result.full_ndcg_per_user}[(full, kind)]
    return Scores(result.metrics(), per_user, coverage)


@torch.no_grad()
def score_packages(packages: list, partition, gate_metric: str,
                   full_eval_users: int = contracts.DEFAULT_FULL_EVAL_USERS) -> list[Scores]:
    """Evaluate every package on the same test rows of `partition`, with the same candidates.

    Both protocols, as `ncf.evaluate` defines them: sampled (held-out item vs. its sampled negatives, every test
    row) and full ranking (vs. every item of the partition the user did not train on in the partition, the same
    fixed-seed sample of at most `full_eval_users` rows for every package). Candidates are the partition's items,
    so a model is neither helped by items that left the catalogue nor excused for items it has never seen; see
    `PartitionScorer` for unknown users / items.
    """
    parse_metric(gate_metric)
    _check_scorable(partition)
    out = []
    for package in packages:
        scorer = PartitionScorer(package, partition)
        out.append(_scores(scorer, partition, gate_metric, full_eval_users, scorer.known_items,
                           scorer.coverage(partition)))
    return out


BASELINE = "popularity"  # the family the gate's baseline is: ncf/families/popularity.py


def baseline_scorer(partition) -> Scorer:
    """The popularity baseline of `partition`: the `popularity` family fit on every training row of the partition
    (its interaction counts), in the partition's own id space."""
    from ncf.families import get
    from ncf.families.base import FitContext, Runtime
    from ncf.splits import Interactions

    family = get(BASELINE)
    scorer, _ = family.fit_rows(Interactions.of(partition), family.settings_type(),
                                FitContext(Runtime(torch.device("cpu")), refit=False))
    return scorer


@torch.no_grad()
def score_baseline(partition, gate_metric: str,
                   full_eval_users: int = contracts.DEFAULT_FULL_EVAL_USERS) -> Scores:
    """The popularity baseline scored exactly as `score_packages` scores a package: the same test rows, candidates
    and full-ranking sample. It knows every user and item of the partition, so every row is native."""
    parse_metric(gate_metric)
    _check_scorable(partition)
    rows = len(partition.test_users)
    return _scores(baseline_scorer(partition), partition, gate_metric, full_eval_users, None,
                   Coverage(rows, rows, rows, rows))


# ---- the step ---------------------------------------------------------------------------------------------

def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def check_training_partition(package, scored) -> PartitionCheck:
    """Compare the fingerprint `package` recorded with its training partition's current one (`scored`: the
    partition the gate scores on, already loaded). Old packages / partitions without fingerprints: "unknown"."""
    uri = str(package.config.get("partition_uri") or "")
    recorded = package.config.get("partition_fingerprint")
    if not uri:
        return PartitionCheck("unknown", uri, recorded, None, "the package does not name its training partition")
    if storage.join(uri).rstrip("/") == storage.join(scored.uri).rstrip("/"):
        current = scored.stats.get("fingerprint")
    elif not storage.is_complete(uri):
        return PartitionCheck("unknown", uri, recorded, None, "its training partition is gone or incomplete")
    else:
        try:
            current = storage.read_json(storage.join(uri, "stats.json")).get("fingerprint")
        except UserError as exc:
            return PartitionCheck("unknown", uri, recorded, None, f"cannot read its stats.json ({exc})")
    if recorded is None or current is None:
        missing = "the package (trained before fingerprints)" if recorded is None else "the partition's stats.json"
        return PartitionCheck("unknown", uri, recorded, current, f"no fingerprint in {missing}")
    if str(recorded) == str(current):
        return PartitionCheck("unchanged", uri, recorded, current, "the data it was trained on")
    return PartitionCheck("changed", uri, recorded, current,
                          f"{uri} was rewritten after the model was trained (fingerprint {recorded} then, "
                          f"{current} now): it is scored on data it never saw")


def candidates_summary(package) -> dict | None:
    """The model-selection summary the train step may record in the package (`metrics.json`, else `config.json`,
    key `candidates`): `{"chosen": <family>, "candidates": {<family>: {"val_ndcg@10": ..., "settings": {...},
    "trials": n, ...}}}`. None when the package has none (or it is not that shape)."""
    for source in (package.metrics, package.config):
        summary = (source or {}).get("candidates")
        if isinstance(summary, dict):
            if isinstance(summary.get("candidates"), dict):
                return {"chosen": summary.get("chosen") or source.get("chosen"), "candidates": summary["candidates"]}
            if summary and all(isinstance(v, dict) for v in summary.values()):  # the table itself, chosen beside it
                return {"chosen": source.get("chosen"), "candidates": summary}
    return None


def run(config: GateConfig) -> GateResult:
    from ncf.data import load_partition
    from ncf.package import load_package

    parse_metric(config.gate_metric)
    if config.min_delta < 0:
        raise UserError(f"min_delta: must be >= 0, got {config.min_delta}")
    if not math.isfinite(config.min_baseline_gain):
        raise UserError(f"min_baseline_gain: must be a finite number, got {config.min_baseline_gain}")
    if config.bootstrap_samples < 0 or not 0 < config.significance < 1:
        raise UserError("bootstrap_samples must be >= 0 and significance in (0, 1)")
    root = None if config.tracking_uri and config.report_uri else contracts.storage_root_of_model(config.model_uri)
    tracking_uri = registry.resolve_tracking_uri(config.tracking_uri, root)

    challenger = load_package(config.model_uri)
    partition_uri = config.partition_uri or challenger.config.get("partition_uri") or ""
    if not partition_uri:
        raise UserError(f"{config.model_uri}: no partition_uri in config.json; pass --partition-uri")
    partition = load_partition(partition_uri)
    with registry.gate_lock(tracking_uri, config.model_name, timeout_s=config.lock_timeout_s) as lock:
        return _gate_locked(config, lock, tracking_uri, root, challenger, partition)


def _gate_locked(config: GateConfig, lock, tracking_uri: str, root, challenger, partition) -> GateResult:
    """Read the champion, score both, decide, register, move the aliases: all under the model's gate lock."""
    from ncf.package import load_package

    previous = registry.alias_version(tracking_uri, config.model_name, registry.CHAMPION)
    packages = [challenger]
    if previous is not None:
        with tempfile.TemporaryDirectory(prefix="ncf-champion-") as tmp:
            packages.append(load_package(registry.download_package(tracking_uri, config.model_name,
                                                                   str(previous.version), tmp)))
    scores = score_packages(packages, partition, config.gate_metric, config.full_eval_users)
    chall, champ = scores[0], (scores[1] if previous is not None else None)
    base = score_baseline(partition, config.gate_metric, config.full_eval_users)
    baseline_score = base.metrics[config.gate_metric]
    num_users = chall.coverage.rows

    decision = decide(
        chall.metrics[config.gate_metric], champ.metrics[config.gate_metric] if champ else None,
        min_delta=config.min_delta, floor=config.floor, baseline=baseline_score,
        min_baseline_gain=config.min_baseline_gain, challenger_per_user=chall.per_user,
        champion_per_user=champ.per_user if champ else None, bootstrap_samples=config.bootstrap_samples,
        significance=config.significance, seed=config.seed)
    checks = {role: check_training_partition(package, partition)
              for role, package in zip(("challenger", "champion"), packages, strict=False)}
    reason = "; ".join([decision.reason] + [f"{role}'s training partition changed: {check.detail}"
                                            for role, check in checks.items() if check.status == "changed"])

    champion_score = champ.metrics[config.gate_metric] if champ else None
    tags = registry.lineage_tags(
        config.model_uri, challenger.config, {**challenger.metrics, **{f"eval.{k}": v for k, v in chall.metrics.items()}},
        partition_uri=partition.uri, run_date=config.run_date or str(partition.stats.get("run_date", "")),
        git_commit=config.git_commit or _git_commit(), pipeline_run_id=config.pipeline_run_id)
    tags.update({
        "gate": "passed" if decision.promoted else "rejected",
        "gate.metric": config.gate_metric,
        "gate.challenger_score": f"{chall.metrics[config.gate_metric]:.6f}",
        "gate.baseline": BASELINE,
        "gate.baseline_score": f"{baseline_score:.6f}",
        "gate.min_baseline_gain": str(config.min_baseline_gain),
        "gate.reason": reason,
        "gate.num_users": str(num_users),
        "gate.challenger_native_rows": str(chall.coverage.native),
        **{f"gate.{role}_partition": check.status for role, check in checks.items()},
    })
    if previous is not None:
        tags.update({"gate.champion_score": f"{champion_score:.6f}", "gate.champion_version": str(previous.version),
                     "gate.champion_native_rows": str(champ.coverage.native)})
    if decision.p_value is not None:
        tags["gate.p_value"] = f"{decision.p_value:.6f}"
    version = registry.register_package(
        config.model_uri, tracking_uri=tracking_uri, model_name=config.model_name, experiment=config.experiment,
        tags=tags, metrics=chall.metrics, params=challenger.config.get("hyperparameters"),
        train_run_id=str(challenger.config.get("mlflow_run_id", "")))
    lock.check()  # still the only gate of this model: the champion read above is still the champion
    registry.set_alias(tracking_uri, config.model_name, registry.CHALLENGER, version.version)
    if decision.promoted:
        registry.set_alias(tracking_uri, config.model_name, registry.CHAMPION, version.version)

    report_uri = config.report_uri or contracts.gate_report_uri(root, config.model_name, version.version)
    result = GateResult(
        promoted=decision.promoted, model_name=config.model_name, version=version.version,
        gate_metric=config.gate_metric, challenger_score=chall.metrics[config.gate_metric],
        champion_score=champion_score, champion_version=None if previous is None else str(previous.version),
        reason=reason, p_value=decision.p_value, num_users=num_users,
        full_eval_users=int(chall.metrics[contracts.FULL_EVAL_USERS]), report_uri=str(report_uri),
        challenger_metrics=chall.metrics, champion_metrics=champ.metrics if champ else None,
        challenger_coverage=chall.coverage, champion_coverage=champ.coverage if champ else None,
        baseline_score=baseline_score, baseline_metrics=base.metrics, training_partitions=checks)
    report = {**dataclasses.asdict(result), "min_delta": config.min_delta, "floor": config.floor,
              "min_baseline_gain": config.min_baseline_gain, "baseline": BASELINE,
              "challenger_candidates": candidates_summary(challenger),
              "partition_uri": partition.uri, "model_uri": config.model_uri, "tracking_uri": tracking_uri,
              "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    from ncf.report import write_gate_report  # matplotlib: imported only when a report is written

    with storage.staged_output(report_uri) as tmp:
        storage.write_json(tmp / contracts.GATE_REPORT_JSON, report)
        write_gate_report(tmp, report, tracking_uri=tracking_uri, run_id=version.run_id)
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
          f"{result.challenger_score:.4f}, champion {champion}, {BASELINE} baseline {result.baseline_score:.4f}. "
          f"{result.reason}. Report: {result.report_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
