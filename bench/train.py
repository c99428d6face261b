"""Training benchmark on MovieLens-100K (leave-one-out, 99 test negatives): speed and quality, in one run.

    .venv/bin/python bench/train.py            # everything (~30 min on 2 idle cores; --jobs 2: ~20 min)
    .venv/bin/python bench/train.py --quick    # speed at batch 256 on a slice of an epoch + 1-epoch runs (~1 min)
    .venv/bin/python bench/train.py --partition-uri runs/data/dt=2026-01-01

1. Speed, batch 256, seed hyperparameters, same data and model: the naive loop of the common public PyTorch NCF
   implementation (github.com/guoyang9/NCF: per-sample Dataset + DataLoader with 4 workers, Python negative
   sampling against a scipy dok_matrix, stock dropout and Adam), and a lean variant of it (a set lookup per draw,
   no workers), against one epoch of this project's trainer loop (ncf.train.EpochRunner: sampling and shuffling
   included). Same torch thread count for all. Samples per CPU-second (DataLoader workers included) are reported
   next to wall-clock samples/s: on a shared machine they are the stable figure; on an idle one the two agree.
2. Quality: the seed preset (HR/NDCG after 10 epochs, as the seed reported them), the recommended default
   configuration (epochs selected on the validation split, a 3-model seed ensemble) for each of --seeds, and
   popularity ranking for scale. `--jobs 2` runs those seeds side by side (their seconds then include the contention;
   the speed and time-to-quality figures always run alone).
3. Time to HR@10 >= 0.60 on the test set: wall-clock from calling ncf.train.run (data loading included) to the
   end of the first epoch that reaches it, with the fast configuration (docs/training.md).
The partition comes from the real preprocessing job (spark/preprocess.py), built once into --data-dir.
Prints a table and appends it, with the command line, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import multiprocessing
import os
import random
import resource
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.report import host, publish, table  # noqa: E402
from ncf import contracts, storage, train  # noqa: E402
from ncf.data import Partition, load_partition  # noqa: E402
from ncf.models import ModelSpec, build_model  # noqa: E402
from ncf.ranking import hit_ndcg  # noqa: E402
from ncf.sampling import NegativeSampler  # noqa: E402

SHARED = Path(os.environ.get("NCF_SHARED_DIR", REPO.parent / "shared"))
ML100K = SHARED / "datasets" / "ml-100k" / "u.data"
# The fast configuration for time-to-quality (docs/training.md): large batches, learning rate scaled up.
# Every field that shapes it is pinned, so a change of the recommended defaults does not move it.
FAST = {"model": "NeuMF", "pretrain": False, "batch_size": 2048, "lr": 0.004, "epochs": 6, "patience": 0,
        "dropout": 0.0, "num_neg": 4, "weight_decay": 0.0, "recency_weight": 16.0, "recency_power": 4.0,
        "ensemble": 1, "factor_num": 32, "num_layers": 2}


# ---- the naive reference loop (the common public implementation, github.com/guoyang9/NCF) --------------------

class PublicNCFData(torch.utils.data.Dataset):
    """The public implementation's `NCFData`, as it is written: a scipy `dok_matrix` of training pairs and one
    `np.random.randint` per draw, redrawn while the pair is a training positive; per-sample `__getitem__`."""

    def __init__(self, pairs: list[tuple[int, int]], num_users: int, num_items: int, num_neg: int):
        import scipy.sparse as sp

        self.features_ps, self.num_item, self.num_ng = pairs, num_items, num_neg
        self.train_mat = sp.dok_matrix((num_users, num_items), dtype=np.float32)
        for u, i in pairs:
            self.train_mat[u, i] = 1.0
        self.features_fill: list[tuple[int, int]] = []
        self.labels_fill: list[int] = []

    def ng_sample(self) -> None:
        features_ng = []
        for u, _ in self.features_ps:
            for _ in range(self.num_ng):
                j = np.random.randint(self.num_item)
                while (u, j) in self.train_mat:
                    j = np.random.randint(self.num_item)
                features_ng.append((u, j))
        self.features_fill = self.features_ps + features_ng
        self.labels_fill = [1] * len(self.features_ps) + [0] * len(features_ng)

    def __len__(self) -> int:
        return len(self.features_fill)

    def __getitem__(self, idx):
        user, item = self.features_fill[idx]
        return user, item, self.labels_fill[idx]


class LeanNCFData(PublicNCFData):
    """The same loop with its slowest Python replaced: a `set` lookup and `random.randrange` per draw."""

    def __init__(self, pairs: list[tuple[int, int]], num_users: int, num_items: int, num_neg: int):
        self.features_ps, self.num_item, self.num_ng = pairs, num_items, num_neg
        self.train_set = set(pairs)

    def ng_sample(self) -> None:
        features_ng = []
        for u, _ in self.features_ps:
            for _ in range(self.num_ng):
                j = random.randrange(self.num_item)
                while (u, j) in self.train_set:
                    j = random.randrange(self.num_item)
                features_ng.append((u, j))
        self.features_fill = self.features_ps + features_ng
        self.labels_fill = [1] * len(self.features_ps) + [0] * len(features_ng)


# (dataset, DataLoader workers): the public main.py loads with num_workers=4.
NAIVE_LOOPS = {"public": (PublicNCFData, 4), "lean": (LeanNCFData, 0)}


def naive_samples_per_second(partition: Partition, max_batches: int | None, variant: str = "public") -> dict:
    """One epoch (negative sampling included) of the public implementation's training loop, or of its lean
    variant; CPU time includes the DataLoader's worker processes."""
    dataset_type, workers = NAIVE_LOOPS[variant]
    seed = train.SEED_PRESET
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = build_model(ModelSpec("NeuMF", partition.num_users, partition.num_items, seed["factor_num"],
                                  seed["num_layers"], seed["dropout"]))
    for name, module in list(model.MLP_layers.named_children()):
        if isinstance(module, torch.nn.Dropout):  # the public implementation's stock dropout
            model.MLP_layers[int(name)] = torch.nn.Dropout(seed["dropout"])
    optimizer = torch.optim.Adam(model.parameters(), lr=seed["lr"])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    pairs = list(zip(partition.train_users.tolist(), partition.train_items.tolist(), strict=True))
    dataset = dataset_type(pairs, partition.num_users, partition.num_items, seed["num_neg"])
    children_cpu = _children_cpu()
    t0, c0 = time.perf_counter(), time.process_time()
    dataset.ng_sample()
    sampling_seconds, sampling_cpu = time.perf_counter() - t0, time.process_time() - c0
    with warnings.catch_warnings():  # 4 workers on fewer cores is the public implementation's own choice
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = torch.utils.data.DataLoader(dataset, batch_size=seed["batch_size"], shuffle=True,
                                             num_workers=workers)
    model.train()
    batches = samples = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        batches_iter = iter(loader)
    for user, item, label in batches_iter:
        model.zero_grad()
        loss = loss_fn(model(user, item), label.float())
        loss.backward()
        optimizer.step()
        batches += 1
        samples += len(label)
        if max_batches and batches >= max_batches:
            break
    loop_seconds = time.perf_counter() - t0
    del batches_iter  # joins the worker processes, so their CPU time is counted
    loop_cpu = time.process_time() - c0 + _children_cpu() - children_cpu
    # The epoch's sampling time, charged pro rata to the samples trained.
    share = samples / len(dataset)
    seconds, cpu = loop_seconds + sampling_seconds * share, loop_cpu + sampling_cpu * share
    return {"samples": samples, "samples_per_s": samples / seconds, "samples_per_cpu_s": samples / cpu}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def trainer_samples_per_second(partition: Partition) -> dict:
    """One epoch of the trainer's own data path and step (ncf.train.EpochRunner), set up as ncf.train does."""
    seed = train.SEED_PRESET
    train.keep_freed_memory()
    torch.manual_seed(0)
    model = build_model(ModelSpec("NeuMF", partition.num_users, partition.num_items, seed["factor_num"],
                                  seed["num_layers"], seed["dropout"]))
    step = train.make_step(model, seed["lr"], seed["weight_decay"], torch.device("cpu"))
    users = torch.from_numpy(partition.train_users.astype(np.int64))
    items = torch.from_numpy(partition.train_items.astype(np.int64))
    sampler = NegativeSampler(partition.train_users, partition.train_items, partition.num_users, partition.num_items)
    runner = train.EpochRunner(step, users, items, sampler, seed["num_neg"], seed["batch_size"])
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = float(runner.run(torch.Generator().manual_seed(0)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples = runner.samples_per_rank
    return {"samples": samples, "samples_per_s": samples / seconds, "samples_per_cpu_s": samples / cpu,
            "loss": loss / samples}


# ---- runs of the project's trainer ------------------------------------------------------------------------

def train_run(partition_uri: str, out_dir: Path, name: str, **overrides) -> tuple[train.TrainResult, list, float]:
    """Run ncf.train.run; returns the result, per-epoch (seconds since start, record) and total seconds."""
    epochs: list[tuple[float, object]] = []
    started = time.perf_counter()

    def record(stage, epoch, rec):
        if rec is not None:
            epochs.append((time.perf_counter() - started, stage, rec))

    train._after_epoch, previous = record, train._after_epoch
    try:
        # One NCF model per run (what this benchmark measures), not model selection: candidates "" unless given.
        config = train.TrainConfig(partition_uri=partition_uri, output_uri=str(out_dir / name), progress="off",
                                   **{"candidates": "", **overrides})
        result = train.run(config)
    finally:
        train._after_epoch = previous
    return result, epochs, time.perf_counter() - started


def recommended_run(job: tuple[str, Path, int, dict]) -> tuple[train.TrainResult, list, float]:
    """One recommended-defaults run for a seed (a process pool's task): `train_run` with the seed's name."""
    partition_uri, out_dir, seed, overrides = job
    return train_run(partition_uri, out_dir, f"recommended-{seed}", seed=seed, **overrides)


def popularity_metrics(partition: Partition, k: int = 10) -> tuple[float, float]:
    popularity = np.bincount(partition.train_items, minlength=partition.num_items).astype(np.float64)
    candidates = np.c_[partition.test_items, partition.test_negatives]
    scores = popularity[candidates]
    ranks = (scores[:, 1:] >= scores[:, :1]).sum(axis=1)  # the evaluation's tie rule: ties count against
    hit, ndcg = hit_ndcg(ranks, k)
    return float(hit.mean()), float(ndcg.mean())


def ensure_partition(args) -> str:
    if args.partition_uri:
        return args.partition_uri
    uri = contracts.partition_uri(args.data_dir, "2000-01-01")
    if not storage.is_complete(uri):
        if not ML100K.exists():
            raise SystemExit(f"error: MovieLens-100K not found at {ML100K} (set NCF_SHARED_DIR) and no --partition-uri")
        from spark.preprocess import PreprocessConfig, run

        print(f"building the ML-100K partition with spark/preprocess.py -> {uri} (once)", flush=True)
        run(PreprocessConfig(input_uri=str(ML100K), storage_root=args.data_dir, run_date="2000-01-01",
                             min_user_interactions=1, min_item_interactions=1))
    return uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke check: a slice of an epoch, 1-epoch runs")
    parser.add_argument("--partition-uri", default="", help="use this partition instead of building ML-100K")
    parser.add_argument("--data-dir", default=str(REPO / "runs" / "bench-train"), help="where the partition is built")
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    parser.add_argument("--seeds", default="42,1,2", help="seeds of the recommended-defaults runs (42 is the default; "
                                                          "--quick runs the first only)")
    parser.add_argument("--jobs", type=int, default=1, help="recommended-defaults runs side by side (processes)")
    args = parser.parse_args(argv)
    command = "bench/train.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    partition_uri = ensure_partition(args)
    partition = load_partition(partition_uri)
    threads = 1  # what the trainer picks for batch <= 2048; the naive loop gets the same
    torch.set_num_threads(threads)
    rows: list[tuple[str, str]] = []

    max_batches = 300 if args.quick else None
    public = naive_samples_per_second(partition, max_batches, "public")
    lean = naive_samples_per_second(partition, max_batches, "lean")
    fast = trainer_samples_per_second(partition)
    rows += [("naive loop as the public implementation writes it (dok_matrix, np.random.randint, 4 DataLoader "
              "workers), batch 256: samples/s (per CPU-second)",
              f"{public['samples_per_s']:,.0f} ({public['samples_per_cpu_s']:,.0f})"),
             ("lean naive loop (set lookup, random.randrange, no workers): samples/s (per CPU-second)",
              f"{lean['samples_per_s']:,.0f} ({lean['samples_per_cpu_s']:,.0f})"),
             ("ncf.train epoch loop, batch 256, seed hyperparameters: samples/s (per CPU-second)",
              f"{fast['samples_per_s']:,.0f} ({fast['samples_per_cpu_s']:,.0f})"),
             ("speed-up over the public loop, wall clock (CPU time) (target >= 3x)",
              f"{fast['samples_per_s'] / public['samples_per_s']:.2f}x "
              f"({fast['samples_per_cpu_s'] / public['samples_per_cpu_s']:.2f}x)"),
             ("speed-up over the lean loop, wall clock (CPU time)",
              f"{fast['samples_per_s'] / lean['samples_per_s']:.2f}x "
              f"({fast['samples_per_cpu_s'] / lean['samples_per_cpu_s']:.2f}x)")]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        out = Path(tmp)

        seed_epochs = 1 if args.quick else 10
        seed, seed_log, seed_s = train_run(partition_uri, out, "seed", preset="seed", epochs=seed_epochs)
        best = max(seed_log, key=lambda e: e[2].hr)[2]
        rows += [(f"seed preset, {seed_epochs} epochs: test HR@10 / NDCG@10 (reference 0.593 / 0.328)",
                  f"{seed.metrics['hr@10']:.4f} / {seed.metrics['ndcg@10']:.4f} ({seed_s:.0f} s)"),
                 ("seed preset: best epoch on the test set (reference 0.618 / 0.339; not a selection rule)",
                  f"{best.hr:.4f} / {best.ndcg:.4f} at epoch {best.epoch}"),
                 ("seed preset: full-ranking HR@10 / NDCG@10",
                  f"{seed.metrics['full_hr@10']:.4f} / {seed.metrics['full_ndcg@10']:.4f}")]

        defaults = {"epochs": 1} if args.quick else {}
        seeds = [int(x) for x in args.seeds.split(",")][:1 if args.quick else None]
        recommended = []
        with concurrent.futures.ProcessPoolExecutor(max(1, args.jobs),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(recommended_run, [(partition_uri, out, s, defaults) for s in seeds]))
        for seed_value, (rec, _, rec_s) in zip(seeds, runs, strict=True):
            recommended.append(rec.metrics)
            chosen = rec.metrics.get("refit_epochs") or {"selected epoch": rec.metrics["best_epoch"]}
            rows += [(f"recommended defaults, seed {seed_value}: test HR@10 / NDCG@10 (target >= 0.64 / 0.35)",
                      f"{rec.metrics['hr@10']:.4f} / {rec.metrics['ndcg@10']:.4f} (validation "
                      f"{rec.metrics.get('val_hr@10', float('nan')):.4f} / {rec.metrics.get('val_ndcg@10', float('nan')):.4f}; "
                      f"epochs chosen on validation: {chosen}; {rec_s:.0f} s)"),
                     (f"recommended defaults, seed {seed_value}: full-ranking HR@10 / NDCG@10",
                      f"{rec.metrics['full_hr@10']:.4f} / {rec.metrics['full_ndcg@10']:.4f}")]
        if len(recommended) > 1:
            mean = {k: float(np.mean([m[k] for m in recommended])) for k in ("hr@10", "ndcg@10")}
            spread = {k: float(np.std([m[k] for m in recommended])) for k in ("hr@10", "ndcg@10")}
            rows.append((f"recommended defaults, mean (sd) over seeds {args.seeds}: test HR@10 / NDCG@10",
                         f"{mean['hr@10']:.4f} ({spread['hr@10']:.4f}) / {mean['ndcg@10']:.4f} "
                         f"({spread['ndcg@10']:.4f})"))

        fast_cfg = {**FAST, "epochs": 2} if args.quick else FAST
        _, fast_log, fast_s = train_run(partition_uri, out, "fast", **fast_cfg)
        reached = next(((s, r) for s, _, r in fast_log if r.hr >= 0.60), None)
        rows.append(("time to test HR@10 >= 0.60, fast config (target <= 20 s)",
                     f"{reached[0]:.1f} s (epoch {reached[1].epoch}, HR {reached[1].hr:.4f})" if reached
                     else f"not reached in {fast_cfg['epochs']} epochs ({fast_s:.0f} s)"))
    pop_hr, pop_ndcg = popularity_metrics(partition)
    rows.append(("popularity ranking: test HR@10 / NDCG@10", f"{pop_hr:.4f} / {pop_ndcg:.4f}"))

    header = (f"## Training, ML-100K ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {host()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} thread{'s' * (threads > 1)})")
    quick = "  (quick: smoke check, not the targets)" if args.quick else ""
    publish(f"\n{header}\n\n`{command}`{quick}\n\n{table(rows)}\n", args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
