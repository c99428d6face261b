"""Model selection (the train step's `--candidates`, issue 11): choose the model per dataset on the VALIDATION split.

Each candidate is a model family (`ease`, `ials`, `popularity`, `ncf`: the configured `--model`) or an NCF model
type (`GMF`, `MLP`, `NeuMF`: family ncf with that model). For each one, in order:

1. tuning trials on the core's one validation split (`ncf.splits.fit_data`): trial 0 fits the configured settings,
   every further trial the settings its family's `search_space(trial, settings)` draws through an Optuna TPE
   sampler seeded with `seed + <candidate's position>` -- a fixed number of trials (`budgets`), never a time
   limit, so a seed gives the same trials and the same choice. A family without a search space gets one trial.
   Trials fit `family.trial_settings(settings)` without refit (NCF: one model's selection pass, no ensemble) on
   the training rows minus validation, and never see the test rows (`FitData.test` is None in a trial);
2. then its family's `refinements(best settings)`, one trial each: the best trial's settings with one setting
   changed (EASE, iALS: each other recency weight; they stay out of the TPE search, which has few trials to
   spend); none when the budget is one trial (the configured settings only) or every trial failed;
3. the candidate's best trial by validation NDCG@K (the first on ties).

The candidate whose best trial has the highest validation NDCG@K wins (the first listed on ties), unless a blend
wins (`--blend`, `choose_blend`): the best `BLEND_MAX_MEMBERS` candidates' best trials, their scores on the
validation rows each divided by its standard deviation there, summed with weights on a grid over the simplex
(steps of 1 / `BLEND_GRID`), the weights with the highest validation NDCG@K kept. With `auto` the blend is exported
when it beats every candidate alone on those rows (the grid's corners), with `on` whenever 2+ candidates fitted.
The weights are chosen on the same validation split as everything else: the test rows are never read. The train step
(ncf/train.py) then fits it with the chosen settings as it fits any family (refit on every training row where the
family supports it; NCF continues from the winning trial's selection pass, `FitContext.reuse`, instead of
repeating it), evaluates it on the test rows and publishes it. A trial that fails with a `UserError` (a memory
estimate over the budget, a diverged loss) is logged and skipped; a candidate whose every trial failed is out.

No MLflow, KFP or SageMaker here: `Tracker` is how the step logs each trial (an MLflow child run of the train run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ncf import contracts, families
from ncf.errors import UserError
from ncf.families.base import Family, FitContext
from ncf.splits import FitData

MODEL_TYPES = ("GMF", "MLP", "NeuMF")  # ncf.models.MODEL_TYPES (not imported: it pulls torch models in)
BLEND_MODES = ("auto", "on", "off")
BLEND_MAX_MEMBERS = 3  # the best candidates a blend weighs: 66 grid points for 3, 1,001 for 5
BLEND_GRID = 10  # weights in steps of 1/10
BLEND_ROWS = 50_000  # validation rows (a fixed-seed sample; every row when fewer) the weights are chosen on


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


@dataclasses.dataclass(eq=False)  # compared by identity: it holds arrays
class CandidateResult:
    candidate: Candidate
    settings: Any  # the best trial's settings (the family's dataclass, full size: the ensemble as configured)
    tuned: dict[str, Any]  # the best trial's values of the searched settings ({}: nothing searched)
    best: Trial | None  # None: every trial failed
    trials: list[Trial]
    failed: list[str]  # the failed trials' messages
    seconds: float
    state: Any = None  # the best trial's FitResult.state (what the final fit continues from)
    val_scores: np.ndarray | None = None  # the best trial's scores of the blend rows' candidates (`--blend`)

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
class BlendChoice:
    """The weights `choose_blend` found, and whether the train step exports the blend (`used`)."""

    members: list[CandidateResult]  # nonzero weights only, in the candidates' order
    weights: list[float]
    val_ndcg: float  # on `rows`
    val_hr: float
    best_alone: float  # the best candidate alone on `rows` (validation NDCG@K)
    rows: np.ndarray  # the validation rows the weights were chosen on
    grid_points: int
    used: bool

    def summary(self, k: int) -> dict[str, Any]:
        return {"family": "blend", contracts.metric_name("ndcg", k, validation=True): self.val_ndcg,
                contracts.metric_name("hr", k, validation=True): self.val_hr, "trials": self.grid_points,
                "settings": {m.candidate.name: w for m, w in zip(self.members, self.weights, strict=True)},
                "exported": self.used}


@dataclasses.dataclass
class Selection:
    chosen: CandidateResult
    candidates: list[CandidateResult]
    top_k: int
    blend: BlendChoice | None = None

    @property
    def blended(self) -> bool:
        return self.blend is not None and self.blend.used

    def summary(self) -> dict[str, Any]:
        """The JSON-able record in metrics.json / config.json `candidates` (the gate report shows it)."""
        out = {"chosen": "blend" if self.blended else self.chosen.candidate.name,
               "metric": contracts.metric_name("ndcg", self.top_k, validation=True),
               "candidates": {c.candidate.name: c.summary(self.top_k) for c in self.candidates}}
        if self.blend is not None:
            out["candidates"]["blend"] = self.blend.summary(self.top_k)
        return out


def validation_scores(scorer, validation, rows: np.ndarray) -> np.ndarray:
    """float32 [len(rows), 1 + negatives]: each row's held-out item's score, then its negatives' (NaN as -inf, as
    the evaluation ranks it: a NaN held-out item must not count as a hit)."""
    from ncf.ranking import sampled_scores

    chunks = [scores.cpu().numpy() for _, scores in sampled_scores(
        scorer, validation.users[rows], validation.items[rows], validation.negatives[rows])]
    return np.concatenate(chunks) if chunks else np.zeros((0, 1 + validation.negatives.shape[1]), dtype=np.float32)


def _hit_ndcg(scores: np.ndarray, k: int) -> tuple[float, float]:
    from ncf.ranking import held_out_ranks, hit_ndcg

    hit, ndcg = hit_ndcg(held_out_ranks(scores), k)
    return float(hit.mean()), float(ndcg.mean())


def score_scale(scores: np.ndarray) -> float:
    """What a member's scores are divided by before weighing: their standard deviation (1 when constant)."""
    scale = float(np.std(scores, dtype=np.float64))
    return scale if scale > 0 and np.isfinite(scale) else 1.0


def choose_blend(results: list[CandidateResult], rows: np.ndarray, k: int, mode: str) -> BlendChoice | None:
    """The validation-best weights over the best `BLEND_MAX_MEMBERS` candidates (module docstring); None with fewer
    than 2 candidates. Ties keep the first grid point in lexicographic order of the weights."""
    scored = sorted((r for r in results if r.val_scores is not None), key=lambda r: -r.best.val_ndcg)
    best_ones = {id(r) for r in scored[:BLEND_MAX_MEMBERS]}
    scored = [r for r in results if id(r) in best_ones]  # back in the order listed
    if len(scored) < 2:
        return None
    normalised = [r.val_scores / score_scale(r.val_scores) for r in scored]
    best, best_alone, points = None, -1.0, 0
    for steps in itertools.product(range(BLEND_GRID + 1), repeat=len(scored)):
        if sum(steps) != BLEND_GRID:
            continue
        points += 1
        total = sum(s / BLEND_GRID * m for s, m in zip(steps, normalised, strict=True) if s)
        hr, ndcg = _hit_ndcg(total, k)
        if best is None or ndcg > best[0]:
            best = (ndcg, hr, steps)
        if max(steps) == BLEND_GRID:
            best_alone = max(best_alone, ndcg)
    ndcg, hr, steps = best
    kept = [(r, s / BLEND_GRID) for r, s in zip(scored, steps, strict=True) if s]
    used = mode == "on" or (mode == "auto" and len(kept) > 1 and ndcg > best_alone)
    return BlendChoice([r for r, _ in kept], [w for _, w in kept], ndcg, hr, best_alone, rows, points, used)


def _trial_count(family: Family, budgets: dict[str, int]) -> int:
    """Trials of the search (trial 0 included), before the refinements."""
    if type(family).search_space is Family.search_space:
        return 1
    return max(1, int(budgets.get(family.name, budgets["*"])))


def _trials(family: Family, base, count: int, study, result: CandidateResult, searched: list[str]
            ) -> Iterator[tuple[int, Any, Any, dict[str, Any]]]:
    """(number, Optuna trial or None, settings, the searched settings' values) of each trial: `count` of the search,
    then, when it found a best (`result`, filled in by the caller as the trials run), the family's refinements of
    that best, read only once the search is over."""
    for number in range(count):
        trial = study.ask() if number else None  # trial 0: the configured settings
        tuned = family.search_space(trial, base) if trial is not None else {}
        yield number, trial, dataclasses.replace(base, **tuned), tuned
    if count > 1 and result.best is not None:
        best = result.settings
        kept = {name: getattr(best, name) for name in searched}
        for offset, change in enumerate(family.refinements(best)):
            yield count + offset, None, dataclasses.replace(best, **change), {**kept, **change}


def select(data: FitData, candidates: list[Candidate], config, context: FitContext, budgets: dict[str, int],
           tracker: Tracker | None = None, before_candidate: Callable[[Family, Any], None] | None = None,
           blend: str = "off") -> Selection:
    """Tune each candidate on `data.validation` and choose the best (module docstring).

    `config`: the train step's config (the candidates' configured settings); `budgets`: trials per family name,
    `"*"` for the others; `before_candidate(family, settings)`: called before a candidate's trials (the step sets
    its thread count); `blend`: one of `BLEND_MODES`. `context.seed` seeds the samplers.
    """
    import optuna

    from ncf.evaluate import sample_rows

    if data.validation is None:
        raise ValueError("model selection needs a validation split (fit_data(..., validation=True))")
    if blend not in BLEND_MODES:
        raise UserError(f"blend: {blend!r}, expected one of {list(BLEND_MODES)}")
    blend_rows = sample_rows(data.validation.users.size, BLEND_ROWS, seed=context.seed)
    tracker = tracker or Tracker()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    k = context.top_k
    ndcg_key, hr_key = (contracts.metric_name(kind, k, validation=True) for kind in ("ndcg", "hr"))
    trial_data = dataclasses.replace(data, test=None)  # trials never see the test rows
    plans = [(c, families.get(c.family), c.settings(config)) for c in candidates]
    counts = [_trial_count(family, budgets) for _, family, _ in plans]
    refined = [len(family.refinements(base)) if count > 1 else 0
               for (_, family, base), count in zip(plans, counts, strict=True)]
    results: list[CandidateResult] = []
    with context.progress_bar(sum(counts) + sum(refined), "model selection", unit="trial") as bar:
        for position, ((candidate, family, base), count, refinements) in enumerate(
                zip(plans, counts, refined, strict=True)):
            if before_candidate is not None:
                before_candidate(family, base)
            sampler = optuna.samplers.TPESampler(seed=context.seed + position)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            result = CandidateResult(candidate, base, {}, None, [], [], 0.0)
            searched: list[str] = []
            started = time.perf_counter()
            for number, trial, settings, tuned in _trials(family, base, count, study, result, searched):
                searched += [name for name in tuned if name not in searched]
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
                    if blend != "off":
                        result.val_scores = validation_scores(fitted.scorer, data.validation, blend_rows)
                del fitted
                bar.update(1)
            if result.best is None:  # every trial failed: no refinements ran
                bar.update(refinements)
            result.seconds = time.perf_counter() - started
            if result.best is not None:
                result.tuned = {name: getattr(result.settings, name) for name in searched}
                context.log(f"[select] {candidate.name}: best validation ndcg@{k}={result.best.val_ndcg:.4f} "
                            f"hr@{k}={result.best.val_hr:.4f} (trial {result.best.number} of {count}"
                            f"{f' + {refinements} refinements' if refinements else ''}"
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
    context.log(f"[select] best alone: {chosen.candidate.name} (validation ndcg@{k}={chosen.best.val_ndcg:.4f})")
    blended = choose_blend(ranked, blend_rows, k, blend) if blend != "off" else None
    kept = [chosen]
    if blended is not None:
        weights = ", ".join(f"{m.candidate.name} {w:.1f}" for m, w in zip(blended.members, blended.weights,
                                                                          strict=True))
        context.log(f"[select] blend ({weights}): validation ndcg@{k}={blended.val_ndcg:.4f} on {blended.rows.size:,} "
                    f"rows against {blended.best_alone:.4f} for the best alone; "
                    f"{'exported' if blended.used else 'not exported'} (--blend {blend})")
        if blended.used:
            kept = blended.members
    for result in results:
        result.val_scores = None
        if result not in kept:
            result.state = None  # free the models that are not fitted again
    return Selection(chosen, results, k, blended)
