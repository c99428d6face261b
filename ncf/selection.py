"""Model selection (the train step's `--candidates`, issue 11): choose the model per dataset on the VALIDATION split.

Each candidate is a model family (`ease`, `ials`, `popularity`, `ncf`: the configured `--model`) or an NCF model
type (`GMF`, `MLP`, `NeuMF`: family ncf with that model). For each one, in order:

1. tuning trials on the core's one validation split (`ncf.splits.fit_data`): trial 0 fits the configured settings,
   every further trial the settings its family's `search_space(trial, settings)` draws through an Optuna TPE
   sampler seeded with `seed + <candidate's position>` -- a fixed number of trials (`budgets`), never a time
   limit, so a seed gives the same trials and the same choice. A family without a search space gets one trial.
   Trials fit `family.trial_settings(settings)` without refit (NCF: one model's selection pass, no ensemble) on
   the training rows minus validation, and never see the test rows (`FitData.test` is None in a trial);
2. the candidate's best trial by validation NDCG@K (the first on ties).

The candidate whose best trial has the highest validation NDCG@K wins (the first listed on ties). The train step
(ncf/train.py) then fits it with the chosen settings as it fits any family (refit on every training row where the
family supports it; NCF continues from the winning trial's selection pass, `FitContext.reuse`, instead of
repeating it), evaluates it on the test rows and publishes it. A trial that fails with a `UserError` (a memory
estimate over the budget, a diverged loss) is logged and skipped; a candidate whose every trial failed is out.

No MLflow, KFP or SageMaker here: `Tracker` is how the step logs each trial (an MLflow child run of the train run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

from ncf import contracts, families
from ncf.errors import UserError
from ncf.families.base import Family, FitContext
from ncf.splits import FitData

MODEL_TYPES = ("GMF", "MLP", "NeuMF")  # ncf.models.MODEL_TYPES (not imported: it pulls torch models in)


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str  # as listed: "ease", "NeuMF", "ncf"
    family: str  # registry name (ncf.families.FAMILIES)
    overrides: tuple[tuple[str, Any], ...] = ()  # settings fixed by the name (("model", "GMF"),)

    def settings(self, config) -> Any:
        """The candidate's configured settings: its family's fields of `config` (ncf.train.TrainConfig), with the
        fields its name fixes."""
        return dataclasses.replace(families.get(self.family).settings(config), **dict(self.overrides))


def allowed_names() -> list[str]:
    return [*families.FAMILIES, *MODEL_TYPES]


def parse_candidates(text: str, model: str) -> list[Candidate]:
    """`GMF,ease,ials` -> candidates. `ncf` is family ncf with `model` (the configured `--model`); names are
    case-insensitive. UserError naming the field for an unknown name, a duplicate, or an empty list."""
    by_lower = {name.lower(): name for name in allowed_names()}
    candidates: list[Candidate] = []
    seen: dict[tuple, str] = {}
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        name = by_lower.get(raw.lower())
        if name is None:
            raise UserError(f"candidates: unknown candidate {raw!r}; allowed: {', '.join(allowed_names())} (a model "
                            f"family, or an NCF model type for family ncf with that model)")
        if name in MODEL_TYPES:
            candidate = Candidate(name, "ncf", (("model", name),))
        elif name == "ncf":
            candidate = Candidate(name, "ncf", (("model", model),))
        else:
            candidate = Candidate(name, name)
        key = (candidate.family, candidate.overrides)
        if key in seen:
            raise UserError(f"candidates: {seen[key]!r} and {name!r} name the same model; list it once")
        seen[key] = name
        candidates.append(candidate)
    if not candidates:
        raise UserError(f"candidates: no candidate in {text!r}; list some of {', '.join(allowed_names())}, or pass "
                        "an empty value to train --family only")
    return candidates


# ---- trials ---------------------------------------------------------------------------------------------------

LogMetrics = Callable[[dict[str, float], int], None]


class Tracker:
    """Where each trial is recorded; this one records nothing (no tracking URI)."""

    @contextlib.contextmanager
    def trial(self, candidate: str, family: str, number: int, params: dict[str, Any]) -> Iterator[LogMetrics]:
        """A trial's record (an MLflow child run): yields the function its metrics are logged with."""
        yield lambda values, step: None

    def failed(self, message: str) -> None:
        """Marks the open trial's record as failed, with the reason."""


@dataclasses.dataclass
class Trial:
    number: int
    params: dict[str, Any]  # the searched settings' values ({} for trial 0 when nothing was searched yet)
    val_hr: float
    val_ndcg: float
    seconds: float


@dataclasses.dataclass
class CandidateResult:
    candidate: Candidate
    settings: Any  # the best trial's settings (the family's dataclass, full size: the ensemble as configured)
    tuned: dict[str, Any]  # the best trial's values of the searched settings ({}: nothing searched)
    best: Trial | None  # None: every trial failed
    trials: list[Trial]
    failed: list[str]  # the failed trials' messages
    seconds: float
    state: Any = None  # the best trial's FitResult.state (what the final fit continues from)

    def summary(self, k: int) -> dict[str, Any]:
        out: dict[str, Any] = {"family": self.candidate.family, "trials": len(self.trials) + len(self.failed),
                               "seconds": round(self.seconds, 1)}
        if self.best is not None:
            out.update({contracts.metric_name("ndcg", k, validation=True): self.best.val_ndcg,
                        contracts.metric_name("hr", k, validation=True): self.best.val_hr,
                        "settings": dict(self.tuned), "best_trial": self.best.number})
        if self.failed:
            out["failed"] = list(self.failed)
        return out


@dataclasses.dataclass
class Selection:
    chosen: CandidateResult
    candidates: list[CandidateResult]
    top_k: int

    def summary(self) -> dict[str, Any]:
        """The JSON-able record in metrics.json / config.json `candidates` (the gate report shows it)."""
        return {"chosen": self.chosen.candidate.name,
                "metric": contracts.metric_name("ndcg", self.top_k, validation=True),
                "candidates": {c.candidate.name: c.summary(self.top_k) for c in self.candidates}}


def _trial_count(family: Family, budgets: dict[str, int]) -> int:
    if type(family).search_space is Family.search_space:
        return 1
    return max(1, int(budgets.get(family.name, budgets["*"])))


def select(data: FitData, candidates: list[Candidate], config, context: FitContext, budgets: dict[str, int],
           tracker: Tracker | None = None, before_candidate: Callable[[Family, Any], None] | None = None
           ) -> Selection:
    """Tune each candidate on `data.validation` and choose the best (module docstring).

    `config`: the train step's config (the candidates' configured settings); `budgets`: trials per family name,
    `"*"` for the others; `before_candidate(family, settings)`: called before a candidate's trials (the step sets
    its thread count). `context.seed` seeds the samplers.
    """
    import optuna

    if data.validation is None:
        raise ValueError("model selection needs a validation split (fit_data(..., validation=True))")
    tracker = tracker or Tracker()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    k = context.top_k
    ndcg_key, hr_key = (contracts.metric_name(kind, k, validation=True) for kind in ("ndcg", "hr"))
    trial_data = dataclasses.replace(data, test=None)  # trials never see the test rows
    plans = [(c, families.get(c.family), c.settings(config)) for c in candidates]
    counts = [_trial_count(family, budgets) for _, family, _ in plans]
    results: list[CandidateResult] = []
    with context.progress_bar(sum(counts), "model selection", unit="trial") as bar:
        for position, ((candidate, family, base), count) in enumerate(zip(plans, counts, strict=True)):
            if before_candidate is not None:
                before_candidate(family, base)
            sampler = optuna.samplers.TPESampler(seed=context.seed + position)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            result = CandidateResult(candidate, base, {}, None, [], [], 0.0)
            searched: list[str] = []
            started = time.perf_counter()
            for number in range(count):
                trial = study.ask() if number else None  # trial 0: the configured settings
                tuned = family.search_space(trial, base) if trial is not None else {}
                searched += [name for name in tuned if name not in searched]
                settings = dataclasses.replace(base, **tuned)
                trial_context = dataclasses.replace(context, refit=False, resume=False, checkpoint_dir="",
                                                    report=False, reuse=None)
                trial_started = time.perf_counter()
                with tracker.trial(candidate.name, family.name, number, tuned) as log_metrics:
                    trial_context.log_metrics = log_metrics
                    try:
                        fitted = family.fit(trial_data, family.trial_settings(settings), trial_context)
                    except UserError as exc:
                        message = f"trial {number} ({tuned or 'configured settings'}): {exc}"
                        context.log(f"[select] {candidate.name} {message}: skipped")
                        tracker.failed(str(exc))
                        result.failed.append(message)
                        if trial is not None:
                            study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        bar.update(1)
                        continue
                    val_ndcg, val_hr = float(fitted.metrics[ndcg_key]), float(fitted.metrics[hr_key])
                    log_metrics({contracts.mlflow_metric_key(ndcg_key): val_ndcg,
                                 contracts.mlflow_metric_key(hr_key): val_hr}, 0)
                if trial is not None:
                    study.tell(trial, val_ndcg)
                record = Trial(number, tuned, val_hr, val_ndcg, time.perf_counter() - trial_started)
                result.trials.append(record)
                if result.best is None or val_ndcg > result.best.val_ndcg:
                    result.best, result.settings, result.state = record, settings, fitted.state
                del fitted
                bar.update(1)
            result.seconds = time.perf_counter() - started
            if result.best is not None:
                result.tuned = {name: getattr(result.settings, name) for name in searched}
                context.log(f"[select] {candidate.name}: best validation ndcg@{k}={result.best.val_ndcg:.4f} "
                            f"hr@{k}={result.best.val_hr:.4f} (trial {result.best.number} of {count}"
                            f"{', ' + str(len(result.failed)) + ' failed' if result.failed else ''}) "
                            f"{result.tuned or 'configured settings'}; {result.seconds:.1f}s")
            else:
                context.log(f"[select] {candidate.name}: every trial failed; out of the running")
            results.append(result)
    ranked = [r for r in results if r.best is not None]
    if not ranked:
        raise UserError("candidates: every candidate failed to fit: " + "; ".join(
            f"{r.candidate.name}: {r.failed[-1]}" for r in results))
    chosen = max(ranked, key=lambda r: r.best.val_ndcg)  # max keeps the first of equals: the order listed
    context.log(f"[select] chosen: {chosen.candidate.name} (validation ndcg@{k}={chosen.best.val_ndcg:.4f})")
    for other in results:
        if other is not chosen:
            other.state = None  # free the losers' models
    return Selection(chosen, results, k)
