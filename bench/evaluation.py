"""Cost of the train step's final evaluation and of the gate's scoring at scale, on synthetic data.

    .venv/bin/python bench/evaluation.py                                   # 1M users x 200k items (issue 14's size)
    .venv/bin/python bench/evaluation.py --users 100000 --items 50000     # a smaller size
    .venv/bin/python bench/evaluation.py --full-eval-users 0 --users 20000 # full ranking of every user
    .venv/bin/python bench/evaluation.py --quick                           # 20k x 20k, a smoke check

Builds a partition of --users users (--per-user training rows each, Zipf-popular items, one test row with 99 test
negatives per user) and two packages of --model (GMF, a family model selection exports at this size: EASE refuses
200k items, a 160 GB item-item matrix; or NeuMF, the NCF recipe; factor 32, 2 MLP layers, a seed ensemble of
--members; random weights: the cost does not depend on them), written through the real writers, then times on this
machine
(torch on every core, as the train step's evaluation and the gate score):
  1. the train step's final evaluation: `ncf.evaluate.evaluate` on the fitted scorer (sampled protocol over
     every test user, full ranking over a fixed-seed sample of at most --full-eval-users);
  2. the gate's scoring: loading the partition and both packages, `ncf.gate.score_packages` for challenger and
     champion on the same rows (the id mapping included); the gate's MLflow registration is not included.
The target (issue 14): 1 + 2 within 5 minutes on 2 CPU cores at 1M users x 200k items. Prints a table and appends
it, with the command line, to bench/RESULTS.md (--results).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.report import host, publish, table  # noqa: E402
from ncf import contracts  # noqa: E402
from ncf.data import Partition  # noqa: E402


def synthetic_partition(num_users: int, num_items: int, per_user: int, seed: int = 0) -> Partition:
    """Timing data: Zipf-popular training items, uniform test items and negatives (overlaps with a user's training
    items are not removed; they do not change the cost)."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(num_users, dtype=np.int32), per_user)
    items = ((rng.zipf(1.2, users.size) - 1) % num_items).astype(np.int32)
    return Partition(
        uri="memory://bench", train_users=users, train_items=items,
        train_ts=rng.integers(0, 10**9, users.size), test_users=np.arange(num_users, dtype=np.int32),
        test_items=rng.integers(0, num_items, num_users).astype(np.int32),
        test_negatives=rng.integers(0, num_items, (num_users, 99)).astype(np.int32),
        user_ids=np.asarray([f"u{u}" for u in range(num_users)], dtype=object),
        item_ids=np.asarray([f"i{i}" for i in range(num_items)], dtype=object),
        stats={"run_date": "2026-01-01"})


def default_package(directory: Path, partition: Partition, seed: int, members: int, model: str = "NeuMF") -> str:
    from ncf.families.ncf import export
    from ncf.models import ModelSpec, build_model
    from ncf.package import package_tables, save_package

    torch.manual_seed(seed)
    net = build_model(ModelSpec(model, partition.num_users, partition.num_items, 32, 2, members=members))
    return save_package(directory, export(net.eval()), **package_tables(partition), metrics={})


class Clock:
    """Wall and CPU seconds between laps (CPU seconds count every thread: the steadier figure on a shared host)."""

    def __init__(self):
        self.wall, self.cpu, self.seconds = time.perf_counter(), time.process_time(), 0.0

    def lap(self) -> str:
        wall, cpu = time.perf_counter(), time.process_time()
        self.seconds = wall - self.wall
        text = f"{self.seconds:.1f} s ({cpu - self.cpu:.1f} CPU s)"
        self.wall, self.cpu = wall, cpu
        return text


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke check: 20,000 users x 20,000 items")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--per-user", type=int, default=10, help="training rows per user")
    parser.add_argument("--model", default="GMF", choices=("GMF", "NeuMF"))
    parser.add_argument("--members", type=int, default=3, help="seed-ensemble members of the packages")
    parser.add_argument("--full-eval-users", type=int, default=contracts.DEFAULT_FULL_EVAL_USERS)
    parser.add_argument("--cores", type=int, default=0,
                        help="run on this many cores (CPU affinity; the steps then use that many threads); 0: all. "
                             "On a shared host, 1 core avoids threads waiting for each other and times the work")
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.items = 20_000, 20_000
    cores = os.sched_getaffinity(0)
    if args.cores:
        os.sched_setaffinity(0, sorted(cores)[:args.cores])
    try:
        return _measure(args, argv)
    finally:
        os.sched_setaffinity(0, cores)


def _measure(args, argv: list[str] | None) -> int:
    command = "bench/evaluation.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    from ncf import gate
    from ncf.data import load_partition
    from ncf.evaluate import evaluate
    from ncf.package import load_package
    from ncf.ranking import all_cores, process_cores, sampled_ranks
    from tests.tiny_data import write_partition

    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-evaluation-") as tmp:
        started = time.perf_counter()
        partition = synthetic_partition(args.users, args.items, args.per_user)
        uri = write_partition(partition, Path(tmp) / "data" / "dt=2026-01-01")
        challenger = default_package(Path(tmp) / "models" / "challenger", partition, 0, args.members, args.model)
        champion = default_package(Path(tmp) / "models" / "champion", partition, 1, args.members, args.model)
        rows.append(("setup (synthetic partition + 2 packages written; not part of the target)",
                     f"{time.perf_counter() - started:.1f} s"))

        # 1. the train step's final evaluation: the fitted model's scorer on the partition in memory
        scorer = load_package(challenger).scorer
        clock = Clock()
        with all_cores():
            sampled = sampled_ranks(scorer, partition.test_users, partition.test_items, partition.test_negatives)
        assert sampled.size == args.users
        rows.append((f"of which: the sampled protocol alone, {args.users:,} users x 100 candidates", clock.lap()))
        with all_cores():
            result = evaluate(scorer, partition, 10, full_eval_users=args.full_eval_users)
        sample = result.metrics()[contracts.FULL_EVAL_USERS]
        rows.append((f"train step's final evaluation (sampled over {args.users:,} users, full ranking over "
                     f"{sample:,})", clock.lap()))
        total = clock.seconds

        # 2. the gate: load the partition and both packages, score both on the same rows
        loaded = load_partition(uri)
        packages = [load_package(challenger), load_package(champion)]
        rows.append(("gate: load the partition and both packages", clock.lap()))
        total += clock.seconds
        gate.score_packages(packages, loaded, "ndcg@10", args.full_eval_users)
        rows.append(("gate: score challenger and champion on the same rows (score_packages)", clock.lap()))
        total += clock.seconds
        rows += [("**train-step evaluation + gate (target <= 300 s on 2 cores)**", f"**{total:.1f} s**"),
                 ("peak RSS of this process", f"{peak_rss_gb():.1f} GB")]

    header = (f"## Evaluation and gate at scale ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {host()}, "
              f"{process_cores()} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f})")
    report = (f"\n{header}\n\n`{command}`: {args.users:,} users x {args.items:,} items, {args.per_user} training "
              f"rows per user, {args.model} x{args.members}\n\n{table(rows)}\n")
    publish(report, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
