"""Quality of two-stage serving: full-ranking HR@10 / NDCG@10 of FAISS retrieval + exact re-ranking against the
exact path, on the same model and partition, and the overlap of their top-10 lists.

    .venv/bin/python bench/retrieval.py                      # ML-100K (recommended defaults) + a ~200k-item synthetic
    .venv/bin/python bench/retrieval.py --quick              # ML-100K only, 1 epoch, few settings (a smoke test)
    .venv/bin/python bench/retrieval.py --package-uri P --partition-uri D   # an existing package and its partition

1. ML-100K through the project's preprocessing (spark/preprocess.py, as bench/train.py builds it) and the train
   step with bench/train.py's fast configuration (NeuMF, 6 epochs, no pretraining) as a 3-model ensemble, the
   recommended shape (partial inner product: retrieval with the members' GMF halves); `--ml100k-config defaults`
   trains the recommended defaults instead (GMF/MLP pretraining per member: ~10x longer).
2. A synthetic catalogue of ~200k items: `ncfctl generate` + `ncfctl preprocess` (spark/generate.py,
   spark/preprocess.py), then the train step with a short configuration (--synthetic-epochs, default 1, ensemble
   --synthetic-ensemble, default 1) because the recommended defaults take hours on 2 cores at that size.
For each (candidates, nprobe): the test users (a fixed-seed sample of --users) are answered by the serving code
(`serving.recommender.Recommender`, exclude-seen on, k=10) on the exact path and on the two-stage path; HR@10 / NDCG@10
from the position of the held-out item in each top-10 list, the relative HR@10 loss, and the mean overlap of the two
top-10 lists; for a "partial" scorer (NeuMF) with and without the index's item-bias column. The exact path's figures are cross-checked against `ncf.ranking.full_ranks` (the evaluation's own
protocol; ties count against the item there, so it can be a hair lower). Appends the tables to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.report import publish  # noqa: E402

SHARED = Path(os.environ.get("NCF_SHARED_DIR", REPO.parent / "shared"))
ML100K = SHARED / "datasets" / "ml-100k" / "u.data"
TARGET_LOSS = 0.02  # relative HR@10 loss of two-stage against exact


def ml100k_partition(data_dir: Path) -> str:
    from ncf import contracts, storage

    uri = contracts.partition_uri(data_dir, "2000-01-01")
    if not storage.is_complete(uri):
        from spark.preprocess import PreprocessConfig, run

        print(f"building the ML-100K partition with spark/preprocess.py -> {uri} (once)", flush=True)
        run(PreprocessConfig(input_uri=str(ML100K), storage_root=str(data_dir), run_date="2000-01-01",
                             min_user_interactions=1, min_item_interactions=1))
    return uri


def synthetic_partition(data_dir: Path, events: int, users: int, items: int) -> str:
    """`ncfctl generate` + `ncfctl preprocess` (in this process, as ncfctl runs them)."""
    from ncf import contracts, storage

    uri = contracts.partition_uri(data_dir, "2026-01-31")
    if not storage.is_complete(uri):
        from spark.generate import GenerateConfig
        from spark.generate import run as generate
        from spark.preprocess import PreprocessConfig
        from spark.preprocess import run as preprocess

        raw = contracts.raw_uri(data_dir, "2026-01-31")
        print(f"ncfctl generate --num-events {events} --num-users {users} --num-items {items} -> {raw}", flush=True)
        generate(GenerateConfig(output_uri=raw, num_events=events, num_users=users, num_items=items))
        print(f"ncfctl preprocess -> {uri}", flush=True)
        preprocess(PreprocessConfig(input_uri=raw, storage_root=str(data_dir), run_date="2026-01-31",
                                    min_user_interactions=2, min_item_interactions=1))
    return uri


def train(partition_uri: str, output: Path, **overrides) -> tuple[str, float]:
    from ncf import storage
    from ncf import train as train_step

    if storage.is_complete(str(output)):
        return str(output), 0.0
    started = time.perf_counter()
    # One NCF model per run, the configuration given, not model selection (candidates "" unless given).
    train_step.run(train_step.TrainConfig(partition_uri=partition_uri, output_uri=str(output), progress="off",
                                          full_eval_users=200, **{"candidates": "", **overrides}))
    return str(output), time.perf_counter() - started


def top10(rec, users: np.ndarray) -> tuple[np.ndarray, float]:
    """[n, 10] item indices (-1 where fewer) answered by `rec`, and the mean milliseconds per user."""
    out = np.full((len(users), 10), -1, dtype=np.int64)
    started = time.perf_counter()
    for row, user in enumerate(users):
        (answer,) = rec.recommend([rec.query(rec.package.user_ids[user], 10)])
        ids = [rec.item_index[i] for i in answer.item_ids]
        out[row, :len(ids)] = ids
    return out, 1000 * (time.perf_counter() - started) / max(1, len(users))


def metrics(lists: np.ndarray, held_out: np.ndarray) -> tuple[float, float]:
    hits = lists == held_out[:, None]
    position = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    hr = float((position >= 0).mean())
    ndcg = float(np.where(position >= 0, 1 / np.log2(np.maximum(position, 0) + 2), 0.0).mean())
    return hr, ndcg


def evaluate(name: str, package_uri: str, partition_uri: str, grid: list[tuple[int, int]], max_users: int,
             note: str) -> str:
    import torch

    from ncf.data import load_partition
    from ncf.evaluate import sample_rows
    from ncf.package import load_package
    from ncf.ranking import full_ranks, hit_ndcg
    from ncf.retrieval import RetrievalSettings, Retriever
    from serving.recommender import Recommender

    torch.set_num_threads(1)  # as the predictor scores (--torch-threads 1)
    partition = load_partition(partition_uri)
    package = load_package(package_uri)
    rows = sample_rows(partition.test_users.size, max_users)
    users, held_out = partition.test_users[rows].astype(np.int64), partition.test_items[rows].astype(np.int64)
    exact = Recommender(package, retrieval=RetrievalSettings(mode="exact"))
    exact_lists, exact_ms = top10(exact, users)
    hr, ndcg = metrics(exact_lists, held_out)
    ranks = full_ranks(package.scorer, users, held_out, exact.seen_indptr, exact.seen_indices)
    eval_hr, eval_ndcg = (float(x.mean()) for x in hit_ndcg(ranks, 10))
    print(f"[{name}] exact: HR@10 {hr:.4f} NDCG@10 {ndcg:.4f} ({exact_ms:.2f} ms/user)", flush=True)
    lines = [
        "",
        f"## retrieval — {name} — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{note}  ",
        f"Model: {package.config.get('model_type', package.family)} (family {package.family}, "
        f"{package.config.get('members', 1)} member(s), inner product `{package.scorer.inner_product}`), "
        f"{len(package.user_ids):,} users x {len(package.item_ids):,} items; {len(users):,} test users (fixed-seed "
        f"sample); exclude-seen on; one thread; load average {os.getloadavg()[0]:.1f} (2 CPUs, shared).  ",
        f"Exact path: HR@10 {hr:.4f}, NDCG@10 {ndcg:.4f} ({exact_ms:.2f} ms per user in-process); the evaluation's "
        f"`full_ranks` on the same users: HR@10 {eval_hr:.4f}, NDCG@10 {eval_ndcg:.4f}.",
        "",
        "| candidates | nprobe / nlist | item bias | HR@10 | NDCG@10 | HR@10 loss (rel.) | NDCG@10 loss (rel.) "
        "| top-10 overlap | ms / user | index build (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    biases = (False, True) if package.scorer.inner_product == "partial" else (False,)
    for bias in biases:
        index, build_s = None, ""
        for candidates, nprobe in grid:
            settings = RetrievalSettings(mode="ann", candidates=candidates, nprobe=nprobe, item_bias=bias)
            started = time.perf_counter()
            rec = Recommender(package, retrieval=RetrievalSettings(mode="exact"))
            if index is None:
                rec.retriever = Retriever.for_package(package, settings, log=lambda m: None)
                if rec.retriever.index is None:  # every item a candidate: nothing to build
                    build_s = "-"
                else:
                    index, build_s = rec.retriever.index, f"{time.perf_counter() - started:.1f}"
            else:  # the same index (nlist does not change), searched with other settings
                rec.retriever = Retriever(package.scorer, index, settings)
                build_s = "(same)"
            rec.retrieval = settings
            lists, ms = top10(rec, users)
            a_hr, a_ndcg = metrics(lists, held_out)
            overlap = float(np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / 10
                                     for a, b in zip(lists, exact_lists, strict=True)]))
            loss = (hr - a_hr) / hr if hr else 0.0
            nloss = (ndcg - a_ndcg) / ndcg if ndcg else 0.0
            nlist = rec.retriever.nlist if rec.retriever.index is not None else "-"
            lines.append(f"| {candidates} | {nprobe} / {nlist} | {'yes' if rec.retriever.bias else 'no'} "
                         f"| {a_hr:.4f} | {a_ndcg:.4f} | {100 * loss:+.1f}% | {100 * nloss:+.1f}% | {overlap:.3f} "
                         f"| {ms:.2f} | {build_s} |")
            print(f"[{name}] {candidates} candidates, nprobe {nprobe}, item bias {bias}: HR@10 {a_hr:.4f} "
                  f"NDCG@10 {a_ndcg:.4f} loss {100 * loss:+.1f}% overlap {overlap:.3f} ({ms:.2f} ms/user)",
                  flush=True)
    lines += ["", f"Target: HR@10 loss <= {100 * TARGET_LOSS:.0f}% (relative) at the serving defaults "
                  f"({RetrievalSettings().candidates} candidates, nprobe {RetrievalSettings().nprobe}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ML-100K only, 1 epoch, 2 settings (a smoke test)")
    parser.add_argument("--data-dir", default=str(REPO / "runs" / "bench-retrieval"),
                        help="where partitions and packages are built (kept: a rerun reuses them)")
    parser.add_argument("--package-uri", default="", help="evaluate this package (with --partition-uri) only")
    parser.add_argument("--partition-uri", default="")
    parser.add_argument("--users", type=int, default=1000, help="test users per evaluation (fixed-seed sample)")
    parser.add_argument("--synthetic-users-evaluated", type=int, default=0,
                        help="test users for the synthetic evaluation (default: --users)")
    parser.add_argument("--skip-ml100k", action="store_true")
    parser.add_argument("--ml100k-config", default="fast", choices=("fast", "defaults"))
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--synthetic-events", type=int, default=3_000_000)
    parser.add_argument("--synthetic-users", type=int, default=50_000)
    parser.add_argument("--synthetic-items", type=int, default=220_000)
    parser.add_argument("--synthetic-epochs", type=int, default=1)
    parser.add_argument("--synthetic-ensemble", type=int, default=1)
    parser.add_argument("--grid", default="", help="with --package-uri: candidates:nprobe pairs, e.g. 1000:64,1000:256")
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    command = "bench/retrieval.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    data = Path(args.data_dir)
    reports = []
    if args.package_uri:
        grid = [tuple(int(x) for x in pair.split(":")) for pair in args.grid.split(",")] if args.grid else \
            [(c, p) for c in (200, 500, 1000, 2000) for p in (16, 64)]
        reports.append(evaluate("package", args.package_uri, args.partition_uri, grid, args.users,
                                f"Command: `{command}`"))
    else:
        if not args.skip_ml100k:
            uri = ml100k_partition(data)
            from bench.train import FAST

            overrides = {"epochs": 1, "ensemble": 1} if args.quick else \
                {} if args.ml100k_config == "defaults" else {**FAST, "ensemble": 3}
            name = "ml100k-quick" if args.quick else f"ml100k-{args.ml100k_config}"
            package, seconds = train(uri, data / "models" / name, **overrides)
            grid = [(100, 8), (1000, 64)] if args.quick else [(c, p) for c in (50, 100, 200, 500)
                                                                for p in (8, 32)]
            trained = f"trained in {seconds:.0f}s" if seconds else "trained by an earlier run"
            reports.append(evaluate("ML-100K", package, uri, grid, args.users,
                                    f"Command: `{command}`; partition: ML-100K through spark/preprocess.py; "
                                    f"package: the train step with {overrides or 'the recommended defaults'} "
                                    f"({trained})."))
        if not args.skip_synthetic and not args.quick:
            uri = synthetic_partition(data / "synthetic", args.synthetic_events, args.synthetic_users,
                                      args.synthetic_items)
            overrides = {"model": "NeuMF", "pretrain": False, "epochs": args.synthetic_epochs,
                         "ensemble": args.synthetic_ensemble, "patience": 0, "batch_size": 2048, "lr": 0.004}
            package, seconds = train(uri, data / "models" / "synthetic", **overrides)
            grid = [(c, p) for c in (200, 500, 1000, 2000) for p in (16, 64)]
            trained = f"trained in {seconds:.0f}s" if seconds else "trained by an earlier run"
            reports.append(evaluate("synthetic ~200k items", package, uri, grid,
                                    args.synthetic_users_evaluated or args.users,
                                    f"Command: `{command}`; partition: `ncfctl generate` ({args.synthetic_events:,} "
                                    f"events, {args.synthetic_users:,} users, {args.synthetic_items:,} items) + "
                                    f"`ncfctl preprocess`; package: the train step with {overrides}, a short run "
                                    f"because the recommended defaults take hours at this size on 2 cores "
                                    f"({trained})."))
    for report in reports:
        publish(report, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
