"""GPU training throughput: NeuMF samples/s on synthetic ML-20M-sized data, fully offline.

    .venv/bin/python bench/gpu_train.py                      # H100/H200: the 40M samples/s target
    .venv/bin/python bench/gpu_train.py --device cpu --tiny  # seconds on a CPU: checks the script itself

The model and data shape follow NVIDIA's NCF benchmark: NeuMF, factor 64, MLP 256-256-128-64, batch 2^20, 4
negatives per positive, bf16 autocast, fused Adam; data is 138,493 users x 26,744 items x ~20M interactions
(ML-20M's size) drawn on the device from a Zipf-like item popularity. Negatives are EXACT (never a user's
positive; ncf/sampling.py), unlike NVIDIA's approximate ones. The timed epochs run the trainer's own epoch loop
(ncf.train.EpochRunner), negative sampling and shuffling included; the first epoch (warm-up, compilation) is not
timed. Prints one result line and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ncf.models import ModelSpec, build_model  # noqa: E402
from ncf.sampling import NegativeSampler  # noqa: E402
from ncf.train import EpochRunner, make_step  # noqa: E402

TARGET = 40e6
FULL = {"users": 138_493, "items": 26_744, "interactions": 20_000_263, "batch": 1 << 20}
TINY = {"users": 200, "items": 300, "interactions": 4_000, "batch": 1 << 10}


def synthetic(users: int, items: int, interactions: int, device: torch.device, seed: int):
    """Distinct (user, item) pairs with Zipf-like item popularity, generated on `device`."""
    g = torch.Generator(device=device).manual_seed(seed)
    u = torch.randint(0, users, (interactions,), device=device, generator=g)
    # Inverse-CDF of a truncated power law (exponent ~0.8): a long tail like real item popularity.
    r = torch.rand(interactions, device=device, generator=g, dtype=torch.float64)
    i = ((items ** 0.2 - 1) * r + 1) ** 5.0 - 1
    i = i.long().clamp_(0, items - 1)
    keys = torch.unique(u * items + i)
    return (keys // items), (keys % items)


def run(args) -> dict:
    device = torch.device(args.device)
    sizes = TINY if args.tiny else FULL
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    users, items = synthetic(sizes["users"], sizes["items"], sizes["interactions"], device, seed=0)
    # The sampler's index is built once from the training pairs (host numpy, seconds at this size).
    sampler = NegativeSampler(users.cpu().numpy(), items.cpu().numpy(), sizes["users"], sizes["items"], device)
    data_seconds = time.perf_counter() - t0
    spec = ModelSpec("NeuMF", sizes["users"], sizes["items"], factor_num=64, mlp_layers=(256, 256, 128, 64),
                     dropout=0.0)
    model = build_model(spec).to(device)
    batch = args.batch_size or sizes["batch"]
    # Large batches need a larger step; sqrt scaling from the seed's 0.001 at batch 256.
    lr = 0.001 * (batch / 256) ** 0.5
    step = make_step(model, lr, 0.0, device, compile_model=args.compile)
    runner = EpochRunner(step, users, items, sampler, num_neg=4, batch_size=batch)
    generator = torch.Generator(device=device).manual_seed(1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses = []
    t_warm = time.perf_counter()
    losses.append(float(runner.run(generator)) / runner.samples_per_rank)  # warm-up: allocator, compilation
    warmup_seconds = time.perf_counter() - t_warm
    sync()
    t1 = time.perf_counter()
    loss_sums = [runner.run(generator) for _ in range(args.epochs)]
    sync()
    seconds = time.perf_counter() - t1
    losses += [float(x) / runner.samples_per_rank for x in loss_sums]
    samples = runner.samples_per_rank * args.epochs
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "users": sizes["users"], "items": sizes["items"], "train_pairs": int(users.numel()),
        "batch": batch, "epochs_timed": args.epochs, "samples": samples, "seconds": round(seconds, 3),
        "samples_per_s": samples / seconds, "data_seconds": round(data_seconds, 2),
        "warmup_seconds": round(warmup_seconds, 2), "losses": [round(x, 4) for x in losses],
        "compile": bool(args.compile), "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny synthetic data: a smoke check of this script")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    parser.add_argument("--batch-size", type=int, default=0, help="default: 2^20 (2^10 with --tiny)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="markdown file to append to")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device visible to torch (use --device cpu --tiny for a smoke check)", file=sys.stderr)
        return 2
    result = run(args)
    verdict = "PASS" if result["samples_per_s"] >= TARGET else "below target"
    line = (f"NeuMF f64 MLP 256-256-128-64 batch {result['batch']:,} on {result['device']}: "
            f"{result['samples_per_s'] / 1e6:.2f}M samples/s ({verdict}: target {TARGET / 1e6:.0f}M/s)")
    print(line)
    print(json.dumps(result))
    if not args.tiny or args.results != parser.get_default("results"):
        command = "bench/gpu_check.sh" if not args.tiny else "bench/gpu_train.py " + shlex.join(argv or sys.argv[1:])
        with open(args.results, "a") as out:
            out.write(f"\n## GPU training throughput ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)\n\n"
                      f"`{command}`\n\n{line}\n\n```json\n{json.dumps(result)}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
