"""Model selection per dataset (issue 11): every candidate and the popularity baseline side by side.

    .venv/bin/python bench/quality.py                          # ML-100K (../shared) and a synthetic partition
    .venv/bin/python bench/quality.py --datasets ml-100k --ml100k-partition-uri runs/bench-train/data/dt=2000-01-01
    .venv/bin/python bench/quality.py --datasets grocery --partition grocery=/tmp/grocery/data/dt=2014-07-23

For each dataset the train step runs with the default pipeline's training settings (`ncf.train.TrainConfig`
defaults: model selection among `--candidates`, default GMF,ease,ials). Then, for reporting only, every candidate
that was not chosen is trained as the selection would have exported it had it won (`--candidates ''`, its family
and the settings its best trial chose), and popularity as the baseline. The blend of the best candidates
(`--blend auto`) has a row of its own: its weights and validation scores, and its test scores when it was
exported. Printed per model: selection's validation NDCG@10 / HR@10 (the numbers the choice was made on), test
HR@10 / NDCG@10 (sampled protocol, 99 negatives), full-ranking HR@10 (+/- 95%; over every test user unless `--full-eval-users`), seconds; the chosen one marked. The
test columns play no part in the choice.

Datasets: ML-100K through the real preprocessing job (spark/preprocess.py, no minimum-count filter, as in
docs/training.md), and a synthetic log (spark/generate.py) shaped unlike the demo's: more items than users
(`--synthetic-users` 1,500 x `--synthetic-items` 4,000) and fewer, broader taste topics, preprocessed with the
default filters. Any other partition, e.g. one `ncfctl preprocess` built from a public log (docs/training.md,
"Public data of other kinds"), is named with `--partition NAME=URI` and listed in `--datasets`. Prints a table per
dataset and appends them, with the command line, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.report import host, publish  # noqa: E402
from ncf import contracts, storage  # noqa: E402
from ncf.train import TrainConfig, TrainResult, run  # noqa: E402

SHARED = Path(os.environ.get("NCF_SHARED_DIR", REPO.parent / "shared"))
ML100K = SHARED / "datasets" / "ml-100k" / "u.data"


def ml100k_partition(data_dir: Path) -> str:
    uri = contracts.partition_uri(str(data_dir / "ml-100k"), "2000-01-01")
    if not storage.is_complete(uri):
        if not ML100K.exists():
            raise SystemExit(f"error: MovieLens-100K not found at {ML100K} (set NCF_SHARED_DIR)")
        from spark.preprocess import PreprocessConfig
        from spark.preprocess import run as preprocess

        print(f"building the ML-100K partition with spark/preprocess.py -> {uri} (once)", flush=True)
        preprocess(PreprocessConfig(input_uri=str(ML100K), storage_root=str(data_dir / "ml-100k"),
                                    run_date="2000-01-01", min_user_interactions=1, min_item_interactions=1))
    return uri


def synthetic_partition(data_dir: Path, users: int, items: int, events: int, topics: int) -> str:
    root = data_dir / f"synthetic-{users}x{items}-{events}-t{topics}"
    uri = contracts.partition_uri(str(root), "2026-01-30")
    if not storage.is_complete(uri):
        from spark.generate import GenerateConfig
        from spark.generate import run as generate
        from spark.preprocess import PreprocessConfig
        from spark.preprocess import run as preprocess

        print(f"generating {events:,} events ({users:,} users x {items:,} items, {topics} topics) -> {uri} (once)",
              flush=True)
        generate(GenerateConfig(output_uri=str(root / "raw"), num_events=events, num_users=users, num_items=items,
                                num_topics=topics, seed=7))
        preprocess(PreprocessConfig(input_uri=str(root / "raw"), storage_root=str(root), run_date="2026-01-30"))
    return uri


def _train(partition_uri: str, out: Path, name: str, **fields) -> tuple[TrainResult, float]:
    started = time.perf_counter()
    result = run(TrainConfig(partition_uri=partition_uri, output_uri=str(out / name), progress="off", **fields))
    return result, time.perf_counter() - started


def _validation(summary: dict | None, k: int = 10) -> str:
    return (f"{summary[contracts.metric_name('ndcg', k, validation=True)]:.4f} / "
            f"{summary[contracts.metric_name('hr', k, validation=True)]:.4f}") if summary else "-"


def _row(label: str, summary: dict | None, result: TrainResult, seconds: float, k: int = 10) -> str:
    m = result.metrics
    val = _validation(summary, k)
    full = contracts.metric_name("hr", k, full=True)
    return (f"| {label} | {val} | {m['hr@10']:.4f} / {m['ndcg@10']:.4f} | {m[full]:.4f} (+/- "
            f"{m[contracts.ci_name(full)]:.4f}) | {seconds:.0f} |")


def dataset_report(name: str, partition_uri: str, out: Path, extra: dict, selected_uri: str = "") -> str:
    from ncf.data import load_partition
    from ncf.package import load_package

    stats = load_partition(partition_uri).stats
    if selected_uri:  # a package the train step already wrote with these settings on this partition
        package = load_package(selected_uri)
        if package.config.get("partition_uri") != partition_uri or "candidates" not in package.metrics:
            raise SystemExit(f"error: --selected {name}={selected_uri}: not a model selection package of "
                             f"{partition_uri}")
        selected, selected_s = TrainResult(selected_uri, package.metrics), float(package.metrics["train_seconds"])
    else:
        selected, selected_s = _train(partition_uri, out, f"{name}-selected", **extra)
    summary = selected.metrics["candidates"]
    chosen = summary["chosen"]
    defaults = TrainConfig(partition_uri="", output_uri="")
    rows = []
    for candidate, record in summary["candidates"].items():
        if "settings" not in record:  # every trial failed
            rows.append(f"| {candidate} | every trial failed: {record.get('failed', ['?'])[-1][:120]} | - | - | - |")
            continue
        if record["family"] == "blend" and candidate != chosen:  # weights chosen, no better than the best alone
            rows.append(f"| blend of the best candidates, weights {record['settings']} (not exported: no better than "
                        f"the best alone on validation) | {_validation(record)} | - | - | - |")
            continue
        if candidate == chosen:
            label = (f"**{candidate}** (chosen; selection + final fit)  settings {record['settings'] or 'configured'}"
                     f", {record['trials']} trials")
            rows.append(_row(label, record, selected, selected_s))
            continue
        fields = {"candidates": "", "family": record["family"], **record["settings"]}
        if record["family"] == "ncf":
            fields["model"] = candidate if candidate in ("GMF", "MLP", "NeuMF") else defaults.model
        result, seconds = _train(partition_uri, out, f"{name}-{candidate}", full_eval_users=extra["full_eval_users"],
                                 **fields)
        label = f"{candidate}  settings {record['settings'] or 'configured'}, {record['trials']} trials"
        rows.append(_row(label, record, result, seconds + record["seconds"]))
    if "popularity" not in summary["candidates"]:
        result, seconds = _train(partition_uri, out, f"{name}-popularity", candidates="", family="popularity",
                                 full_eval_users=extra["full_eval_users"])
        rows.append(_row("popularity (baseline, not a candidate)", {
            contracts.metric_name("ndcg", 10, validation=True): result.metrics["val_ndcg@10"],
            contracts.metric_name("hr", 10, validation=True): result.metrics["val_hr@10"]}, result, seconds))
    candidates = extra.get("candidates", defaults.candidates)
    header = (f"### {name}: {stats.get('num_users', '?'):,} users x {stats.get('num_items', '?'):,} items, "
              f"{stats.get('num_train', '?'):,} training rows; candidates {candidates}, chosen **{chosen}**; the "
              f"whole train step {selected_s:.0f} s (selection {selected.metrics['selection_seconds']:.0f} s)"
              + (f"; the selected model is {selected_uri}, written by the train step earlier" if selected_uri else ""))
    table = ["| model | validation NDCG@10 / HR@10 (selection) | test HR@10 / NDCG@10 (sampled) | "
             "full-ranking HR@10 | seconds (trials + fit) |", "|---|---|---|---|---|", *rows]
    return "\n".join([header, "", *table])


def _named_uris(items: list[str], flag: str) -> dict[str, str]:
    for item in items:
        if "=" not in item or not item.split("=", 1)[1]:
            raise SystemExit(f"error: {flag} {item!r}: expected NAME=URI")
    return dict(item.split("=", 1) for item in items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k,synthetic",
                        help="comma-separated: ml-100k, synthetic, and the names given to --partition")
    parser.add_argument("--data-dir", default=str(REPO / "runs" / "bench-quality"), help="where partitions are built")
    parser.add_argument("--ml100k-partition-uri", default="", help="use this ML-100K partition instead of building it")
    parser.add_argument("--synthetic-users", type=int, default=1500)
    parser.add_argument("--synthetic-items", type=int, default=4000)
    parser.add_argument("--synthetic-events", type=int, default=60_000)
    parser.add_argument("--synthetic-topics", type=int, default=8)
    parser.add_argument("--partition", action="append", default=[], metavar="NAME=URI",
                        help="a partition already built (e.g. by ncfctl preprocess), benched as dataset NAME")
    parser.add_argument("--full-eval-users", type=int, default=0,
                        help="full-ranking metrics over at most this many test users; 0 (default): every one (a "
                             "sample of 1,000, the train step's default, leaves +/- 0.02 on differences this size)")
    parser.add_argument("--candidates", default=None, help="override the default candidates")
    parser.add_argument("--selected", action="append", default=[], metavar="DATASET=URI",
                        help="reuse a package the train step wrote with the same settings on that dataset's partition "
                             "instead of running the selection again")
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    command = "bench/quality.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    data_dir = Path(args.data_dir)
    extra = {"full_eval_users": args.full_eval_users, **({} if args.candidates is None else
                                                         {"candidates": args.candidates})}
    reused = _named_uris(args.selected, "--selected")
    partitions = _named_uris(args.partition, "--partition")
    reports = []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            if name in partitions:
                uri = partitions[name]
            elif name == "ml-100k":
                uri = args.ml100k_partition_uri or ml100k_partition(data_dir)
            elif name == "synthetic":
                uri = synthetic_partition(data_dir, args.synthetic_users, args.synthetic_items,
                                          args.synthetic_events, args.synthetic_topics)
            else:
                raise SystemExit(f"error: --datasets: unknown dataset {name!r} (ml-100k, synthetic, or one named by "
                                 f"--partition NAME=URI)")
            reports.append(dataset_report(name, uri, Path(tmp), extra, reused.get(name, "")))
            print(reports[-1], flush=True)
    header = (f"## Model selection quality ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {host()}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end)")
    note = ("Validation columns: what the choice was made on (each candidate's best trial, fitted without the "
            "validation rows). Test columns: the exported model (refit on every training row), reporting only.")
    publish(f"\n{header}\n\n`{command}`\n\n{note}\n\n" + "\n\n".join(reports) + "\n", args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
