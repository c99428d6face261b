"""The seam between the platform core and the model families (in the spirit of RecBole's AbstractRecommender).

The core (train step, evaluation, gate, registry, serving) knows a model only through these types:

- `Family`: fits on `ncf.splits.FitData` (a partition's training rows and the core's one validation split) with its
  own settings dataclass, returns a `FitResult` (a `Scorer`, the `ExportedModel` that goes into the package, and
  its own metrics), and loads a package's weights back into a `Scorer`.
- `Scorer`: `num_items`, `device`, `score_all(users)` -> float32 [B, num_items], `score_candidates(users, items)`
  -> float32 [B, C]. Higher is better; only the order within a user matters (scores are not comparable across
  families). Inner-product families also implement `user_vectors()` / `item_vectors()`; `inner_product` says what
  their product means.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ncf import contracts
from ncf.errors import UserError

if TYPE_CHECKING:
    from ncf.package import ModelPackage
    from ncf.splits import FitData, Interactions


# ---- scorers ------------------------------------------------------------------------------------------------


class Scorer(abc.ABC):
    """Scores items for users, in the id space of the package (or partition) it was built for."""

    num_items: int
    device: torch.device = torch.device("cpu")
    #: What `user_vectors() @ item_vectors().T` is:
    #:   "exact"   -- the scores up to a constant: the same ranking for every user (retrieve with it, no re-rank);
    #:   "partial" -- one additive part of the score (retrieve candidates with it, then re-rank with score_candidates);
    #:   ""        -- this scorer has no inner-product vectors.
    inner_product: str = ""

    @abc.abstractmethod
    def score_all(self, users) -> torch.Tensor:
        """Scores of every item for each user index in `users`: float32 [len(users), num_items]."""

    @abc.abstractmethod
    def score_candidates(self, users, items) -> torch.Tensor:
        """Scores of per-user candidates `items` [B, C] (or [C], shared by every user): float32 [B, C]."""

    def user_vectors(self, users=None) -> torch.Tensor:
        """float32 [num_users, d] (or [len(users), d]: the rows of the user indices `users`); see `inner_product`."""
        raise NotImplementedError(f"{type(self).__name__}: no inner-product vectors (inner_product is empty)")

    def item_vectors(self) -> torch.Tensor:
        """float32 [num_items, d]; see `inner_product`."""
        raise NotImplementedError(f"{type(self).__name__}: no inner-product vectors (inner_product is empty)")


def as_index(x, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long, device=device)


def candidate_matrix(users: torch.Tensor, items, device: torch.device) -> torch.Tensor:
    """Candidates as [B, C]: a [C] list is shared by every user."""
    items = as_index(items, device)
    return items.expand(len(users), -1) if items.dim() == 1 else items


class InnerProductScorer(Scorer):
    """score(u, i) = <user_factors[u], item_factors[i]>: matrix factorisation models (iALS)."""

    inner_product = "exact"

    def __init__(self, user_factors: torch.Tensor, item_factors: torch.Tensor):
        self.users, self.items = user_factors, item_factors
        self.num_items = item_factors.shape[0]
        self.device = item_factors.device

    @torch.no_grad()
    def score_all(self, users) -> torch.Tensor:
        return self.users[as_index(users, self.device).view(-1)].float() @ self.items.float().t()

    @torch.no_grad()
    def score_candidates(self, users, items) -> torch.Tensor:
        users = as_index(users, self.device).view(-1)
        items = candidate_matrix(users, items, self.device)
        return torch.einsum("bf,bcf->bc", self.users[users].float(), self.items[items].float())

    def user_vectors(self, users=None) -> torch.Tensor:
        return self.users.float() if users is None else self.users[as_index(users, self.device).view(-1)].float()

    def item_vectors(self) -> torch.Tensor:
        return self.items.float()


# ---- fitting ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Runtime:
    """Where the train step runs: the device, and this process's place under torchrun."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclasses.dataclass
class FitContext:
    """What the train step hands a family besides the data and its settings."""

    runtime: Runtime
    seed: int = 42
    top_k: int = 10  # K of the validation (and reporting) HR@K / NDCG@K
    refit: bool = True  # after choosing on validation, retrain on every training row (where the family can)
    memory_budget: int = 0  # bytes a fit may use (0: unchecked)
    progress: str = "off"  # auto / on / off
    resume: bool = False
    checkpoint_dir: str = ""  # where a family that checkpoints writes them (NCF, per epoch); "": no checkpoints
    fingerprint: str = ""  # of the settings and data that shape the result (checkpoints record it)
    log_metrics: Callable[[dict[str, float], int], None] = lambda values, step: None  # MLflow, when configured
    # An earlier validation fit of the same settings on the same data (its `FitResult.state`, from a tuning trial):
    # the fit continues from it instead of repeating it (NCF: its selection pass). Families without state ignore it.
    reuse: Any = None
    report: bool = True  # the fit trains the exported model: NCF prints its epochs' seed metric lines on stdout

    def progress_bar(self, total: int, desc: str, unit: str = "batch"):
        from tqdm import tqdm

        enabled = {"on": True, "off": False}.get(self.progress, sys.stderr.isatty())
        return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not (enabled and self.runtime.is_main))

    def require_memory(self, parts: dict[str, int], what: str, hint: str) -> None:
        """UserError naming the estimate when `parts` (bytes by purpose) exceed the memory budget."""
        need = sum(parts.values())
        if self.memory_budget and need > self.memory_budget:
            detail = ", ".join(f"{name} {format_bytes(size)}" for name, size in parts.items() if size)
            raise UserError(f"{what}: needs an estimated {format_bytes(need)} ({detail}), over the memory budget "
                            f"of {format_bytes(self.memory_budget)} (--memory-budget-gb); {hint}")

    def log(self, message: str) -> None:
        if self.runtime.is_main:
            print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class ExportedModel:
    """What a family writes into a model package: `weights.safetensors` tensors and its `config.json` keys."""

    family: str
    weights: dict[str, torch.Tensor]  # CPU, contiguous
    config: dict[str, Any]  # must hold num_users and num_items (the package checks its id maps against them)
    schema_version: int = 1  # the lowest package schema version whose readers score it right (ncf.contracts)


@dataclasses.dataclass
class FitResult:
    scorer: Scorer  # of the exported model
    exported: ExportedModel
    metrics: dict[str, Any]  # the family's own numbers for metrics.json (val_hr@K / val_ndcg@K, loss, ...)
    loss: float | None = None  # training loss of the exported model, the seed line's `Loss=` (None: no loss)
    report_line: bool = True  # print the seed's metric line for the exported model after the final evaluation
    state: Any = None  # what a later fit of the same settings may continue from (`FitContext.reuse`); None: nothing


class Family(abc.ABC):
    """A model family. Subclasses set `name` and `settings_type` and implement `fit` and `load`."""

    name: ClassVar[str]
    settings_type: ClassVar[type]  # a dataclass; its field names are `ncf.train.TrainConfig` field names
    distributed: ClassVar[bool] = False  # trains under torchrun (several processes)

    def settings(self, config) -> Any:
        """The family's settings from a config holding fields of the same names (`ncf.train.TrainConfig`)."""
        return self.settings_type(**{f.name: getattr(config, f.name)
                                     for f in dataclasses.fields(self.settings_type)})

    def uses_validation(self, settings) -> bool:
        """Whether the core carves a validation split out of the training rows for this fit."""
        return True

    def default_threads(self, settings, cores: int) -> int:
        """CPU threads to train with when the user did not choose (`--threads 0`)."""
        return cores

    def search_space(self, trial, settings) -> dict[str, Any]:
        """The settings one tuning trial tries (`ncf.selection`): {settings field: value}, each drawn through
        `trial` (an `optuna.trial.Trial`: `suggest_float` / `suggest_int` / `suggest_categorical`, named as the
        field); fields left out keep `settings`' values. The data-dependent settings only, in bounded ranges that
        contain the defaults. Default: {} (nothing to tune; the family is fitted once with its settings)."""
        return {}

    def refinements(self, settings) -> list[dict[str, Any]]:
        """Changes tried after the search (`ncf.selection`), one trial each, on top of the best trial's `settings`:
        a setting with a few values worth trying that the search leaves out, so it does not thin the search of the
        others (EASE, iALS: the recency weight). Its length must be the same for the configured settings (the
        progress bar counts those). Default: none."""
        return []

    def trial_settings(self, settings) -> Any:
        """The settings a tuning trial fits with (the chosen ones are then fitted as given): `settings` itself
        unless a cheaper stand-in ranks the same (NCF: one model instead of the ensemble)."""
        return settings

    @abc.abstractmethod
    def fit(self, data: FitData, settings, context: FitContext) -> FitResult:
        """Fit on `data.train`; choose anything data-dependent on `data.validation` only; with `context.refit`
        (and a validation split) retrain on `data.all_train` where the family can. `data.test` is for reporting."""

    @abc.abstractmethod
    def load(self, weights: dict[str, torch.Tensor], config: dict[str, Any], package: ModelPackage) -> Scorer:
        """The scorer of a package this family wrote (weights memory-mapped; `package` has the id maps, seen CSR
        and popularity). Raises ValueError when the weights do not match `config`."""


class ClosedFormFamily(Family):
    """A family that fits in one call on a set of rows (EASE, iALS, popularity): fit on the training rows, score
    the validation split, and with refit fit again on every training row."""

    @abc.abstractmethod
    def fit_rows(self, rows: Interactions, settings, context: FitContext) -> tuple[Scorer, ExportedModel]:
        """Fit on `rows`."""

    def fit(self, data: FitData, settings, context: FitContext) -> FitResult:
        from ncf.evaluate import sampled_metrics

        started = time.perf_counter()
        scorer, exported = self.fit_rows(data.train, settings, context)
        metrics: dict[str, Any] = {}
        if data.validation is not None:
            k = context.top_k
            hr, ndcg = sampled_metrics(scorer, data.validation, k)
            metrics.update({contracts.metric_name("hr", k, validation=True): hr,
                            contracts.metric_name("ndcg", k, validation=True): ndcg})
            context.log(f"[{self.name}] fit on {data.train.users.size:,} rows in {time.perf_counter() - started:.1f}s;"
                        f" validation hr@{k}={hr:.4f} ndcg@{k}={ndcg:.4f}")
            context.log_metrics({"val_hr": hr, "val_ndcg": ndcg}, 0)
            if context.refit:
                started = time.perf_counter()
                scorer, exported = self.fit_rows(data.all_train, settings, context)
                context.log(f"[{self.name}] refit on all {data.all_train.users.size:,} training rows in "
                            f"{time.perf_counter() - started:.1f}s")
        return FitResult(scorer, exported, metrics)


# ---- memory ---------------------------------------------------------------------------------------------------


def format_bytes(size: int) -> str:
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"


def available_memory(device: torch.device) -> int:
    """Bytes this process may use: the GPU's memory on cuda; else physical memory, capped by a cgroup limit."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


DEFAULT_MEMORY_SHARE = 0.8  # of `available_memory` when no budget is given


def memory_budget(budget_gb: float, device: torch.device) -> int:
    """`budget_gb` in bytes; 0: `DEFAULT_MEMORY_SHARE` of what the device has."""
    if budget_gb > 0:
        return int(budget_gb * (1 << 30))
    return int(DEFAULT_MEMORY_SHARE * available_memory(device))
