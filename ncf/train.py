"""The train step (`ncfctl train`, also under torchrun): fit a model family on a partition, evaluate it, publish its
model package (+ MLflow run). Also the NCF family's trainer (GMF / MLP / NeuMF; `ncf.families.ncf` is its seam).

    ncfctl train --partition-uri runs/data/dt=2026-01-01 --output-uri runs/models/run-1
    ncfctl train --family ease --ease-lambda 500 ...      # another family (ncf.families): ease, ials, popularity
    ncfctl train --preset seed ...                 # the seed system's hyperparameters and behaviour
    torchrun --nproc-per-node 2 -m ncf.train ...   # DistributedDataParallel (gloo on CPU, nccl on GPU; NCF only)

The step: load the partition, carve the one validation split (`ncf.splits`), fit the family (`--family`, its
settings), evaluate the exported model on the test rows (sampled protocol over every user, full ranking over a
fixed-seed sample of at most `--full-eval-users`), publish the package. The test rows decide nothing.

The NCF trainer: the fast path is the only path: the training set lives as tensors on the device, each epoch
draws its negatives exactly and vectorised (ncf/sampling.py), shuffles with one permutation and slices batches; no
Dataset/DataLoader. A batch is one step of `make_step`: on one CPU process the hand-written step of
ncf/cpu_step.py (lazy Adam on the embedding rows in the batch), elsewhere autograd with fused Adam (bf16 autocast
on GPUs). Per epoch it prints the seed's metric line `HR=0.xxxx; NDCG=0.xxxx; Loss=0.xxxx;` (test set, sampled
protocol, for the dashboards that scrape it) and checkpoints. With `patience > 0` epochs (and early stopping) are
chosen on the validation split, never on the test set. With `--refit true` that selection pass is followed by a
refit pass: every stage is retrained from scratch on all of train (validation rows back in) for exactly its
selected epoch count, and the refit model is exported. The held-out interaction is each user's most recent one,
the strongest signal for the test interaction, so training on it pays. With `--ensemble K` the exported model is
a seed ensemble: the refit pass (without refit: the whole training) runs K times with different seeds and the
package scores the mean of the K models' logits. Guards: a model whose estimated memory exceeds the budget is
refused before training, and a loss that is not finite or diverges stops the run; nothing is published then.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ncf import checkpoint, contracts, families, storage
from ncf.config import add_arguments, from_namespace, param
from ncf.cpu_step import CpuTrainStep
from ncf.errors import UserError, exit_on_user_error
from ncf.evaluate import sampled_metrics
from ncf.families.base import FitContext, FitResult, Runtime, format_bytes, memory_budget
from ncf.models import (
    MODEL_TYPES,
    NCF,
    ModelSpec,
    NCFEnsemble,
    build_model,
    ensemble_of,
    neumf_from_pretrained,
)
from ncf.ranking import all_cores, process_cores
from ncf.sampling import RECENCY_POWER, NegativeSampler, recency_weights
from ncf.scoring import ACTIVATION_BUDGET, ItemScorer
from ncf.selection import BLEND_MODES
from ncf.splits import FitData, Interactions

# The seed system's run, reproduced by `--preset seed`.
SEED_PRESET: dict[str, Any] = {
    "epochs": 10, "lr": 0.001, "batch_size": 256, "top_k": 10, "dropout": 0.3, "factor_num": 32, "num_layers": 3,
    "model": "NeuMF", "num_neg": 4, "weight_decay": 0.0, "patience": 0, "pretrain": False, "recency_weight": 0.0,
    "refit": False, "ensemble": 1, "candidates": "",
}
PRESETS = {"seed": SEED_PRESET}
# Model selection's default candidates (docs/training.md, "Model selection": measured on ML-100K to take no longer
# than NCF's defaults alone, NCF among them so every run trains it).
DEFAULT_CANDIDATES = "GMF,ease,ials"
LOSS_OF_A_COIN = math.log(2.0)  # binary cross-entropy of predicting 0.5 for every sample


def _ncf(default: Any, help: str, **extra: Any) -> Any:
    """A field of the NCF family's settings (`NCFSettings` has the same name)."""
    return param(default, help, family="ncf", **extra)


@dataclasses.dataclass
class TrainConfig:
    partition_uri: str = param(help="the dt=YYYY-MM-DD partition to train on (local path or s3://)")
    output_uri: str = param(help="where the model package is published (local path or s3://)")
    # The seed's hyperparameters, same names and meaning. Defaults: the recommended configuration (docs/training.md).
    epochs: int = _ncf(30, "maximum training epochs (per stage when pretraining)", pipeline=True)
    lr: float = _ncf(0.002, "Adam learning rate", pipeline=True)
    batch_size: int = _ncf(1024, "training samples per step (per process under torchrun)", pipeline=True)
    top_k: int = param(10, "K of HR@K / NDCG@K", pipeline=True)
    dropout: float = _ncf(0.3, "dropout before each MLP layer", pipeline=True)
    factor_num: int = _ncf(32, "predictive factors: GMF embedding size and the last MLP layer's width", pipeline=True)
    num_layers: int = _ncf(2, "MLP layers (each halves the width)", pipeline=True)
    model: str = _ncf("NeuMF", "model type", pipeline=True, choices=MODEL_TYPES)
    tracking_uri: str = param("", "MLflow tracking URI; empty: no MLflow logging", pipeline=True)
    experiment: str = param("ncf-train", "MLflow experiment name")
    num_neg: int = _ncf(8, "sampled negatives per training positive")
    weight_decay: float = _ncf(1e-6, "L2 weight decay (Adam)")
    recency_weight: float = _ncf(16.0, "weight each user's positives by recency: 1 + recency_weight * "
                                       "r**recency_power for the r-th fraction of the user's history (0 oldest, 1 "
                                       "latest), normalised to mean 1; 0: off (the paper's uniform weights)")
    recency_power: float = _ncf(RECENCY_POWER, "shape of the recency weights: 1 grows linearly with r; larger "
                                               "powers put the weight on each user's latest interactions")
    pretrain: bool = _ncf(True, "NeuMF: train GMF and MLP first and initialise NeuMF from them (alpha 0.5); "
                                "ignored for GMF / MLP")
    patience: int = _ncf(3, "early stopping: epochs without validation improvement; 0: no validation split, "
                            "train every epoch and keep the last")
    refit: bool = param(True, "after choosing on the validation split, retrain on all of train (validation rows "
                              "back in) and export that model; NCF retrains every stage for exactly its "
                              "validation-selected epoch count; ignored without a validation split (NCF: patience 0)")
    ensemble: int = _ncf(3, "models in the exported seed ensemble: the refit pass (without refit: the whole "
                            "training) runs once per member with its own seed, and the package scores the "
                            "mean of their logits; 1: a single model")
    preset: str = param("", "named hyperparameter set applied to fields left at their defaults", choices=("", *PRESETS))
    mlp_layers: str = _ncf("", "explicit MLP tower, e.g. 256,256,128,64 (input width first); overrides num_layers")
    seed: int = param(42, "random seed (full determinism on CPU)")
    device: str = param("auto", "auto (cuda when available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    threads: int = param(0, "CPU threads per process; 0: the family's choice (NCF: 1 for batches <= 2048, faster on "
                            "small batches, else cores; others: cores)")
    compile: bool = _ncf(False, "torch.compile the model (GPU)")
    resume: bool = param(False, "continue from the checkpoint of an interrupted run with the same settings")
    checkpoint_uri: str = param("", "checkpoint directory; default: <output_uri>.checkpoint")
    progress: str = param("auto", "progress bar: auto (when stderr is a terminal), on, off", choices=("auto", "on", "off"))
    # Model families (ncf.families) and their settings; defaults hand-picked (docs/training.md).
    family: str = param("ncf", "model family to train alone, without model selection: ncf (GMF / MLP / NeuMF; "
                               "with --candidates ''), ease (closed form), ials (implicit ALS), popularity (these "
                               "three turn the default candidates off)", choices=tuple(families.FAMILIES))
    # Model selection (ncf/selection.py): defaults measured on ML-100K (docs/training.md, "Model selection").
    candidates: str = param(DEFAULT_CANDIDATES, "models to choose from on the validation split, comma-separated: "
                            "families (ncf = --model, ease, ials, popularity) or NCF model types (GMF, MLP, NeuMF); "
                            "each is tuned, the best by validation NDCG@K is refit and exported; empty: train "
                            "--family only", pipeline=True)
    blend: str = param("auto", "model selection: also weigh the best candidates' scores together, the weights chosen "
                               "on the validation split, and export that blend when it beats every candidate alone "
                               "there (auto), whenever 2+ candidates fitted (on), or never (off)",
                       pipeline=True, choices=BLEND_MODES)
    tune_trials: int = param(16, "model selection: search trials per candidate family other than NCF (trial 0: the "
                                 "configured settings; a family without a search space gets 1), then its "
                                 "refinements of the best (EASE, iALS: 3 recency weights; none with 1)", pipeline=True)
    tune_trials_ncf: int = param(3, "model selection: tuning trials per NCF candidate (each one model's selection "
                                    "pass, no ensemble; the winner's is reused by the final fit)", pipeline=True)
    ease_lambda: float = param(500.0, "EASE: L2 regularisation lambda of the closed form", family="ease")
    ease_recency_weight: float = param(0.0, "EASE: weigh each user's history by recency when scoring, as "
                                            "--recency-weight weighs NCF's positives (recency power 4); 0: the "
                                            "binary history of the paper", family="ease")
    ials_factors: int = param(64, "iALS: latent factors", family="ials")
    ials_regularization: float = param(0.05, "iALS: L2 regularisation", family="ials")
    ials_alpha: float = param(10.0, "iALS: confidence of an observed interaction is 1 + alpha", family="ials")
    ials_iterations: int = param(15, "iALS: alternating least-squares sweeps", family="ials")
    ials_recency_weight: float = param(0.0, "iALS: confidence of an observed interaction is 1 + alpha * its recency "
                                            "weight, as --recency-weight weighs NCF's positives (recency power 4); "
                                            "0: 1 + alpha for every one", family="ials")
    # Evaluation and guards.
    full_eval_users: int = param(contracts.DEFAULT_FULL_EVAL_USERS,
                                 "full-ranking metrics over a fixed-seed sample of at most this many test users "
                                 "(every user when fewer; 0: every user); the sampled protocol uses every user")
    memory_budget_gb: float = param(0.0, "refuse a model whose estimated training memory exceeds this many GB; "
                                         "0: 80% of the memory this process may use (the GPU's on cuda)")
    max_loss: float = _ncf(10 * LOSS_OF_A_COIN, "stop when an epoch's training loss exceeds this (10x the loss of "
                                                "predicting 0.5 everywhere): the training diverged")


@dataclasses.dataclass
class TrainResult:
    model_uri: str
    metrics: dict[str, Any]
    mlflow_run_id: str = ""


def apply_preset(config: TrainConfig) -> TrainConfig:
    """Fill the preset's values into every field the user left at its default."""
    if not config.preset:
        return config
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    updates = {k: v for k, v in PRESETS[config.preset].items() if getattr(config, k) == defaults[k]}
    return dataclasses.replace(config, **updates)


def _validate(config: TrainConfig) -> None:
    if config.top_k <= 0:
        raise UserError(f"top_k: must be positive, got {config.top_k}")
    if config.full_eval_users < 0 or config.memory_budget_gb < 0:
        raise UserError("full_eval_users and memory_budget_gb must be >= 0")
    if config.threads < 0:
        raise UserError(f"threads: must be >= 0 (0: chosen from the cores and batch size), got {config.threads}")
    if config.blend not in BLEND_MODES:
        raise UserError(f"blend: {config.blend!r}, expected auto, on or off")
    if config.tune_trials < 1 or config.tune_trials_ncf < 1:
        raise UserError(f"tune_trials and tune_trials_ncf: must be >= 1 (1: the configured settings only), got "
                        f"{config.tune_trials}, {config.tune_trials_ncf}")


def hyperparameters(config: TrainConfig, core_only: bool = False) -> dict[str, Any]:
    """The settings that shape the model: the core's and the chosen family's (not the other families');
    `core_only`: the core's alone, without `family` (before model selection has chosen one)."""
    skip = {"partition_uri", "output_uri", "tracking_uri", "checkpoint_uri", "resume", "progress"}
    if core_only:
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in skip | {"family"} and "family" not in f.metadata}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in skip and f.metadata.get("family", config.family) == config.family}


@dataclasses.dataclass(frozen=True)
class NCFSettings:
    """The NCF family's settings: the `ncf.train.TrainConfig` fields of the same names."""

    model: str = "NeuMF"
    epochs: int = 30
    lr: float = 0.002
    batch_size: int = 1024
    dropout: float = 0.3
    factor_num: int = 32
    num_layers: int = 2
    num_neg: int = 8
    weight_decay: float = 1e-6
    recency_weight: float = 16.0
    recency_power: float = RECENCY_POWER
    pretrain: bool = True
    patience: int = 3
    ensemble: int = 3
    mlp_layers: str = ""
    compile: bool = False
    max_loss: float = 10 * LOSS_OF_A_COIN

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "factor_num", "num_layers", "num_neg", "ensemble"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name}: must be positive, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr: must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.patience < 0 or self.recency_weight < 0:
            raise UserError("weight_decay, patience and recency_weight must be >= 0")
        if not self.recency_power > 0:
            raise UserError(f"recency_power: must be positive, got {self.recency_power}")
        if not self.max_loss > 0:
            raise UserError(f"max_loss: must be positive, got {self.max_loss}")

    def spec(self, num_users: int, num_items: int) -> ModelSpec:
        return ModelSpec(self.model, num_users, num_items, self.factor_num, self.num_layers, self.dropout,
                         _mlp_layers(self.mlp_layers))


def _mlp_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise UserError(f"mlp_layers: expected comma-separated integers, got {text!r}") from exc


# ---- process setup ------------------------------------------------------------------------------------------

def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks up to 32 MB instead of mmap/munmap-ing them on every allocation.

    Each CPU step allocates fresh dense embedding gradients (MBs); by default glibc maps and unmaps them every
    step and the page faults cost as much as the step's arithmetic at batch 256. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _setup_runtime(config: TrainConfig, family, settings) -> Runtime:
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UserError("device: cuda requested but no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not family.distributed:
        raise UserError(f"family {family.name}: does not train under torchrun (WORLD_SIZE={world_size}); run it "
                        "as one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    runtime = Runtime(device, dist.get_rank() if dist.is_initialized() else 0, world_size)
    if device.type == "cpu":
        keep_freed_memory()
    _set_threads(config, family, settings, runtime)
    return runtime


def _set_threads(config: TrainConfig, family, settings, runtime: Runtime) -> None:
    """CPU: this process's torch threads for fitting `family` (--threads, else the family's choice)."""
    if runtime.device.type != "cpu":
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(runtime.world_size)))
    per_process = max(1, process_cores() // local_world)
    torch.set_num_threads(config.threads or family.default_threads(settings, per_process))


# ---- NCF: data ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Data:
    users: torch.Tensor  # training positives, on device
    items: torch.Tensor
    sampler: NegativeSampler  # negatives avoid exactly the training positives above
    weights: torch.Tensor | None  # per-positive loss weights (recency), None: uniform


def _prepare_data(rows: Interactions, settings: NCFSettings, device: torch.device) -> _Data:
    """The training rows on the device, with their negative sampler and recency weights."""
    users, items = rows.users, rows.items
    sampler = NegativeSampler(users, items, rows.num_users, rows.num_items, device)
    weights = None
    if settings.recency_weight > 0:
        w = recency_weights(users, items, rows.ts, rows.num_users, settings.recency_weight, settings.recency_power)
        weights = torch.from_numpy(w.astype(np.float32)).to(device)
    return _Data(torch.from_numpy(users.astype(np.int64)).to(device), torch.from_numpy(items.astype(np.int64)).to(device),
                 sampler, weights)


# ---- NCF: guards ----------------------------------------------------------------------------------------------

def memory_estimate(spec: ModelSpec, settings: NCFSettings, num_rows: int, device: torch.device) -> dict[str, int]:
    """Bytes an NCF fit needs at its peak, by purpose (float32 / int64 tensors; an estimate, not a measurement).

    parameters: every model alive at once (the ensemble's members, plus the pretrained GMF and MLP);
    optimizer: Adam's two moments plus the working copy or gradient of every parameter (3x the parameters);
    copies: the best epoch's state and a checkpoint being serialised (model and optimizer, twice);
    activations: a training batch's tower (forward, backward, dropout masks);
    training data: the positives (int64 users and items, float32 weights), each epoch's int32 permutation and
    negatives, and one gathered chunk of samples (EpochRunner);
    evaluation: the scorer's item tables and its score chunks.
    """
    uses_gmf, uses_mlp = spec.model_type in ("GMF", "NeuMF"), spec.model_type in ("MLP", "NeuMF")
    layers = spec.mlp_layers
    width = (spec.factor_num if uses_gmf else 0) + (layers[0] // 2 if uses_mlp else 0)
    tower = sum(a * b + b for a, b in zip(layers[:-1], layers[1:], strict=True)) if uses_mlp else 0
    predict = (spec.factor_num if uses_gmf else 0) + (layers[-1] if uses_mlp else 0) + 1
    params = (spec.num_users + spec.num_items) * width + tower + predict
    pretrained = settings.pretrain and spec.model_type == "NeuMF"
    models = settings.ensemble + (1 if pretrained else 0)  # GMF + MLP hold about one NeuMF's parameters
    samples = num_rows * (1 + settings.num_neg)
    hidden = (layers[1] if uses_mlp and len(layers) > 1 else 1) * settings.ensemble
    return {
        "parameters": 4 * models * params,
        "optimizer": 4 * 3 * params,
        "copies": 4 * (params + 2 * 4 * params),
        "activations": 4 * 4 * settings.batch_size * ((sum(layers) if uses_mlp else 0) + 2 * width),
        "training data": 20 * num_rows + 4 * samples + 4 * num_rows * settings.num_neg
                         + 48 * EpochRunner.CHUNK_SAMPLES,
        "evaluation": 4 * (spec.num_items * (hidden + settings.ensemble * width) + ACTIVATION_BUDGET
                           + (1 << 24)),
    }


def _check_loss(label: str, epoch: int, loss: float, lowest: float | None, settings: NCFSettings) -> None:
    """UserError when the epoch's training loss is not finite, above `max_loss`, or more than doubled from the
    stage's lowest (and above a coin's): the run stops and nothing is published."""
    fix = f"lower --lr (now {settings.lr}) or check the input data"
    if not math.isfinite(loss):
        raise UserError(f"[{label}] epoch {epoch}: training loss is {loss}; {fix}")
    if loss > settings.max_loss:
        raise UserError(f"[{label}] epoch {epoch}: training loss {loss:.4g} is above --max-loss {settings.max_loss:.4g}"
                        f" (predicting 0.5 everywhere scores {LOSS_OF_A_COIN:.4f}): the training diverged; {fix}")
    if lowest is not None and loss > max(2 * lowest, LOSS_OF_A_COIN):
        raise UserError(f"[{label}] epoch {epoch}: training loss {loss:.4f} more than doubled from the stage's lowest "
                        f"{lowest:.4f}: the training diverged; {fix}")


# ---- NCF: one training stage (one model type) -----------------------------------------------------------------

@dataclasses.dataclass
class _EpochRecord:
    epoch: int
    loss: float
    hr: float
    ndcg: float
    val_hr: float | None = None
    val_ndcg: float | None = None


def _after_epoch(stage: str, epoch: int, record: _EpochRecord | None) -> None:
    """Hook called after each epoch's checkpoint is written (tests simulate a killed run with it, the benchmark
    times epochs); `record` is None on ranks other than 0."""


def _stage_seed(stage: str, seed: int) -> int:
    return seed + 1000 * (1 + MODEL_TYPES.index(stage))


def _member_seed(seed: int, member: int) -> int:
    """Ensemble member `member`'s seed; member 0 trains exactly like a single model (`--ensemble 1`)."""
    return seed + 10_000 * member


def _member_label(stage: str, refit: bool, member: int) -> str:
    """A stage run's name in logs and its checkpoint file: `NeuMF`, `NeuMF-refit`, `NeuMF-refit-m2`."""
    return stage + ("-refit" if refit else "") + (f"-m{member}" if member else "")


def _init_model(spec: ModelSpec, model_type: str, seed: int) -> NCF:
    """A freshly initialised model; each stage seeds its own RNG so a resumed run rebuilds it identically."""
    torch.manual_seed(_stage_seed(model_type, seed))
    return build_model(dataclasses.replace(spec, model_type=model_type))


class AutogradStep:
    """One training step by autograd and fused `torch.optim.Adam`: GPUs (bf16 autocast), DDP and torch.compile."""

    kind = "autograd-adam"

    def __init__(self, forward, model: NCF, lr: float, weight_decay: float, device: torch.device):
        self.forward = forward
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else contextlib.nullcontext())

    def __call__(self, users, items, targets, weights=None) -> torch.Tensor:
        with self.autocast:
            logits = self.forward(users, items)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, weight=weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach() * targets.numel()

    def push(self) -> None:
        """The model's own parameters are trained: nothing to write back."""

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def make_step(model: NCF, lr: float, weight_decay: float, device: torch.device, distributed: bool = False,
              compile_model: bool = False) -> AutogradStep | CpuTrainStep:
    """The training step for where the model runs: the hand-written CPU step with lazy Adam (ncf/cpu_step.py,
    docs/training.md "Speed") on one CPU process; autograd and fused Adam elsewhere (GPUs, DDP, torch.compile)."""
    if device.type == "cpu" and not distributed and not compile_model:
        return CpuTrainStep(model, lr, weight_decay)
    forward: Any = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return AutogradStep(torch.compile(forward) if compile_model else forward, model, lr, weight_decay, device)


class EpochRunner:
    """One training epoch: exact negatives, one permutation, sliced batches (the trainer's only data path).

    `users` / `items` are the training positives on the device. An epoch's samples are the P positives followed by
    `num_neg` fresh negatives per positive (sample P + j is a negative of positive j // num_neg). One permutation
    orders them; batches are gathered from it a chunk at a time, so an epoch holds 4 bytes per sample (its int32
    permutation and negatives) instead of every sample's user, item, label and weight (GMF, 5M training rows,
    num_neg 4: peak RSS 2.59 -> 1.42 GB, the same batches). The loss is accumulated on the device, so a step never
    waits for the host; under DDP each rank takes an equal, disjoint shard of the permutation.
    """

    CHUNK_SAMPLES = 1 << 20  # gathered at once: large enough that the per-chunk ops cost nothing per sample

    def __init__(self, step: AutogradStep | CpuTrainStep, users: torch.Tensor, items: torch.Tensor,
                 sampler: NegativeSampler, num_neg: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None):
        self.step = step
        self.device = users.device
        self.users, self.items, self.weights = users, items, weights
        self.sampler, self.num_neg, self.batch_size = sampler, num_neg, batch_size
        self.num_positives = users.numel()
        self.num_samples = self.num_positives * (1 + num_neg)
        # int32 and int64 permutations of one generator state are equal (CPU), so the dtype only saves memory.
        self.index_dtype = torch.int32 if self.num_samples < 2 ** 31 else torch.int64
        self.samples_per_rank = self.num_samples // world_size
        self.offset = rank * self.samples_per_rank
        self.steps = math.ceil(self.samples_per_rank / batch_size)
        # Whole batches per chunk: the batches are the same slices of the permutation as without chunks.
        self.chunk = max(1, self.CHUNK_SAMPLES // batch_size) * batch_size

    def _negatives(self, generator: torch.Generator) -> torch.Tensor:
        """`num_neg` negatives per positive, in positive order, sampled a chunk of positives at a time (on CPU the
        same draws as one call over every positive)."""
        negatives = torch.empty(self.num_positives * self.num_neg, dtype=self.index_dtype, device=self.device)
        per_chunk = max(1, self.CHUNK_SAMPLES // self.num_neg)
        for start in range(0, self.num_positives, per_chunk):
            owners = self.users[start:start + per_chunk].repeat_interleave(self.num_neg)
            negatives[start * self.num_neg:start * self.num_neg + owners.numel()] = (
                self.sampler.sample(owners, 1, generator).view(-1))
        return negatives

    def _gather(self, samples: torch.Tensor, negatives: torch.Tensor):
        """The users, items, targets and weights of `samples` (indices into the epoch's samples)."""
        positive = samples < self.num_positives
        negative_at = (samples - self.num_positives).clamp_min_(0)
        positive_at = torch.where(positive, samples, 0)
        users = self.users[torch.where(positive, samples, negative_at.div(self.num_neg, rounding_mode="floor"))]
        items = torch.where(positive, self.items[positive_at], negatives[negative_at])
        weights = None if self.weights is None else torch.where(positive, self.weights[positive_at], 1.0)
        return users, items, positive.to(torch.float32), weights

    def run(self, generator: torch.Generator, on_step=None) -> torch.Tensor:
        """Train one epoch; returns the summed loss (over this rank's samples) as a device tensor."""
        negatives = self._negatives(generator)
        perm = torch.randperm(self.num_samples, device=self.device, generator=generator, dtype=self.index_dtype)
        shard = perm[self.offset:self.offset + self.samples_per_rank]
        loss_sum = torch.zeros((), device=self.device)
        for chunk_start in range(0, self.samples_per_rank, self.chunk):
            users, items, targets, weights = self._gather(
                shard[chunk_start:chunk_start + self.chunk].long(), negatives)
            for start in range(0, users.numel(), self.batch_size):
                batch = slice(start, start + self.batch_size)
                loss_sum += self.step(users[batch], items[batch], targets[batch],
                                      None if weights is None else weights[batch])
                if on_step is not None:
                    on_step()
        self.step.push()
        return loss_sum


def _train_stage(stage: str, model: NCF, data: _Data, fit: FitData, settings: NCFSettings, ctx: FitContext,
                 epochs: int, refit: bool, member: int = 0, final: bool = False
                 ) -> tuple[NCF, list[_EpochRecord], dict[str, Any]]:
    """Train `model` for up to `epochs`; returns the selected model, its history and summary numbers.

    `refit`: this is the refit pass's run of the stage: same seeds as the selection pass, its own checkpoint
    file, progress label and MLflow keys. `member`: the ensemble member it trains (its seeds, label and keys).
    `final`: this stage trains the exported model (its epoch lines go to stdout, for the seed's dashboards).
    """
    label = _member_label(stage, refit, member)
    runtime = ctx.runtime
    device = runtime.device
    model.to(device)
    seed = _stage_seed(stage, _member_seed(ctx.seed, member))
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed + 1)  # dropout's stream (restored below when resuming)
    step = make_step(model, settings.lr, settings.weight_decay, device, runtime.distributed, settings.compile)
    validation = None if refit else fit.validation

    ckpt_uri = storage.join(ctx.checkpoint_dir, f"{label}.pt")
    history: list[_EpochRecord] = []
    best = {"score": -1.0, "epoch": 0, "state": None, "bad_epochs": 0}
    start_epoch = 0
    state = checkpoint.load(ckpt_uri, ctx.fingerprint) if ctx.resume and ctx.checkpoint_dir else None
    if state is not None:
        if state.get("step_kind") != step.kind:
            raise UserError(f"{ckpt_uri}: checkpoint was written by the {state.get('step_kind')} training step, this "
                            f"run uses the {step.kind} step (another device or process count); resume where it "
                            "started, or drop --resume")
        model.load_state_dict(state["model"])
        step.load_state_dict(state["optimizer"])
        checkpoint.restore_rng(state["rng"], generator)
        history = [_EpochRecord(**r) for r in state["history"]]
        best = state["best"]
        start_epoch = state["epoch"]
        ctx.log(f"[{label}] resuming after epoch {start_epoch} from {ckpt_uri}")
    lowest_loss = min((r.loss for r in history), default=None)

    runner = EpochRunner(step, data.users, data.items, data.sampler, settings.num_neg,
                         settings.batch_size, runtime.rank, runtime.world_size, data.weights)
    per_rank = runner.samples_per_rank
    started = time.perf_counter()
    samples_done, train_seconds = 0, 0.0
    for epoch in range(start_epoch, epochs):
        if state is not None and state.get("stopped"):
            break
        model.train()
        epoch_started = time.perf_counter()
        with ctx.progress_bar(runner.steps, f"{label} epoch {epoch + 1}/{epochs}") as bar:
            loss_sum = runner.run(generator, bar.update)
        samples_done += per_rank * runtime.world_size
        if runtime.distributed:
            dist.all_reduce(loss_sum)
        epoch_loss = float(loss_sum) / (per_rank * runtime.world_size)  # the epoch's one host sync
        train_seconds += time.perf_counter() - epoch_started
        _check_loss(label, epoch + 1, epoch_loss, lowest_loss, settings)
        lowest_loss = epoch_loss if lowest_loss is None else min(lowest_loss, epoch_loss)

        stop = torch.zeros(1, device=device)
        if runtime.is_main:
            model.eval()
            scorer = ItemScorer(model)
            # Reporting only; a tuning trial (ncf.selection) has no test rows and reports none.
            hr, ndcg = sampled_metrics(scorer, fit.test, ctx.top_k) if fit.test is not None else (math.nan, math.nan)
            record = _EpochRecord(epoch + 1, epoch_loss, hr, ndcg)
            if validation is not None:
                record.val_hr, record.val_ndcg = sampled_metrics(scorer, validation, ctx.top_k)
                if record.val_ndcg > best["score"]:
                    best.update(score=record.val_ndcg, epoch=epoch + 1, bad_epochs=0,
                                state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
                else:
                    best["bad_epochs"] += 1
                stop[0] = float(best["bad_epochs"] >= settings.patience)
            history.append(record)
            if fit.test is not None:
                print(contracts.metric_line(hr, ndcg, epoch_loss), file=sys.stdout if final else sys.stderr,
                      flush=True)
            shown = (f" validation hr@{ctx.top_k}={record.val_hr:.4f} ndcg@{ctx.top_k}={record.val_ndcg:.4f}"
                     if record.val_hr is not None else "")
            ctx.log(f"[{label}] epoch {epoch + 1}/{epochs} {time.perf_counter() - started:.1f}s{shown}")
            # The refit pass and each ensemble member repeat the same epoch numbers (steps): each has its own keys.
            prefix = (("refit_" if refit else "") + (f"m{member}_" if member else "")
                      + ("" if stage == settings.model else f"{stage.lower()}_"))
            values = {f"{prefix}loss": record.loss}
            if fit.test is not None:
                values.update({f"{prefix}hr": record.hr, f"{prefix}ndcg": record.ndcg})
            if record.val_hr is not None:
                values.update({f"{prefix}val_hr": record.val_hr, f"{prefix}val_ndcg": record.val_ndcg})
            ctx.log_metrics(values, record.epoch)
        if runtime.distributed:
            dist.broadcast(stop, 0)
        stopped = bool(stop.item())
        if runtime.is_main and ctx.checkpoint_dir:
            checkpoint.save(ckpt_uri, {
                "fingerprint": ctx.fingerprint, "config": dataclasses.asdict(settings), "stage": label,
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": step.state_dict(),
                "step_kind": step.kind, "rng": checkpoint.rng_state(generator),
                "history": [dataclasses.asdict(r) for r in history], "best": best, "stopped": stopped})
        _after_epoch(label, epoch + 1, history[-1] if runtime.is_main else None)
        if stopped:
            ctx.log(f"[{label}] early stop: no validation gain for {settings.patience} epochs; best epoch "
                    f"{best['epoch']}")
            break
    if runtime.distributed:
        # Rank 0 holds the selected weights; every rank leaves the stage with the same model.
        dist.barrier()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    if runtime.distributed:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)
    summary = {"best_epoch": best["epoch"] if best["state"] is not None else (history[-1].epoch if history else 0),
               "epochs_trained": history[-1].epoch if history else start_epoch,
               "samples_per_second": samples_done / train_seconds if train_seconds > 0 else 0.0}
    return model, history, summary


def _train_pass(spec: ModelSpec, data: _Data, fit: FitData, settings: NCFSettings, ctx: FitContext,
                refit_epochs: dict[str, int] | None, member: int = 0, final: bool = False
                ) -> tuple[NCF, list[_EpochRecord], dict[str, dict[str, Any]]]:
    """Train every stage once: GMF and MLP first when NeuMF is pretrained from them, then settings.model.

    Selection pass (`refit_epochs` None): each stage trains up to settings.epochs and keeps its best validation
    epoch. Refit pass: each stage trains exactly `refit_epochs[stage]` epochs. `member`: the ensemble member
    (its seeds); `final`: this pass trains the exported model's last member. Returns the final model, its history
    and each stage's summary.
    """
    pretrain = settings.pretrain and settings.model == "NeuMF"
    models: dict[str, NCF] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for stage in ("GMF", "MLP", "NeuMF") if pretrain else (settings.model,):
        model = (neumf_from_pretrained(models["GMF"].cpu(), models["MLP"].cpu(), dropout=settings.dropout)
                 if pretrain and stage == "NeuMF" else _init_model(spec, stage, _member_seed(ctx.seed, member)))
        epochs = settings.epochs if refit_epochs is None else refit_epochs[stage]
        models[stage], history, summaries[stage] = _train_stage(
            stage, model, data, fit, settings, ctx, epochs, refit=refit_epochs is not None, member=member,
            final=final and stage == settings.model)
    return models[settings.model], history, summaries


def fit_ncf(fit: FitData, settings: NCFSettings, ctx: FitContext
            ) -> tuple[NCF | NCFEnsemble, dict[str, Any], float, bool, Any]:
    """The NCF family's fit: a selection pass (epochs and early stopping on the validation split), then with
    refit a refit pass per ensemble member, else further whole runs for the other members.

    Returns the exported model (on the device), its metrics for metrics.json, its training loss, whether the
    seed's metric line should be printed once more for it (its last epoch line is not the exported model's), and
    the selection pass (model, history, summaries), which a later fit of the same settings can reuse
    (`FitContext.reuse`: model selection's trials, ncf.selection). With `ctx.report` off no epoch line goes to
    stdout (a tuning trial: the dashboards see only the exported model's).
    """
    runtime = ctx.runtime
    spec = settings.spec(fit.train.num_users, fit.train.num_items)
    widths = list(spec.mlp_layers) if len(spec.mlp_layers) <= 6 else [*spec.mlp_layers[:3], "...", spec.mlp_layers[-1]]
    layers = "" if spec.model_type == "GMF" else f", mlp_layers [{', '.join(map(str, widths))}]"
    ctx.require_memory(memory_estimate(spec, settings, fit.all_train.users.size, runtime.device),
                       f"model: {spec.model_type} x{settings.ensemble} for {spec.num_users:,} users x "
                       f"{spec.num_items:,} items, factor_num {spec.factor_num}{layers}",
                       "use a smaller --factor-num / --num-layers / --mlp-layers / --ensemble / --batch-size")
    refits = ctx.refit and fit.validation is not None
    last_member = settings.ensemble - 1
    if ctx.reuse is not None:
        # A tuning trial (ncf.selection) ran exactly this selection pass: the same settings but the ensemble size,
        # which the selection pass does not depend on (it is member 0's, with member 0's seeds).
        members = [ctx.reuse]
    else:
        data = _prepare_data(fit.train, settings, runtime.device)
        members = [_train_pass(spec, data, fit, settings, ctx, refit_epochs=None,
                               final=ctx.report and not refits and last_member == 0)]
    selection_pass = members[0]
    _, history, summaries = members[0]
    # The selection pass's chosen epoch; its validation metrics are reported with or without a refit.
    validation = next((r for r in history if r.epoch == summaries[settings.model]["best_epoch"]), None)
    refit_epochs: dict[str, int] = {}
    if refits:
        refit_epochs = {stage: s["best_epoch"] for stage, s in summaries.items()}
        if runtime.distributed:
            # Only rank 0 evaluates, so only it knows the selected epochs.
            counts = torch.tensor(list(refit_epochs.values()), device=runtime.device)
            dist.broadcast(counts, 0)
            refit_epochs = dict(zip(refit_epochs, counts.tolist(), strict=True))
        data = _prepare_data(fit.all_train, settings, runtime.device)
        members = []  # the refit members replace the selection pass's model
    elif len(members) < settings.ensemble and ctx.reuse is not None:
        data = _prepare_data(fit.train, settings, runtime.device)
    # With refit: every member is a refit pass of the selected epochs. Without: the selection pass's model is
    # member 0 and each further member is a whole training run of its own seed.
    for member in range(len(members), settings.ensemble):
        members.append(_train_pass(spec, data, fit, settings, ctx, refit_epochs or None, member,
                                   final=ctx.report and member == last_member))
    model = ensemble_of([m[0] for m in members])
    _, history, summaries = members[-1]
    summary = summaries[settings.model]
    metrics: dict[str, Any] = {}
    loss = float("nan")
    report_line = False
    if runtime.is_main:
        selected = next((r for r in history if r.epoch == summary["best_epoch"]), history[-1] if history else None)
        loss = selected.loss if selected else float("nan")
        metrics = {"loss": loss, "epochs": summary["epochs_trained"], "best_epoch": summary["best_epoch"],
                   "samples_per_second": round(summary["samples_per_second"], 1), "model_type": settings.model}
        if validation is not None and validation.val_hr is not None:
            metrics.update({contracts.metric_name("hr", ctx.top_k, validation=True): validation.val_hr,
                            contracts.metric_name("ndcg", ctx.top_k, validation=True): validation.val_ndcg})
        if refit_epochs:
            metrics["refit_epochs"] = refit_epochs
        # The exported model's last epoch line is not its own (an ensemble, an earlier selected epoch), or was not
        # printed on stdout (a selection pass reused from a tuning trial): print one for it after the evaluation.
        report_line = (settings.ensemble > 1 or bool(history and selected is not history[-1])
                       or (ctx.reuse is not None and not refits))
    return model, metrics, loss, report_line, selection_pass


# ---- MLflow ---------------------------------------------------------------------------------------------------

class _Logger:
    """MLflow logging on the main process when a tracking URI is configured; a no-op otherwise."""

    def __init__(self, config: TrainConfig, runtime: Runtime):
        self.active = bool(config.tracking_uri) and runtime.is_main
        self.run_id = ""
        if not self.active:
            return
        import mlflow

        from ncf.registry import active_store, ensure_experiment

        self.mlflow = mlflow
        # Scoped, so the store does not leak into MLFLOW_TRACKING_URI for the rest of the process.
        self._store = contextlib.ExitStack()
        try:
            self._store.enter_context(active_store(config.tracking_uri))
            # Not mlflow.set_experiment(name): it creates the experiment with artifacts in ./mlruns of whatever
            # directory the step runs in; ensure_experiment keeps a sqlite store's artifacts next to its database.
            mlflow.set_experiment(experiment_id=ensure_experiment(config.tracking_uri, config.experiment))
            run = mlflow.start_run(run_name=storage.join(config.output_uri).rstrip("/").rsplit("/", 1)[-1])
        except Exception as exc:  # MLflow raises many types for unreachable / misconfigured stores
            self._store.close()
            raise UserError(f"tracking_uri {config.tracking_uri}: cannot start an MLflow run ({exc})") from exc
        self.run_id = run.info.run_id
        # With model selection the family and its settings are logged once chosen (`selected`).
        mlflow.log_params({"partition_uri": config.partition_uri, "output_uri": config.output_uri,
                           **hyperparameters(config, core_only=bool(config.candidates))})
        self._trial_run = None

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        if self.active:
            self.mlflow.log_metrics(values, step=step)

    # Model selection's trials (ncf.selection.Tracker): one child run each, nested under this run.
    @contextlib.contextmanager
    def trial(self, candidate: str, family: str, number: int, params: dict[str, Any]):
        if not self.active:
            yield lambda values, step: None
            return
        mlflow = self.mlflow
        with mlflow.start_run(run_name=f"{candidate}-trial-{number}", nested=True,
                              tags={"candidate": candidate, "family": family, "trial": str(number)}) as child:
            self._trial_run = child.info.run_id
            mlflow.log_params({"candidate": candidate, "family": family, "trial": number,
                               **{name: str(value) for name, value in params.items()}})

            def log(values: dict[str, float], step: int) -> None:
                mlflow.log_metrics(values, step=step)
                objective = [v for k, v in values.items() if k.startswith("val_ndcg_at_")]
                if objective:  # Optuna's MLflow convention: the objective as `value` (the gate report reads it)
                    mlflow.log_metric("value", objective[0], step=0)

            try:
                yield log
            finally:
                self._trial_run = None

    def failed(self, message: str) -> None:
        if self.active and self._trial_run:
            self.mlflow.set_tag("failed", message[:5000])

    def selected(self, config: TrainConfig, summary: dict[str, Any]) -> None:
        """After model selection: the chosen family's settings as params, the candidates' summary as an artifact."""
        if not self.active:
            return
        self.mlflow.log_params({k: v for k, v in hyperparameters(config).items()
                                if k not in hyperparameters(config, core_only=True)})
        self.mlflow.set_tag("chosen_candidate", summary["chosen"])
        self.mlflow.log_dict(summary, "candidates.json")

    def finish(self, metrics: dict[str, Any], package_dir: Path | None, model_uri: str) -> None:
        if not self.active:
            return
        self.mlflow.log_metrics({contracts.mlflow_metric_key(k): float(v) for k, v in metrics.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)})
        self.mlflow.set_tag("model_uri", model_uri)
        if package_dir is not None:
            self.mlflow.log_artifacts(str(package_dir), "package")

    def close(self, failed: bool) -> None:
        if self.active:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self._store.close()


# ---- the step -------------------------------------------------------------------------------------------------

def _fingerprint(config: TrainConfig, partition, world_size: int) -> str:
    ignore = {"threads", "device", "experiment", "full_eval_users", "memory_budget_gb"}
    values = {k: v for k, v in hyperparameters(config).items() if k not in ignore}
    values.update(partition_uri=partition.uri, num_train=int(partition.train_users.size),
                  num_users=partition.num_users, num_items=partition.num_items, world_size=world_size)
    return checkpoint.fingerprint(values)


def _selection_errors(config: TrainConfig, candidates) -> None:
    """UserError for settings that model selection cannot work with."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("candidates: model selection runs in one process, not under torchrun; pass --candidates '' "
                        "to train --family (ncf) with DistributedDataParallel")
    if config.patience == 0 and any(c.family == "ncf" for c in candidates):
        raise UserError(f"patience: 0 leaves no validation split, but candidates {config.candidates!r} include NCF, "
                        "which is chosen on it; set --patience > 0, or --candidates '' to train without one")


def chosen_config(config: TrainConfig, chosen) -> TrainConfig:
    """The config of the model selection chose: its family and the winning trial's settings."""
    settings = chosen.settings
    return dataclasses.replace(config, family=chosen.candidate.family,
                               **{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)})


def _fit_blend(picked, data: FitData, config: TrainConfig, context: FitContext, runtime: Runtime, partition
               ) -> FitResult:
    """The blend model selection chose: each member fitted as it would be alone (refit where its family does; NCF
    continues from its winning trial), then divided by its score scale on the blend's validation rows."""
    from ncf.families.blend import Member, blend
    from ncf.selection import score_scale, validation_scores

    choice, members = picked.blend, []
    for result, weight in zip(choice.members, choice.weights, strict=True):
        member_config = chosen_config(config, result)
        family = families.get(result.candidate.family)
        _set_threads(member_config, family, result.settings, runtime)
        context.log(f"[blend] fitting {result.candidate.name} (weight {weight:.1f})")
        member_context = dataclasses.replace(
            context, reuse=result.state, report=False,
            fingerprint=_fingerprint(member_config, partition, runtime.world_size),
            checkpoint_dir=f"{context.checkpoint_dir.rstrip('/')}/{result.candidate.name}")
        result.state = None
        fitted = family.fit(data, result.settings, member_context)
        scale = score_scale(validation_scores(fitted.scorer, data.validation, choice.rows))
        members.append(Member(result.candidate.name, fitted, weight, scale))
    k = context.top_k
    return blend(members, {contracts.metric_name("ndcg", k, validation=True): choice.val_ndcg,
                           contracts.metric_name("hr", k, validation=True): choice.val_hr})


def run(config: TrainConfig) -> TrainResult:
    from ncf import selection
    from ncf.data import load_partition
    from ncf.evaluate import evaluate
    from ncf.package import package_tables, write_package
    from ncf.splits import fit_data

    config = apply_preset(config)
    _validate(config)
    if config.family != "ncf" and config.candidates:
        if config.candidates != DEFAULT_CANDIDATES:
            raise UserError(f"family {config.family!r} and candidates {config.candidates!r}: choose one (a family "
                            "is trained alone; candidates are chosen among on the validation split)")
        config = dataclasses.replace(config, candidates="")  # another family asked for by name: train it alone
    candidates = selection.parse_candidates(config.candidates, config.model) if config.candidates else []
    if candidates:
        _selection_errors(config, candidates)
    family = families.get(candidates[0].family if candidates else config.family)
    settings = candidates[0].settings(config) if candidates else family.settings(config)
    runtime = _setup_runtime(config, family, settings)
    partition = load_partition(config.partition_uri)
    data = fit_data(partition, validation=bool(candidates) or family.uses_validation(settings), seed=config.seed)
    logger = _Logger(config, runtime)
    context = FitContext(
        runtime=runtime, seed=config.seed, top_k=config.top_k, refit=config.refit,
        memory_budget=memory_budget(config.memory_budget_gb, runtime.device), progress=config.progress,
        resume=config.resume, checkpoint_dir=config.checkpoint_uri or contracts.checkpoint_uri(config.output_uri),
        fingerprint="", log_metrics=logger.log_metrics)
    failed = True
    try:
        started = time.perf_counter()
        summary: dict[str, Any] | None = None
        selection_seconds = 0.0
        fitted: FitResult | None = None  # set here by a blend, else fitted below
        if candidates:
            picked = selection.select(
                data, candidates, config, context, {"ncf": config.tune_trials_ncf, "*": config.tune_trials},
                tracker=logger, before_candidate=lambda fam, s: _set_threads(config, fam, s, runtime),
                blend=config.blend)
            selection_seconds = time.perf_counter() - started
            summary = picked.summary()
            if picked.blended:
                fitted = _fit_blend(picked, data, config, context, runtime, partition)
                config = dataclasses.replace(config, family="blend")
                family = families.get("blend")
            else:
                config = chosen_config(config, picked.chosen)
                family, settings = families.get(config.family), picked.chosen.settings
                _set_threads(config, family, settings, runtime)
                context.reuse = picked.chosen.state
                picked.chosen.state = None
            logger.selected(config, summary)
        if fitted is None:
            context.fingerprint = _fingerprint(config, partition, runtime.world_size)
            fitted = family.fit(data, settings, context)
            context.reuse = None
        train_seconds = time.perf_counter() - started
        model_uri = storage.join(config.output_uri)
        metrics: dict[str, Any] = {}
        if runtime.is_main:
            k = config.top_k
            with all_cores():
                result = evaluate(fitted.scorer, partition, k, full_eval_users=config.full_eval_users)
            metrics = {**result.metrics(), **fitted.metrics, "family": family.name,
                       "train_seconds": round(train_seconds, 3)}
            extra = {"partition_uri": partition.uri, "partition_fingerprint": partition.stats.get("fingerprint", ""),
                     "mlflow_run_id": logger.run_id, "run_date": partition.stats.get("run_date", "")}
            if summary is not None:
                metrics.update(selection_seconds=round(selection_seconds, 3), candidates=summary)
                extra["candidates"] = summary
            if fitted.report_line:
                print(contracts.metric_line(result.hr, result.ndcg, fitted.loss), flush=True)
            with storage.staged_output(model_uri) as tmp:
                write_package(tmp, fitted.exported, metrics=metrics, hyperparameters=hyperparameters(config),
                              extra=extra, **package_tables(partition))
                logger.finish(metrics, tmp, model_uri)
            full_hr, full_ndcg = (contracts.metric_name(kind, k, full=True) for kind in ("hr", "ndcg"))
            context.log(f"model package: {model_uri}  full-ranking hr@{k}={metrics[full_hr]:.4f} "
                        f"(+/- {metrics[contracts.ci_name(full_hr)]:.4f}) ndcg@{k}={metrics[full_ndcg]:.4f} "
                        f"(+/- {metrics[contracts.ci_name(full_ndcg)]:.4f}) over {result.full_users.size:,} of "
                        f"{result.users.size:,} test users; memory budget {format_bytes(context.memory_budget)}")
        if runtime.distributed:
            dist.barrier()
        failed = False
        return TrainResult(model_uri, metrics, logger.run_id)
    finally:
        logger.close(failed)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ncfctl train", description=__doc__.split("\n\n")[0])
    add_arguments(parser, TrainConfig)
    config = from_namespace(TrainConfig, parser.parse_args(argv))
    try:
        run(config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
