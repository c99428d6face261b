"""The train step end to end on a GPU for every model family: fit, final evaluation (on the device for NCF), export.

    .venv/bin/python bench/gpu_families.py                      # a lent GPU machine (bench/gpu_check.sh runs it)
    .venv/bin/python bench/gpu_families.py --device cpu --tiny  # seconds on a CPU: checks the script itself

On a synthetic partition (Zipf-popular items; 20,000 users x 5,000 items, 20 training rows each; --tiny: 300 x 200)
it runs `ncf.train.run --device <device>` for each family with small settings (NCF: NeuMF pretrained, 2 epochs per
stage, an ensemble of 2, batch 8192), loads each package back and checks its scorer against its own metrics. iALS
uses implicit's CUDA solver only when the installed implicit was built with CUDA; the table says which ran.
Prints one row per family and appends the table to bench/RESULTS.md (unless --tiny with the default --results).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.evaluation import synthetic_partition  # noqa: E402

FULL = {"users": 20_000, "items": 5_000, "per_user": 20}
TINY = {"users": 300, "items": 200, "per_user": 8}
SETTINGS = {
    "ncf": {"epochs": 2, "ensemble": 2, "batch_size": 8192, "lr": 0.004},
    "ease": {},
    "ials": {"ials_iterations": 5},
    "popularity": {},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny synthetic data: a smoke check of this script")
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="markdown file to append to")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device visible to torch (use --device cpu --tiny for a smoke check)", file=sys.stderr)
        return 2

    import implicit.gpu

    from ncf.evaluate import evaluate
    from ncf.package import load_package
    from ncf.train import TrainConfig, run
    from tests.tiny_data import write_partition

    sizes = TINY if args.tiny else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-families-") as tmp:
        partition = synthetic_partition(sizes["users"], sizes["items"], sizes["per_user"])
        uri = write_partition(partition, Path(tmp) / "data" / "dt=2026-01-01")
        for family, settings in SETTINGS.items():
            started = time.perf_counter()
            result = run(TrainConfig(partition_uri=uri, output_uri=str(Path(tmp) / "models" / family), family=family,
                                     candidates="", device=args.device, progress="off", **settings))
            seconds = time.perf_counter() - started
            package = load_package(result.model_uri)
            again = evaluate(package.scorer, partition, 10, full_ranking=False)
            agrees = abs(again.hr - result.metrics["hr@10"]) < 1e-6
            solver = ("implicit.gpu" if implicit.gpu.HAS_CUDA and args.device.startswith("cuda") else "CPU") \
                if family == "ials" else args.device
            rows.append(f"| {family} | {solver} | {seconds:.1f} s | {result.metrics['hr@10']:.4f} / "
                        f"{result.metrics['full_hr@10']:.4f} | {'yes' if agrees else 'NO'} |")
            if not agrees:
                print(f"error: {family}: the loaded package scores hr@10 {again.hr} against the train step's "
                      f"{result.metrics['hr@10']}", file=sys.stderr)
                return 1
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    table = "\n".join(["| family | fitted on | train step (fit + evaluation + export) | hr@10 / full_hr@10 | "
                       "package scores the same |", "|---|---|---|---|---|", *rows])
    report = (f"\n## The train step on {device}, every family ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)\n\n"
              f"`bench/gpu_families.py {shlex.join(argv if argv is not None else sys.argv[1:])}`: "
              f"{sizes['users']:,} users x {sizes['items']:,} items, {sizes['per_user']} rows per user\n\n{table}\n")
    print(report)
    if not args.tiny or args.results != parser.get_default("results"):
        with open(args.results, "a") as out:
            out.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
