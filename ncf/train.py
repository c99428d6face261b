"""Train GMF / MLP / NeuMF on a partition and export the model package (`ncfctl train`, also under torchrun).

    ncfctl train --partition-uri runs/data/dt=2026-01-01 --output-uri runs/models/run-1
    ncfctl train --preset seed ...                 # the seed system's hyperparameters and behaviour
    torchrun --nproc-per-node 2 -m ncf.train ...   # DistributedDataParallel (gloo on CPU, nccl on GPU)

The fast path is the only path: the training set lives as tensors on the device, each epoch draws its negatives
exactly and vectorised (ncf/sampling.py), shuffles with one permutation and slices batches; no Dataset/DataLoader.
A batch is one step of `make_step`: on one CPU process the hand-written step of ncf/cpu_step.py (lazy Adam on the
embedding rows in the batch), elsewhere autograd with fused Adam (bf16 autocast on GPUs).
Per epoch it prints the seed's metric line `HR=0.xxxx; NDCG=0.xxxx; Loss=0.xxxx;` (test set, sampled protocol,
for the dashboards that scrape it) and checkpoints. With `patience > 0` the latest training interaction of each
user is held out as a validation split; epochs (and early stopping) are chosen on it, never on the test set.
With `--refit true` that selection pass is followed by a refit pass: every stage is retrained from scratch on
all of train (validation rows back in) for exactly its selected epoch count, and the refit model is exported.
The held-out interaction is each user's most recent one, the strongest signal for the test interaction, so
training on it pays. With `--ensemble K` the exported model is a seed ensemble: the refit pass (without refit:
the whole training) runs K times with different seeds and the package scores the mean of the K models' logits.
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

from ncf import checkpoint, storage
from ncf.config import add_arguments, from_namespace, param
from ncf.cpu_step import CpuTrainStep
from ncf.errors import UserError, exit_on_user_error
from ncf.evaluate import hit_ndcg, sampled_ranks
from ncf.models import MODEL_TYPES, NCF, ModelSpec, build_model, ensemble_of, neumf_from_pretrained
from ncf.sampling import NegativeSampler, history_order, leave_last_out
from ncf.scoring import ItemScorer

# The seed system's run, reproduced by `--preset seed`.
SEED_PRESET: dict[str, Any] = {
    "epochs": 10, "lr": 0.001, "batch_size": 256, "top_k": 10, "dropout": 0.3, "factor_num": 32, "num_layers": 3,
    "model": "NeuMF", "num_neg": 4, "weight_decay": 0.0, "patience": 0, "pretrain": False, "recency_weight": 0.0,
    "refit": False, "ensemble": 1,
}
PRESETS = {"seed": SEED_PRESET}


@dataclasses.dataclass
class TrainConfig:
    partition_uri: str = param(help="the dt=YYYY-MM-DD partition to train on (local path or s3://)")
    output_uri: str = param(help="where the model package is published (local path or s3://)")
    # The seed's hyperparameters, same names and meaning. Defaults: the recommended configuration (docs/training.md).
    epochs: int = param(30, "maximum training epochs (per stage when pretraining)", pipeline=True)
    lr: float = param(0.002, "Adam learning rate", pipeline=True)
    batch_size: int = param(1024, "training samples per step (per process under torchrun)", pipeline=True)
    top_k: int = param(10, "K of HR@K / NDCG@K", pipeline=True)
    dropout: float = param(0.3, "dropout before each MLP layer", pipeline=True)
    factor_num: int = param(32, "predictive factors: GMF embedding size and the last MLP layer's width", pipeline=True)
    num_layers: int = param(2, "MLP layers (each halves the width)", pipeline=True)
    model: str = param("NeuMF", "model type", pipeline=True, choices=MODEL_TYPES)
    tracking_uri: str = param("", "MLflow tracking URI; empty: no MLflow logging", pipeline=True)
    experiment: str = param("ncf-train", "MLflow experiment name")
    num_neg: int = param(8, "sampled negatives per training positive")
    weight_decay: float = param(1e-6, "L2 weight decay (Adam)")
    recency_weight: float = param(16.0, "weight each user's positives by recency: 1 + recency_weight * r**recency_power "
                                       "for the r-th fraction of the user's history (0 oldest, 1 latest), normalised "
                                       "to mean 1; 0: off (the paper's uniform weights)")
    recency_power: float = param(4.0, "shape of the recency weights: 1 grows linearly with r; larger powers put the "
                                      "weight on each user's latest interactions")
    pretrain: bool = param(True, "NeuMF: train GMF and MLP first and initialise NeuMF from them (alpha 0.5); "
                                 "ignored for GMF / MLP")
    patience: int = param(3, "early stopping: epochs without validation improvement; 0: no validation split, "
                             "train every epoch and keep the last")
    refit: bool = param(True, "retrain every stage from scratch on all of train (validation rows back in) "
                               "for exactly its validation-selected epoch count and export that model; "
                               "ignored with patience 0 (no validation split)")
    ensemble: int = param(3, "models in the exported seed ensemble: the refit pass (without refit: the whole "
                                 "training) runs once per member with its own seed, and the package scores the "
                                 "mean of their logits; 1: a single model")
    preset: str = param("", "named hyperparameter set applied to fields left at their defaults", choices=("", *PRESETS))
    mlp_layers: str = param("", "explicit MLP tower, e.g. 256,256,128,64 (input width first); overrides num_layers")
    seed: int = param(42, "random seed (full determinism on CPU)")
    device: str = param("auto", "auto (cuda when available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    threads: int = param(0, "CPU threads per process; 0: 1 for batches <= 2048 (faster on small batches), else cores")
    compile: bool = param(False, "torch.compile the model (GPU)")
    resume: bool = param(False, "continue from the checkpoint of an interrupted run with the same settings")
    checkpoint_uri: str = param("", "checkpoint directory; default: <output_uri>.checkpoint")
    progress: str = param("auto", "progress bar: auto (when stderr is a terminal), on, off", choices=("auto", "on", "off"))


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
    for name in ("epochs", "batch_size", "top_k", "factor_num", "num_layers", "num_neg", "ensemble"):
        if getattr(config, name) <= 0:
            raise UserError(f"{name}: must be positive, got {getattr(config, name)}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise UserError(f"lr: must be a positive number, got {config.lr}")
    if config.weight_decay < 0 or config.patience < 0 or config.recency_weight < 0:
        raise UserError("weight_decay, patience and recency_weight must be >= 0")
    if not config.recency_power > 0:
        raise UserError(f"recency_power: must be positive, got {config.recency_power}")
    if config.threads < 0:
        raise UserError(f"threads: must be >= 0 (0: chosen from the cores and batch size), got {config.threads}")


def _mlp_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise UserError(f"mlp_layers: expected comma-separated integers, got {text!r}") from exc


# ---- process setup ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


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


def _setup_runtime(config: TrainConfig) -> _Runtime:
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UserError("device: cuda requested but no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    if device.type == "cpu":
        keep_freed_memory()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        per_process = max(1, cores // local_world)
        # Small batches are dominated by per-op overhead, where extra threads only add synchronisation (and
        # on shared cores, oversubscription): measured 1 thread fastest up to batch 2048 (docs/training.md).
        torch.set_num_threads(config.threads or (1 if config.batch_size <= 2048 else per_process))
    return _Runtime(device, dist.get_rank() if dist.is_initialized() else 0, world_size)


# ---- data ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Data:
    users: torch.Tensor  # training positives (validation rows removed when held out), on device
    items: torch.Tensor
    sampler: NegativeSampler  # negatives avoid exactly the training positives above
    weights: torch.Tensor | None  # per-positive loss weights (recency), None: uniform
    val_users: np.ndarray | None
    val_items: np.ndarray | None
    val_negatives: np.ndarray | None


def _prepare_data(partition, config: TrainConfig, device: torch.device, hold_out: bool) -> _Data:
    """The training set on the device; `hold_out`: carve the validation split out of it first."""
    users, items = partition.train_users, partition.train_items
    val_users = val_items = val_negatives = None
    if hold_out:
        held_out = leave_last_out(users, items, partition.train_ts, partition.num_users)
        if held_out.size == 0:
            raise UserError(f"{partition.uri}: no user has 2+ training interactions to carve a validation split "
                            "from; use --patience 0")
        keep = np.ones(users.size, dtype=bool)
        keep[held_out] = False
        val_users, val_items = users[held_out], items[held_out]
        # Validation negatives avoid everything known about the user (train, validation and test items), like the
        # test negatives do; a separate generator keeps them independent of the training stream.
        known = NegativeSampler(np.r_[users, partition.test_users], np.r_[items, partition.test_items],
                                partition.num_users, partition.num_items)
        num_neg = partition.test_negatives.shape[1] if partition.test_negatives.ndim == 2 else 99
        num_neg = min(num_neg, int(known.num_unseen.min()))
        generator = torch.Generator().manual_seed(config.seed + 1)
        val_negatives = known.sample_distinct(torch.from_numpy(val_users.astype(np.int64)), num_neg, generator).numpy()
        users, items = users[keep], items[keep]
        ts = partition.train_ts[keep]
    else:
        ts = partition.train_ts
    sampler = NegativeSampler(users, items, partition.num_users, partition.num_items, device)
    weights = None
    if config.recency_weight > 0:
        w = 1.0 + config.recency_weight * recency_rank(users, items, ts, partition.num_users) ** config.recency_power
        weights = torch.from_numpy((w / w.mean()).astype(np.float32)).to(device)
    return _Data(torch.from_numpy(users.astype(np.int64)).to(device), torch.from_numpy(items.astype(np.int64)).to(device),
                 sampler, weights, val_users, val_items, val_negatives)


def recency_rank(users: np.ndarray, items: np.ndarray, ts: np.ndarray, num_users: int) -> np.ndarray:
    """Each interaction's position in its user's history (`ncf.sampling.history_order`, the order the splits use),
    scaled to [0, 1] (0 oldest, 1 latest)."""
    order = history_order(users, items, ts)
    counts = np.bincount(users, minlength=num_users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    position = np.empty(users.size, dtype=np.float64)
    sorted_users = users[order]
    position[order] = np.arange(users.size) - starts[sorted_users]
    return position / np.maximum(counts[users] - 1, 1)


# ---- one training stage (one model type) --------------------------------------------------------------------

@dataclasses.dataclass
class _EpochRecord:
    epoch: int
    loss: float
    hr: float
    ndcg: float
    val_hr: float | None = None
    val_ndcg: float | None = None


def _progress(config: TrainConfig, runtime: _Runtime, total: int, desc: str):
    from tqdm import tqdm

    enabled = {"on": True, "off": False}.get(config.progress, sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not (enabled and runtime.is_main))


def _metric_line(hr: float, ndcg: float, loss: float) -> str:
    """The seed's line, scraped by `HR=(.*?);`, `NDCG=(.*?);`, `Loss=(.*?);` -- keep it byte-compatible."""
    return f"HR={hr:.4f}; NDCG={ndcg:.4f}; Loss={loss:.4f};"


def _sampled(scorer: ItemScorer, users, items, negatives, k: int) -> tuple[float, float]:
    hit, ndcg = hit_ndcg(sampled_ranks(scorer, users, items, negatives), k)
    return float(hit.mean()), float(ndcg.mean())


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

    `users` / `items` are the training positives on the device. The loss is accumulated on the device, so a
    step never waits for the host; under DDP each rank takes an equal, disjoint shard of the permutation.
    """

    def __init__(self, step: AutogradStep | CpuTrainStep, users: torch.Tensor, items: torch.Tensor,
                 sampler: NegativeSampler, num_neg: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None):
        self.step = step
        self.device = users.device
        self.items, self.sampler, self.batch_size = items, sampler, batch_size
        n_pos = users.numel()
        self.labels = torch.cat([torch.ones(n_pos, device=self.device),
                                 torch.zeros(n_pos * num_neg, device=self.device)])
        self.neg_users = users.repeat_interleave(num_neg)
        self.epoch_users = torch.cat([users, self.neg_users])
        self.weights = None if weights is None else torch.cat(
            [weights, torch.ones(n_pos * num_neg, device=self.device)])
        self.samples_per_rank = self.labels.numel() // world_size
        self.offset = rank * self.samples_per_rank
        self.steps = math.ceil(self.samples_per_rank / batch_size)

    def run(self, generator: torch.Generator, on_step=None) -> torch.Tensor:
        """Train one epoch; returns the summed loss (over this rank's samples) as a device tensor."""
        negatives = self.sampler.sample(self.neg_users, 1, generator).view(-1)
        perm = torch.randperm(self.labels.numel(), device=self.device, generator=generator)
        shard = perm[self.offset:self.offset + self.samples_per_rank]
        users, items = self.epoch_users[shard], torch.cat([self.items, negatives])[shard]
        targets = self.labels[shard]
        weights = None if self.weights is None else self.weights[shard]
        loss_sum = torch.zeros((), device=self.device)
        for start in range(0, self.samples_per_rank, self.batch_size):
            batch = slice(start, start + self.batch_size)
            loss_sum += self.step(users[batch], items[batch], targets[batch],
                                  None if weights is None else weights[batch])
            if on_step is not None:
                on_step()
        self.step.push()
        return loss_sum


def _refits(config: TrainConfig) -> bool:
    """Whether a refit pass follows the selection pass; it needs the validation split to pick its epochs."""
    return config.refit and config.patience > 0


def _train_stage(stage: str, model: NCF, data: _Data, partition, config: TrainConfig, runtime: _Runtime,
                 ckpt_dir: str, fingerprint: str, logger, epochs: int, refit: bool,
                 member: int = 0) -> tuple[NCF, list[_EpochRecord], dict[str, Any]]:
    """Train `model` for up to `epochs`; returns the selected model, its history and summary numbers.

    `refit`: this is the refit pass's run of the stage: same seeds as the selection pass, its own checkpoint
    file, progress label and MLflow keys. `member`: the ensemble member it trains (its seeds, label and keys).
    """
    label = _member_label(stage, refit, member)
    # Only the exported model's epochs feed the seed's dashboards: with a refit pass, those are the refit's; in an
    # ensemble, the last member's (the ensemble's own line follows at the end).
    final = stage == config.model and refit == _refits(config) and member == config.ensemble - 1
    device = runtime.device
    model.to(device)
    seed = _stage_seed(stage, _member_seed(config.seed, member))
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed + 1)  # dropout's stream (restored below when resuming)
    step = make_step(model, config.lr, config.weight_decay, device, runtime.distributed, config.compile)

    ckpt_uri = storage.join(ckpt_dir, f"{label}.pt")
    history: list[_EpochRecord] = []
    best = {"score": -1.0, "epoch": 0, "state": None, "bad_epochs": 0}
    start_epoch = 0
    state = checkpoint.load(ckpt_uri, fingerprint) if config.resume else None
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
        if runtime.is_main:
            print(f"[{label}] resuming after epoch {start_epoch} from {ckpt_uri}", file=sys.stderr, flush=True)

    runner = EpochRunner(step, data.users, data.items, data.sampler, config.num_neg,
                         config.batch_size, runtime.rank, runtime.world_size, data.weights)
    per_rank = runner.samples_per_rank
    started = time.perf_counter()
    samples_done, train_seconds = 0, 0.0
    for epoch in range(start_epoch, epochs):
        if state is not None and state.get("stopped"):
            break
        model.train()
        epoch_started = time.perf_counter()
        with _progress(config, runtime, runner.steps, f"{label} epoch {epoch + 1}/{epochs}") as bar:
            loss_sum = runner.run(generator, bar.update)
        samples_done += per_rank * runtime.world_size
        if runtime.distributed:
            dist.all_reduce(loss_sum)
        epoch_loss = float(loss_sum) / (per_rank * runtime.world_size)  # the epoch's one host sync
        train_seconds += time.perf_counter() - epoch_started
        if not math.isfinite(epoch_loss):
            raise UserError(f"[{label}] epoch {epoch + 1}: training loss is {epoch_loss}; lower --lr "
                            f"(now {config.lr}) or check the input data")

        stop = torch.zeros(1, device=device)
        if runtime.is_main:
            model.eval()
            scorer = ItemScorer(model)
            hr, ndcg = _sampled(scorer, partition.test_users, partition.test_items, partition.test_negatives,
                                config.top_k)
            record = _EpochRecord(epoch + 1, epoch_loss, hr, ndcg)
            if data.val_users is not None:
                record.val_hr, record.val_ndcg = _sampled(scorer, data.val_users, data.val_items,
                                                          data.val_negatives, config.top_k)
                if record.val_ndcg > best["score"]:
                    best.update(score=record.val_ndcg, epoch=epoch + 1, bad_epochs=0,
                                state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
                else:
                    best["bad_epochs"] += 1
                stop[0] = float(best["bad_epochs"] >= config.patience)
            history.append(record)
            print(_metric_line(hr, ndcg, epoch_loss), file=sys.stdout if final else sys.stderr, flush=True)
            validation = (f" validation hr@{config.top_k}={record.val_hr:.4f} ndcg@{config.top_k}={record.val_ndcg:.4f}"
                          if record.val_hr is not None else "")
            print(f"[{label}] epoch {epoch + 1}/{epochs} {time.perf_counter() - started:.1f}s{validation}",
                  file=sys.stderr, flush=True)
            logger.log_epoch(stage, record, refit, member)
        if runtime.distributed:
            dist.broadcast(stop, 0)
        stopped = bool(stop.item())
        if runtime.is_main:
            checkpoint.save(ckpt_uri, {
                "fingerprint": fingerprint, "config": dataclasses.asdict(config), "stage": label, "epoch": epoch + 1,
                "model": model.state_dict(), "optimizer": step.state_dict(), "step_kind": step.kind,
                "rng": checkpoint.rng_state(generator), "history": [dataclasses.asdict(r) for r in history],
                "best": best, "stopped": stopped})
        _after_epoch(label, epoch + 1, history[-1] if runtime.is_main else None)
        if stopped:
            if runtime.is_main:
                print(f"[{label}] early stop: no validation gain for {config.patience} epochs; best epoch "
                      f"{best['epoch']}", file=sys.stderr, flush=True)
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


# ---- MLflow ---------------------------------------------------------------------------------------------------

class _Logger:
    """MLflow logging on the main process when a tracking URI is configured; a no-op otherwise."""

    def __init__(self, config: TrainConfig, runtime: _Runtime):
        self.active = bool(config.tracking_uri) and runtime.is_main
        self.run_id = ""
        self.final_stage = config.model
        if not self.active:
            return
        import mlflow

        from ncf.registry import active_store

        self.mlflow = mlflow
        # Scoped, so the store does not leak into MLFLOW_TRACKING_URI for the rest of the process.
        self._store = contextlib.ExitStack()
        try:
            self._store.enter_context(active_store(config.tracking_uri))
            mlflow.set_experiment(config.experiment)
            run = mlflow.start_run(run_name=storage.join(config.output_uri).rstrip("/").rsplit("/", 1)[-1])
        except Exception as exc:  # MLflow raises many types for unreachable / misconfigured stores
            self._store.close()
            raise UserError(f"tracking_uri {config.tracking_uri}: cannot start an MLflow run ({exc})") from exc
        self.run_id = run.info.run_id
        mlflow.log_params({k: v for k, v in dataclasses.asdict(config).items() if k not in ("tracking_uri",)})

    def log_epoch(self, stage: str, record: _EpochRecord, refit: bool, member: int = 0) -> None:
        if not self.active:
            return
        # The refit pass and each ensemble member repeat the same epoch numbers (steps): each has its own keys.
        prefix = (("refit_" if refit else "") + (f"m{member}_" if member else "")
                  + ("" if stage == self.final_stage else f"{stage.lower()}_"))
        values = {f"{prefix}hr": record.hr, f"{prefix}ndcg": record.ndcg, f"{prefix}loss": record.loss}
        if record.val_hr is not None:
            values.update({f"{prefix}val_hr": record.val_hr, f"{prefix}val_ndcg": record.val_ndcg})
        self.mlflow.log_metrics(values, step=record.epoch)

    def finish(self, metrics: dict[str, Any], package_dir: Path | None, model_uri: str) -> None:
        if not self.active:
            return
        self.mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()
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
    ignore = {"output_uri", "checkpoint_uri", "resume", "tracking_uri", "experiment", "threads", "progress", "device"}
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignore}
    values.update(partition_uri=partition.uri, num_train=int(partition.train_users.size),
                  num_users=partition.num_users, num_items=partition.num_items, world_size=world_size)
    return checkpoint.fingerprint(values)


def _train_pass(spec: ModelSpec, data: _Data, partition, config: TrainConfig, runtime: _Runtime,
                ckpt_dir: str, fingerprint: str, logger, refit_epochs: dict[str, int] | None, member: int = 0
                ) -> tuple[NCF, list[_EpochRecord], dict[str, dict[str, Any]]]:
    """Train every stage once: GMF and MLP first when NeuMF is pretrained from them, then config.model.

    Selection pass (`refit_epochs` None): each stage trains up to config.epochs and keeps its best validation
    epoch. Refit pass: each stage trains exactly `refit_epochs[stage]` epochs. `member`: the ensemble member
    (its seeds). Returns the final model, its history and each stage's summary.
    """
    pretrain = config.pretrain and config.model == "NeuMF"
    models: dict[str, NCF] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for stage in ("GMF", "MLP", "NeuMF") if pretrain else (config.model,):
        model = (neumf_from_pretrained(models["GMF"].cpu(), models["MLP"].cpu(), dropout=config.dropout)
                 if pretrain and stage == "NeuMF" else _init_model(spec, stage, _member_seed(config.seed, member)))
        epochs = config.epochs if refit_epochs is None else refit_epochs[stage]
        models[stage], history, summaries[stage] = _train_stage(
            stage, model, data, partition, config, runtime, ckpt_dir, fingerprint, logger, epochs,
            refit=refit_epochs is not None, member=member)
    return models[config.model], history, summaries


def run(config: TrainConfig) -> TrainResult:
    from ncf.data import load_partition
    from ncf.evaluate import evaluate
    from ncf.package import package_tables, write_package

    config = apply_preset(config)
    _validate(config)
    runtime = _setup_runtime(config)
    partition = load_partition(config.partition_uri)
    data = _prepare_data(partition, config, runtime.device, hold_out=config.patience > 0)
    spec = ModelSpec(config.model, partition.num_users, partition.num_items, config.factor_num, config.num_layers,
                     config.dropout, _mlp_layers(config.mlp_layers))
    ckpt_dir = config.checkpoint_uri or storage.join(config.output_uri).rstrip("/") + ".checkpoint"
    fingerprint = _fingerprint(config, partition, runtime.world_size)
    logger = _Logger(config, runtime)
    failed = True
    try:
        started = time.perf_counter()
        members = [_train_pass(spec, data, partition, config, runtime, ckpt_dir, fingerprint, logger,
                               refit_epochs=None)]
        _, history, summaries = members[0]
        # The selection pass's chosen epoch; its validation metrics are reported with or without a refit.
        validation = next((r for r in history if r.epoch == summaries[config.model]["best_epoch"]), None)
        refit_epochs: dict[str, int] = {}
        if _refits(config):
            refit_epochs = {stage: s["best_epoch"] for stage, s in summaries.items()}
            if runtime.distributed:
                # Only rank 0 evaluates, so only it knows the selected epochs.
                counts = torch.tensor(list(refit_epochs.values()), device=runtime.device)
                dist.broadcast(counts, 0)
                refit_epochs = dict(zip(refit_epochs, counts.tolist(), strict=True))
            data = _prepare_data(partition, config, runtime.device, hold_out=False)
            members = []  # the refit members replace the selection pass's model
        # With refit: every member is a refit pass of the selected epochs. Without: the selection pass's model is
        # member 0 and each further member is a whole training run of its own seed.
        for member in range(len(members), config.ensemble):
            members.append(_train_pass(spec, data, partition, config, runtime, ckpt_dir, fingerprint, logger,
                                       refit_epochs or None, member))
        model = ensemble_of([m[0] for m in members])
        _, history, summaries = members[-1]
        summary = summaries[config.model]
        summary["train_seconds"] = time.perf_counter() - started
        model_uri = storage.join(config.output_uri)
        metrics: dict[str, Any] = {}
        if runtime.is_main:
            result = evaluate(model.eval(), partition, config.top_k)
            model = model.cpu()
            selected = next((r for r in history if r.epoch == summary["best_epoch"]), history[-1] if history else None)
            metrics = {**result.metrics(), "loss": selected.loss if selected else float("nan"),
                       "epochs": summary["epochs_trained"], "best_epoch": summary["best_epoch"],
                       "train_seconds": round(summary["train_seconds"], 3),
                       "samples_per_second": round(summary["samples_per_second"], 1), "model_type": config.model}
            if validation is not None and validation.val_hr is not None:
                metrics.update({f"val_hr@{config.top_k}": validation.val_hr,
                                f"val_ndcg@{config.top_k}": validation.val_ndcg})
            if refit_epochs:
                metrics["refit_epochs"] = refit_epochs
            if config.ensemble > 1 or (history and selected is not history[-1]):
                print(_metric_line(metrics[f"hr@{config.top_k}"], metrics[f"ndcg@{config.top_k}"], metrics["loss"]),
                      flush=True)
            hyperparameters = {k: v for k, v in dataclasses.asdict(config).items()
                               if k not in ("partition_uri", "output_uri", "tracking_uri", "checkpoint_uri", "resume",
                                            "progress")}
            with storage.staged_output(model_uri) as tmp:
                write_package(tmp, model, metrics=metrics, hyperparameters=hyperparameters,
                              extra={"partition_uri": partition.uri, "mlflow_run_id": logger.run_id,
                                     "run_date": partition.stats.get("run_date", "")},
                              **package_tables(partition))
                logger.finish(metrics, tmp, model_uri)
            print(f"model package: {model_uri}  full-ranking hr@{config.top_k}="
                  f"{metrics[f'full_hr@{config.top_k}']:.4f} ndcg@{config.top_k}="
                  f"{metrics[f'full_ndcg@{config.top_k}']:.4f}", file=sys.stderr, flush=True)
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
