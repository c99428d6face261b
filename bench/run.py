"""`ncfctl bench <preprocess|train|serve|evaluation|scale|all> [options]`: run the benchmarks in bench/.

Each benchmark measures its targets as ratios against a baseline run in the same process, prints a table and
appends it (with the command) to bench/RESULTS.md. Options after the name go to the benchmark (`--quick`, ...).
`all` runs every one but `scale` (hours at its default sizes on a small machine: run it by name).
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "preprocess": "bench.preprocess",
    "train": "bench.train",
    "serve": "bench.serve",
    "evaluation": "bench.evaluation",
    "scale": "bench.scale",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: ncfctl bench {{{','.join(BENCHMARKS)},all}} [benchmark options, e.g. --quick]")
        return 0
    name, rest = argv[0], argv[1:]
    if name != "all" and name not in BENCHMARKS:
        print(f"error: unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)} or 'all'", file=sys.stderr)
        return 2
    status = 0
    for bench_name in [b for b in BENCHMARKS if b != "scale"] if name == "all" else [name]:
        status |= int(importlib.import_module(BENCHMARKS[bench_name]).main(rest) or 0)
    return status
