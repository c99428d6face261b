"""Throughput and peak memory of the nightly top-K step (ncf/recommend.py) at growing sizes, on synthetic packages.

    .venv/bin/python bench/recommend.py --users 10000 --items 20000                   # every user
    .venv/bin/python bench/recommend.py                                               # issue 14's size: 1M x 200k,
                                                                                       # GMF x3, two-stage (auto)
    .venv/bin/python bench/recommend.py --model NeuMF --retrieval exact --slice-users 2000   # timed on a slice
    .venv/bin/python bench/recommend.py --quick                                       # 10k x 20k, a smoke check

Builds a synthetic partition (--per-user Zipf-popular training items per user) and one package of --model (GMF,
a family model selection exports at this size: EASE refuses 200k items, a 160 GB item-item matrix, and iALS scores
alike; or NeuMF; factor 32, 2 MLP layers, a seed ensemble of --members; random weights: the cost does not depend on
them) written through ncf/package.py's writers (the retrieval index included), WITHOUT training. Then runs the step
as the pipeline does, in a subprocess (`python -m ncf.recommend --model-uri <package> --output-uri <dir> ...`, every core of this process,
--device as given), and reports its wall time, its throughput in users/s and scored (user, item) pairs/s, and its
peak RSS (the subprocess alone: ru_maxrss of the waited child). With --slice-users N only users [0, N) are scored
(`--user-range 0:N`: the same code path, the whole package loaded); the time for every user is then extrapolated
linearly (users are independent, each chunk costs the same) and marked as such. Appends the table, with the
command, to bench/RESULTS.md (--results).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.report import host, publish, table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke check: 10,000 users x 20,000 items")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--per-user", type=int, default=10, help="training (seen) items per user")
    parser.add_argument("--members", type=int, default=3, help="seed-ensemble members (the train step's default: 3)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk-users", type=int, default=20_000)
    parser.add_argument("--slice-users", type=int, default=0, help="score only users [0, N) and extrapolate; 0: all")
    parser.add_argument("--model", default="GMF", choices=("GMF", "NeuMF"))
    parser.add_argument("--retrieval", default="auto", choices=("auto", "exact", "ann"),
                        help="the step's --retrieval; when it takes the two-stage path, the overlap of its top-K with "
                             "the exact ranking is measured on --recall-users users")
    parser.add_argument("--retrieval-candidates", type=int, default=0, help="the step's (0: the package's)")
    parser.add_argument("--retrieval-nprobe", type=int, default=0, help="the step's (0: the package's)")
    parser.add_argument("--recall-users", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--workdir", default="", help="where the package and output go (default: a temp dir)")
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.items = 10_000, 20_000
    command = "bench/recommend.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="bench-recommend-", dir=args.workdir or None) as tmp:
        rows = _measure(args, Path(tmp))
    import torch

    from ncf.ranking import process_cores

    device = "cpu" if args.device == "cpu" or not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    header = (f"## Nightly top-K at scale ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {host()}, "
              f"{process_cores()} cores, device {device}, torch {torch.__version__}, load average "
              f"{os.getloadavg()[0]:.1f})")
    report = (f"\n{header}\n\n`{command}`: {args.users:,} users x {args.items:,} items, {args.per_user} seen items "
              f"per user, {args.model} x{args.members} (synthetic package, not trained), K = {args.k}\n\n{table(rows)}\n")
    publish(report, args.results)
    return 0


def _measure(args, tmp: Path) -> list[tuple[str, str]]:
    from bench.evaluation import default_package, synthetic_partition

    rows: list[tuple[str, str]] = []
    started = time.perf_counter()
    partition = synthetic_partition(args.users, args.items, args.per_user)
    package = default_package(tmp / "models" / "synthetic", partition, 0, args.members, args.model)
    del partition
    size = sum(f.stat().st_size for f in Path(package).iterdir()) / 2**30
    rows.append(("setup: synthetic package written (not part of the step)",
                 f"{time.perf_counter() - started:.1f} s, {size:.2f} GB on disk"))

    users = min(args.slice_users, args.users) if args.slice_users else args.users
    output = tmp / "recommendations" / "dt=2026-01-01"
    # A slice is one chunk-aligned range: chunks no larger than it, so exactly `users` users are scored.
    chunk = min(args.chunk_users, users)
    cmd = [sys.executable, "-m", "ncf.recommend", "--model-uri", str(package), "--output-uri", str(output),
           "--recommend-k", str(args.k), "--chunk-users", str(chunk), "--device", args.device,
           "--retrieval", args.retrieval, "--retrieval-candidates", str(args.retrieval_candidates),
           "--retrieval-nprobe", str(args.retrieval_nprobe)]
    if args.slice_users:
        cmd += ["--user-range", f"0:{users}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - wall
    if proc.returncode != 0:
        raise SystemExit(f"ncf.recommend failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss = after.ru_maxrss / 2**20
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    line = proc.stdout.strip().splitlines()[-1]
    settings = _retrieval(args, Path(package))
    mode = "exact (score_all)" if settings is None else \
        f"two-stage: {settings.candidates} candidates from the IVF index (nprobe {settings.nprobe}), re-ranked"
    rows.append((f"step wall time, {users:,} users, {mode} (process start, package load, scoring, Parquet, "
                 f"publish)", f"{seconds:.1f} s ({cpu:.1f} CPU s)"))
    pairs = users * (settings.candidates if settings is not None else args.items)
    rows.append(("throughput", f"{users / seconds:,.1f} users/s; {pairs / seconds / 1e6:,.3f}M (user, item) pairs "
                               f"through the family's scorer per s, {pairs / max(cpu, 1e-9) / 1e6:,.3f}M per CPU s"))
    if args.slice_users and users < args.users:
        rows.append((f"**extrapolated to all {args.users:,} users** (linear in users; startup counted once per "
                     f"slice, so an upper bound)", f"**{seconds * args.users / users / 60:.1f} min**"))
    else:
        rows.append(("**all users**", f"**{seconds / 60:.2f} min**"))
    rows.append(("peak RSS of the step's process", f"{rss:.2f} GB"))
    if settings is not None:
        rows.append((f"overlap of the top-{args.k} with the exact ranking (recall@{args.k}; "
                     f"{min(args.recall_users, users):,} users)",
                     f"{_recall(args, package, output, tmp, min(args.recall_users, users)):.4f}"))
    rows.append(("step's own line", line.replace(str(tmp), "<tmp>").replace("|", "/")))
    return rows


def _retrieval(args, package: Path):
    """The retrieval settings the step runs with (ncf.recommend's own rule, on the package's config.json), None
    when it scores exactly."""
    import json

    from ncf.recommend import RecommendConfig, resolve_device, retrieval_settings

    flags = RecommendConfig(retrieval=args.retrieval, retrieval_candidates=args.retrieval_candidates,
                            retrieval_nprobe=args.retrieval_nprobe)
    package_config = json.loads((package / "config.json").read_text())
    settings = retrieval_settings(flags, package_config, resolve_device(args.device))
    inner_product = {"GMF": "exact", "NeuMF": "partial"}[args.model]  # ItemScorer's, for the model built above
    return settings if settings.two_stage(args.items, inner_product) else None


def _recall(args, package: str, output: Path, tmp: Path, users: int) -> float:
    """Mean |two-stage top-K ∩ exact top-K| / K over users [0, users) (the exact ranking computed here)."""
    import pyarrow.parquet as pq

    exact = tmp / "exact" / "dt=2026-01-01"
    subprocess.run([sys.executable, "-m", "ncf.recommend", "--model-uri", package, "--output-uri", str(exact),
                    "--recommend-k", str(args.k), "--chunk-users", str(users), "--user-range", f"0:{users}",
                    "--device", args.device, "--retrieval", "exact"], cwd=REPO, check=True, capture_output=True)

    def top(root: Path) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for part in sorted(root.parent.rglob("part-*.parquet")):  # published or still in _staging (a slice)
            table = pq.read_table(part).to_pydict()
            for user, item in zip(table["user_id"], table["item_id"], strict=True):
                found.setdefault(user, set()).add(item)
        return found

    approx, reference = top(output), top(exact)
    common = [u for u in reference if u in approx]
    return sum(len(approx[u] & reference[u]) / max(1, len(reference[u])) for u in common) / max(1, len(common))


if __name__ == "__main__":
    sys.exit(main())
