"""Serving benchmark: the NCF predictor on 127.0.0.1 (1 worker), V1 REST, V2 REST and gRPC.

Targets (ML-100K-sized model, 1,682 items): p50 <= 2 ms and p99 <= 10 ms at concurrency 1, >= 800 req/s at
concurrency 8 (V1 REST). A plain KServe custom model (constant answer) is measured in the same run as the
baseline, so the NCF cost shows up as the difference even on a busy machine.

    python bench/serve.py [--quick] [--model-uri PACKAGE|models:/ncf@champion --tracking-uri URI]
    python bench/serve.py --items 1000000 --users 1000000 --protocols v1 --package-dir runs/bench-serve-1m

Without --model-uri a freshly initialised NeuMF of the seed's sizes (943 users, 1,682 items, factor_num 32,
num_layers 3) is used: latency does not depend on the weights. Prints a table and appends it to bench/RESULTS.md.

With --items a large synthetic catalogue is measured instead: a package of NCF's recommended NeuMF shape (factor_num
32, 2-layer tower, a 3-model ensemble; `--model-type GMF`: the GMF ensemble that model selection's default NCF
candidate exports; `--model-type blend`: that GMF ensemble blended half and half with an iALS model of 64 factors,
what the default candidates can export where EASE refuses the catalogue) built directly through the package writer,
no training: embeddings drawn
around topic centres (users near the centre of their topic, items near theirs) so the inner products have the
structure of a trained model's, towers at their initialisation. The package is written with its retrieval index
(ncf/retrieval.py); the predictor is started twice, `--retrieval exact` (every item scored per request) and
`--retrieval ann` (two-stage), next to the same-run KServe baseline. Also reported: the predictor's resident
memory (VmRSS after loading, and its peak VmHWM after the measurements). Targets at 1M items (two-stage, V1 REST):
p50 <= 3 ms, p99 <= 10 ms, >= 500 req/s at c=8.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import host
from ncf.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "RESULTS.md"
TARGET_P50_MS, TARGET_P99_MS, TARGET_RPS = 2.0, 10.0, 800.0
LARGE_TARGETS = (3.0, 10.0, 500.0)  # two-stage at 1M items: p50 ms, p99 ms, req/s at c=8


# ---- model and servers -----------------------------------------------------------------------------------------

def fresh_package(directory: Path, num_users: int = 943, num_items: int = 1682, interactions: int = 100_000) -> str:
    """An ML-100K-shaped package: NeuMF at the seed sizes, random training interactions for seen/popularity."""
    import torch

    from ncf.data import Partition
    from ncf.families.ncf import export
    from ncf.models import ModelSpec, build_model
    from ncf.package import package_tables, save_package

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    users = rng.integers(0, num_users, interactions).astype(np.int32)
    items = rng.zipf(1.3, interactions).astype(np.int64) % num_items
    empty = np.zeros(0, dtype=np.int32)
    partition = Partition(
        uri="memory://bench", train_users=users, train_items=items.astype(np.int32),
        train_ts=np.zeros(interactions, dtype=np.int64), test_users=empty, test_items=empty,
        test_negatives=np.zeros((0, 99), dtype=np.int32),
        user_ids=np.asarray([str(u + 1) for u in range(num_users)], dtype=object),
        item_ids=np.asarray([str(i + 1) for i in range(num_items)], dtype=object), stats={})
    model = build_model(ModelSpec("NeuMF", num_users, num_items, factor_num=32, num_layers=3)).eval()
    return save_package(directory, export(model), **package_tables(partition), metrics={})


def structured_package(directory: Path, num_users: int, num_items: int, *, model_type: str = "NeuMF",
                       members: int = 3, factor_num: int = 32, num_layers: int = 2, topics: int = 2000,
                       per_user: int = 20, seed: int = 0) -> str:
    """A package of NCF's shape (`model_type` NeuMF or GMF; blend: GMF blended with iALS) over a large synthetic
    catalogue, without training: each user and item has a topic; every embedding is its topic's centre (per member
    and branch) plus noise, so a user's best items by inner product are mostly items of their topic, as after
    training. Towers keep their initialisation. Training rows (seen items, popularity): `per_user` items per user,
    80% from the user's topic."""
    import torch

    from ncf.data import Partition
    from ncf.families.ncf import export
    from ncf.models import ModelSpec, build_model, ensemble_of
    from ncf.package import package_tables, save_package
    from ncf.retrieval import RetrievalSettings

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    item_topic = rng.integers(0, topics, num_items)
    user_topic = rng.integers(0, topics, num_users)

    def around_topics(width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item tables [*, width]: their topic's centre plus noise (items noisier)."""
        centres = torch.randn(topics, width, generator=gen)
        return tuple((centres[torch.as_tensor(topic)] + noise * torch.randn(len(topic), width, generator=gen))
                     / width ** 0.5 for topic, noise in ((user_topic, 0.3), (item_topic, 0.6)))

    ncf_type = "GMF" if model_type == "blend" else model_type
    spec = ModelSpec(ncf_type, num_users, num_items, factor_num=factor_num, num_layers=num_layers)
    models = []
    for _ in range(members):
        torch.manual_seed(int(rng.integers(1 << 31)))
        model = build_model(spec).eval()
        with torch.no_grad():
            branches = [(model.embed_user_GMF.weight, model.embed_item_GMF.weight)]
            if ncf_type == "NeuMF":
                branches.append((model.embed_user_MLP.weight, model.embed_item_MLP.weight))
            for user_table, item_table in branches:
                for table, values in zip((user_table, item_table), around_topics(user_table.shape[1]), strict=True):
                    table.copy_(values)
        models.append(model)
    model = models[0] if members == 1 else ensemble_of(models).eval()
    exported = _blend_with_ials(model, *around_topics(64)) if model_type == "blend" else export(model)
    by_topic = np.argsort(item_topic, kind="stable")
    starts = np.searchsorted(item_topic[by_topic], np.arange(topics + 1))
    users = np.repeat(np.arange(num_users), per_user)
    topic = user_topic[users]
    size = np.maximum(starts[topic + 1] - starts[topic], 1)
    own = by_topic[np.minimum(starts[topic] + (rng.random(users.size) * size).astype(np.int64), num_items - 1)]
    items = np.where(rng.random(users.size) < 0.8, own, rng.integers(0, num_items, users.size))
    pairs = np.unique(users.astype(np.int64) * num_items + items)
    users, items = (pairs // num_items).astype(np.int32), (pairs % num_items).astype(np.int32)
    empty = np.zeros(0, dtype=np.int32)
    partition = Partition(
        uri="memory://bench", train_users=users, train_items=items, train_ts=np.zeros(users.size, dtype=np.int64),
        test_users=empty, test_items=empty, test_negatives=np.zeros((0, 99), dtype=np.int32),
        user_ids=np.asarray([f"u{u}" for u in range(num_users)], dtype=object),
        item_ids=np.asarray([f"i{i}" for i in range(num_items)], dtype=object), stats={})
    uri = save_package(directory, exported, **package_tables(partition), metrics={},
                       retrieval=RetrievalSettings(), extra={"synthetic": "bench/serve.py structured_package"})
    print(f"wrote {num_users:,} users x {num_items:,} items ({members} x "
          f"{describe_model(model_type, factor_num, num_layers)}; index included) to {directory} in "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    return uri


def _blend_with_ials(model, user_factors, item_factors):
    """The package contents of `model` (an NCF) and an iALS model of these factors, weighed half and half, each
    scaled by its scores' standard deviation over a sample of (user, item) pairs (as selection scales them)."""
    import torch

    from ncf.families.base import ExportedModel, FitResult, InnerProductScorer
    from ncf.families.blend import Member, blend
    from ncf.families.ncf import export
    from ncf.scoring import ItemScorer
    from ncf.selection import score_scale

    gen = torch.Generator().manual_seed(1)
    users = torch.randint(0, user_factors.shape[0], (2000,), generator=gen)
    items = torch.randint(0, item_factors.shape[0], (2000, 100), generator=gen)
    ials = ExportedModel("ials", {"user_factors": user_factors.contiguous(), "item_factors": item_factors.contiguous()},
                         {"num_users": user_factors.shape[0], "num_items": item_factors.shape[0],
                          "factors": user_factors.shape[1], "score": "dot"})
    fitted = [("GMF", FitResult(ItemScorer(model), export(model), {})),
              ("ials", FitResult(InnerProductScorer(user_factors, item_factors), ials, {}))]
    members = [Member(name, fit, 0.5, score_scale(fit.scorer.score_candidates(users, items).numpy()))
               for name, fit in fitted]
    return blend(members, {}).exported


def describe_model(model_type: str, factor_num: int = 32, num_layers: int = 2) -> str:
    if model_type == "blend":
        return f"blend: GMF factor_num {factor_num} (weight 0.5) + iALS 64 factors (0.5)"
    return f"{model_type} factor_num {factor_num}" + (f", {num_layers} layers" if model_type == "NeuMF" else "")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def baseline_server(http_port: int, grpc_port: int) -> None:
    """A plain KServe custom model with a constant answer (the floor any KServe predictor pays)."""
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv on import
    import logging

    import kserve
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class Constant(kserve.Model):
        def __init__(self):
            super().__init__("ncf")
            self.ready = True

        def predict(self, payload, headers=None, response_headers=None):
            if isinstance(payload, InferRequest):
                return InferResponse(response_id=payload.id or "0", model_name=self.name, infer_outputs=[
                    InferOutput("item_ids", [1, 10], "BYTES", [str(i) for i in range(10)])])
            return {"predictions": [{"item_ids": [str(i) for i in range(10)]}]}

    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1, enable_latency_logging=False)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start([Constant()])


def _wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/ncf/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text()[-2000:]}")


def start(command: list[str], port: int, log: Path, timeout: float = 120) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                start_new_session=True)
    _wait_ready(port, proc, log, timeout)
    return proc


# ---- load generators -------------------------------------------------------------------------------------------

def v1_body(user: str) -> bytes:
    return json.dumps({"instances": [{"user_id": user, "k": 10, "exclude_seen": True}]}).encode()


def v2_body(user: str) -> bytes:
    return json.dumps({"id": user, "inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user]},
        {"name": "k", "datatype": "INT32", "shape": [1], "data": [10]}]}).encode()


def _http_requests(port: int, path: str, bodies: list[bytes]) -> list[bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    return [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]


async def _http_worker(port: int, requests: list[bytes], count: int | None, until: float, latencies: list,
                       errors: list) -> None:
    """Keep-alive HTTP/1.1 over a raw socket: the client must cost far less than the server it measures."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    offset, sent = random.randrange(len(requests)), 0
    try:
        while (count is None or sent < count) and time.perf_counter() < until:
            start_t = time.perf_counter()
            writer.write(requests[(offset + sent) % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start_t)
            if status != b"200":
                errors.append(status)
            sent += 1
    finally:
        writer.close()


async def _grpc_worker(stub, requests: list, count: int | None, until: float, latencies: list, errors: list) -> None:
    import grpc

    offset, sent = random.randrange(len(requests)), 0
    while (count is None or sent < count) and time.perf_counter() < until:
        start_t = time.perf_counter()
        try:
            await stub.ModelInfer(requests[(offset + sent) % len(requests)])
        except grpc.aio.AioRpcError as exc:
            errors.append(exc.code())
        latencies.append(time.perf_counter() - start_t)
        sent += 1


async def _run(protocol: str, port: int, grpc_port: int, users: list[str], concurrency: int, count: int | None,
               seconds: float) -> dict:
    latencies: list[float] = []
    errors: list = []
    until = time.perf_counter() + seconds
    if protocol == "grpc":
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        reqs = [pb.ModelInferRequest(model_name="ncf", id=u, inputs=[
            pb.ModelInferRequest.InferInputTensor(name="user_id", datatype="BYTES", shape=[1],
                                                  contents=pb.InferTensorContents(bytes_contents=[u.encode()])),
            pb.ModelInferRequest.InferInputTensor(name="k", datatype="INT32", shape=[1],
                                                  contents=pb.InferTensorContents(int_contents=[10]))])
                for u in users]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            start_t = time.perf_counter()
            await asyncio.gather(*(_grpc_worker(stub, reqs, count, until, latencies, errors)
                                   for _ in range(concurrency)))
    else:
        path, make = ("/v1/models/ncf:predict", v1_body) if protocol == "v1" else ("/v2/models/ncf/infer", v2_body)
        reqs = _http_requests(port, path, [make(u) for u in users])
        start_t = time.perf_counter()
        await asyncio.gather(*(_http_worker(port, reqs, count, until, latencies, errors)
                               for _ in range(concurrency)))
    elapsed = time.perf_counter() - start_t
    ms = np.asarray(latencies) * 1000
    return {"n": len(latencies), "errors": len(errors), "rps": len(latencies) / elapsed,
            "p50": float(np.percentile(ms, 50)) if ms.size else float("nan"),
            "p99": float(np.percentile(ms, 99)) if ms.size else float("nan")}


def measure(protocol: str, port: int, grpc_port: int, users: list[str], latency_requests: int,
            throughput_seconds: float, warmup: int = 100) -> dict:
    asyncio.run(_run(protocol, port, grpc_port, users, 1, warmup, 10))  # warm-up: connections, first requests
    latency = asyncio.run(_run(protocol, port, grpc_port, users, 1, latency_requests, 600))
    throughput = asyncio.run(_run(protocol, port, grpc_port, users, 8, None, throughput_seconds))
    return {"p50": latency["p50"], "p99": latency["p99"], "rps": throughput["rps"], "c8_p99": throughput["p99"],
            "errors": latency["errors"] + throughput["errors"]}


# ---- the benchmark ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/serve.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    parser.add_argument("--model-uri", default="", help="package or models:/ URI (default: a fresh NeuMF)")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI for a models:/ --model-uri")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain KServe baseline")
    parser.add_argument("--results", default=str(RESULTS), help="markdown file the table is appended to")
    parser.add_argument("--baseline-server", nargs=2, type=int, metavar=("HTTP", "GRPC"), help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, default=0,
                        help="measure a synthetic catalogue of this many items (exact and two-stage) instead")
    parser.add_argument("--users", type=int, default=0, help="with --items: users in the package (default: --items)")
    parser.add_argument("--model-type", default="NeuMF", choices=("NeuMF", "GMF", "blend"),
                        help="with --items: the synthetic package's model (GMF: what model selection exports for NCF "
                             "by default; blend: that GMF ensemble blended with iALS)")
    parser.add_argument("--package-dir", default="", help="with --items: build the package here once and reuse it "
                                                          "(default: a temporary directory)")
    parser.add_argument("--protocols", default="v1,v2,grpc", help="comma-separated: v1, v2, grpc")
    parser.add_argument("--two-stage-flags", default="",
                        help="with --items: more `ncfctl serve` flags for the two-stage server, e.g. "
                             "'--retrieval-candidates 500 --retrieval-nprobe 16'")
    parser.add_argument("--skip-exact", action="store_true", help="with --items: measure the two-stage path only")
    parser.add_argument("--exact-requests", type=int, default=30,
                        help="with --items: latency requests for the exact path (each scores every item)")
    args = parser.parse_args(argv)
    if args.baseline_server:
        baseline_server(*args.baseline_server)
        return 0
    latency_requests, seconds = (300, 2.0) if args.quick else (3000, 10.0)
    protocols = [p for p in args.protocols.split(",") if p]

    with tempfile.TemporaryDirectory(prefix="ncf-bench-serve-") as tmp:
        tmp = Path(tmp)
        if args.items:
            directory = Path(args.package_dir) if args.package_dir else tmp / "package"
            from ncf import storage

            model_uri = str(directory) if storage.is_complete(str(directory)) else structured_package(
                directory, args.users or args.items, args.items, model_type=args.model_type)
            config = json.loads((directory / "config.json").read_text())
            built = config.get("model_type") or config["family"]
            if built != args.model_type:
                raise SystemExit(f"error: --package-dir {directory} holds a {built} package, not --model-type "
                                 f"{args.model_type}: use another directory")
        else:
            model_uri = args.model_uri or fresh_package(tmp / "package")
        from ncf.package import load_package

        user_ids = load_package(model_uri).user_ids if not model_uri.startswith("models:/") else None
        rng = random.Random(0)
        users = rng.sample(user_ids, min(512, len(user_ids))) if user_ids else [str(i) for i in range(1, 513)]
        del user_ids

        servers = {}
        common = ["--tracking-uri", args.tracking_uri] if args.tracking_uri else []
        paths = {"ncf exact": ["--retrieval", "exact"],
                 "ncf two-stage": ["--retrieval", "ann", *shlex.split(args.two_stage_flags)]} if args.items \
            else {"ncf": []}
        if args.skip_exact:
            paths.pop("ncf exact", None)
        for name, flags in paths.items():
            port, grpc_port = free_port(), free_port()
            servers[name] = ([sys.executable, "-m", "serving.server", "--model-uri", model_uri, "--http-port",
                              str(port), "--grpc-port", str(grpc_port), *common, *flags], port, grpc_port)
        if not args.no_baseline:
            b_port, b_grpc = free_port(), free_port()
            servers["kserve baseline"] = ([sys.executable, str(Path(__file__).resolve()), "--baseline-server",
                                           str(b_port), str(b_grpc)], b_port, b_grpc)
        rows, memory = [], {}
        load_before = os.getloadavg()[0]
        for name, (cmd, http_port, g_port) in servers.items():
            started = time.perf_counter()
            proc = start(cmd, http_port, tmp / f"{name.replace(' ', '-')}.log", timeout=1200 if args.items else 120)
            loaded_s = time.perf_counter() - started
            after_load = memory_kb(proc.pid)
            try:
                exact_large = args.items and name == "ncf exact"
                for protocol in protocols:
                    result = measure(protocol, http_port, g_port, users,
                                     args.exact_requests if exact_large else latency_requests, seconds,
                                     warmup=3 if exact_large else 100)
                    rows.append({"server": name, "protocol": protocol, **result})
                    print(f"  {name:16s} {protocol:5s} p50 {result['p50']:.2f} ms  p99 {result['p99']:.2f} ms  "
                          f"{result['rps']:.0f} req/s (c=8)  errors {result['errors']}", flush=True)
                memory[name] = {"load_s": loaded_s, "rss_load": after_load["VmRSS"],
                                **memory_kb(proc.pid)}
            finally:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)

    table = render(rows, args, load_before, list(sys.argv[1:] if argv is None else argv), memory)
    print("\n" + table)
    with open(args.results, "a") as out:
        out.write(table + "\n")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def render(rows: list[dict], args, load_before: float, argv: list[str], memory: dict | None = None) -> str:
    names = {"v1": "V1 REST", "v2": "V2 REST", "grpc": "gRPC"}
    command = shlex.join(["python", "bench/serve.py", *argv])
    if args.items:
        model = (f"synthetic {args.users or args.items:,} users x {args.items:,} items, "
                 f"{describe_model(args.model_type)}, 3-model NCF ensemble, structured random weights (no training), "
                 f"written by bench/serve.py "
                 f"structured_package with its retrieval index")
    else:
        model = args.model_uri or "fresh NeuMF 943 users x 1,682 items, factor_num 32, 3 layers"
    lines = [
        "",
        f"## serve — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC{' (quick: not a measurement)' if args.quick else ''}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {host()}, {os.cpu_count()} CPUs, load average {load_before:.1f} at start; 1 server worker, client in "
        f"another process; model: {model}",
        "",
        "| server | protocol | p50 c=1 (ms) | p99 c=1 (ms) | req/s c=8 | p99 c=8 (ms) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['server']} | {names[r['protocol']]} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | "
              f"{r['c8_p99']:.2f} | {r['errors']} |" for r in rows]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    if memory:
        lines += ["", "| server | load to ready (s) | VmRSS after load (MB) | VmRSS at the end (MB) | peak VmHWM (MB) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {m['load_s']:.0f} | {m['rss_load'] / 1024:,.0f} | {m['VmRSS'] / 1024:,.0f} | "
                  f"{m['VmHWM'] / 1024:,.0f} |" for name, m in memory.items()]
    main_row = "ncf two-stage" if args.items else "ncf"
    v1 = next((r for r in rows if r["server"] == main_row and r["protocol"] == "v1"), None)
    p50, p99, rps = LARGE_TARGETS if args.items else (TARGET_P50_MS, TARGET_P99_MS, TARGET_RPS)
    if v1 is not None:
        lines += ["", f"Targets ({main_row}, V1 REST): p50 <= {p50} ms {verdict(v1['p50'] <= p50)}; "
                      f"p99 <= {p99} ms {verdict(v1['p99'] <= p99)}; "
                      f">= {rps:.0f} req/s {verdict(v1['rps'] >= rps)}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
