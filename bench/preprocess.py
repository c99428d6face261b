"""Benchmark the preprocessing job end to end (read -> partition written) on synthetic logs.

    .venv/bin/python bench/preprocess.py            # 1M and 10M events, local[2]
    .venv/bin/python bench/preprocess.py --quick    # 100k events: a smoke check
    .venv/bin/python bench/preprocess.py --sizes 3000000 --master 'local[4]'

The synthetic logs are generated once per size and seed and reused (`--data-dir`); generation is not timed.
Prints a table of seconds per stage and events/s, and appends it to bench/RESULTS.md with the command line.
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

from bench.report import host  # noqa: E402
from ncf import storage  # noqa: E402
from spark import generate  # noqa: E402
from spark.preprocess import PreprocessConfig, run  # noqa: E402

STAGES = ("read_deduplicate", "filter", "index", "split", "negatives", "fingerprint", "publish")


def _events(data_dir: Path, num_events: int, seed: int, master: str) -> Path:
    path = data_dir / f"events-{num_events}-seed{seed}"
    if not storage.is_complete(path):
        print(f"generating {num_events:,} events -> {path} (once)", flush=True)
        generate.run(generate.GenerateConfig(output_uri=str(path), num_events=num_events, seed=seed, master=master))
    return path


def _row(num_events: int, stats: dict) -> dict:
    stages = stats["stage_seconds"]
    job = sum(stages.get(name, 0.0) for name in STAGES)
    return {
        "events": num_events,
        "users": stats["num_users"],
        "items": stats["num_items"],
        "job_s": job,
        "events_per_s": num_events / job,
        **{name: stages.get(name, 0.0) for name in STAGES},
    }


def _table(rows: list[dict], spark_start: float) -> str:
    head = ["events", "users", "items", *STAGES, "job s", "events/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['events']:,}", f"{r['users']:,}", f"{r['items']:,}"]
        cells += [f"{r[name]:.1f}" for name in STAGES]
        cells += [f"{r['job_s']:.1f}", f"{r['events_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nSpark session start (once, not in job s): {spark_start:.1f}s. "
                 "job s = read -> partition published (stages above).")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        lines.append(
            f"Scaling {a['events']:,} -> {b['events']:,} events: time x{b['job_s'] / a['job_s']:.1f} "
            f"for x{b['events'] / a['events']:.0f} data."
        )
    by_size = {r["events"]: r for r in rows}
    if 10_000_000 in by_size:
        ten = by_size[10_000_000]
        total = ten["job_s"] + spark_start
        lines.append(f"Target 10M events < 300 s with the session start: {total:.0f} s -> {'met' if total < 300 else 'MISSED'}.")
        if 1_000_000 in by_size:
            ratio = ten["job_s"] / by_size[1_000_000]["job_s"]
            lines.append(f"Target 10M time <= 12 x 1M time: x{ratio:.1f} -> {'met' if ratio <= 12 else 'MISSED'}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k events only (smoke check)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated event counts")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=REPO / "runs" / "bench" / "data")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results file")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([100_000] if args.quick else [1_000_000, 10_000_000])

    from spark.session import get_spark

    started = time.perf_counter()
    get_spark(args.master, app_name="ncf-bench-preprocess")
    spark_start = time.perf_counter() - started
    inputs = {n: _events(args.data_dir, n, args.seed, args.master) for n in sizes}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ncf-bench-") as root:
        for n in sizes:
            print(f"preprocessing {n:,} events ...", flush=True)
            # every size writes the same date: each replaces the previous one (partitions refuse that by default)
            result = run(PreprocessConfig(input_uri=str(inputs[n]), storage_root=root, run_date="2026-01-01", master=args.master,
                                          overwrite=True))
            rows.append(_row(n, result.stats))
            print(f"  {rows[-1]['job_s']:.1f}s, {rows[-1]['events_per_s']:,.0f} events/s", flush=True)
    table = _table(rows, spark_start)
    print(table)
    if not args.no_record:
        command = "python bench/preprocess.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        header = (
            f"\n## preprocess — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"`{command.strip()}` — master {args.master}, {os.cpu_count()} CPUs, {host()}, "
            f"load average at the end {load:.1f}\n\n"
        )
        with args.results.open("a") as handle:
            handle.write(header + table + "\n")
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
