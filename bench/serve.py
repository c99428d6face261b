"""Serving benchmark: the NCF predictor on 127.0.0.1 (1 worker), V1 REST, V2 REST and gRPC.

Targets (ML-100K-sized model, 1,682 items): p50 <= 2 ms and p99 <= 10 ms at concurrency 1, >= 800 req/s at
concurrency 8 (V1 REST). A plain KServe custom model (constant answer) is measured in the same run as the
baseline, so the NCF cost shows up as the difference even on a busy machine.

    python bench/serve.py [--quick] [--model-uri PACKAGE|models:/ncf@champion --tracking-uri URI]

Without --model-uri a freshly initialised NeuMF of the seed's sizes (943 users, 1,682 items, factor_num 32,
num_layers 3) is used: latency does not depend on the weights. Prints a table and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "RESULTS.md"
TARGET_P50_MS, TARGET_P99_MS, TARGET_RPS = 2.0, 10.0, 800.0


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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                start_new_session=True)
    _wait_ready(port, proc, log)
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
            throughput_seconds: float) -> dict:
    asyncio.run(_run(protocol, port, grpc_port, users, 1, 100, 10))  # warm-up: connections, first requests
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
    args = parser.parse_args(argv)
    if args.baseline_server:
        baseline_server(*args.baseline_server)
        return 0
    latency_requests, seconds = (300, 2.0) if args.quick else (3000, 10.0)

    with tempfile.TemporaryDirectory(prefix="ncf-bench-serve-") as tmp:
        tmp = Path(tmp)
        model_uri = args.model_uri or fresh_package(tmp / "package")
        from ncf.package import load_package

        user_ids = load_package(model_uri).user_ids if not model_uri.startswith("models:/") else None
        rng = random.Random(0)
        users = rng.sample(user_ids, min(512, len(user_ids))) if user_ids else [str(i) for i in range(1, 513)]

        servers = {}
        port, grpc_port = _free_port(), _free_port()
        command = [sys.executable, "-m", "serving.server", "--model-uri", model_uri, "--http-port", str(port),
                   "--grpc-port", str(grpc_port)]
        if args.tracking_uri:
            command += ["--tracking-uri", args.tracking_uri]
        servers["ncf"] = (command, port, grpc_port)
        if not args.no_baseline:
            b_port, b_grpc = _free_port(), _free_port()
            servers["kserve baseline"] = ([sys.executable, str(Path(__file__).resolve()), "--baseline-server",
                                           str(b_port), str(b_grpc)], b_port, b_grpc)
        rows = []
        load_before = os.getloadavg()[0]
        for name, (cmd, http_port, g_port) in servers.items():
            proc = start(cmd, http_port, tmp / f"{name.replace(' ', '-')}.log")
            try:
                for protocol in ("v1", "v2", "grpc"):
                    result = measure(protocol, http_port, g_port, users, latency_requests, seconds)
                    rows.append({"server": name, "protocol": protocol, **result})
                    print(f"  {name:16s} {protocol:5s} p50 {result['p50']:.2f} ms  p99 {result['p99']:.2f} ms  "
                          f"{result['rps']:.0f} req/s (c=8)  errors {result['errors']}", flush=True)
            finally:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)

    table = render(rows, args, load_before, list(sys.argv[1:] if argv is None else argv))
    print("\n" + table)
    with open(args.results, "a") as out:
        out.write(table + "\n")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def render(rows: list[dict], args, load_before: float, argv: list[str]) -> str:
    names = {"v1": "V1 REST", "v2": "V2 REST", "grpc": "gRPC"}
    command = " ".join(["python bench/serve.py", *argv])
    lines = [
        "",
        f"## serve — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC{' (quick: not a measurement)' if args.quick else ''}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPUs, load average {load_before:.1f} at start; 1 server worker, client in "
        f"another process; model: {args.model_uri or 'fresh NeuMF 943 users x 1,682 items, factor_num 32, 3 layers'}",
        "",
        "| server | protocol | p50 c=1 (ms) | p99 c=1 (ms) | req/s c=8 | p99 c=8 (ms) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['server']} | {names[r['protocol']]} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | "
              f"{r['c8_p99']:.2f} | {r['errors']} |" for r in rows]
    v1 = next(r for r in rows if r["server"] == "ncf" and r["protocol"] == "v1")
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines += ["", f"Targets (ncf, V1 REST): p50 <= {TARGET_P50_MS} ms {verdict(v1['p50'] <= TARGET_P50_MS)}; "
                  f"p99 <= {TARGET_P99_MS} ms {verdict(v1['p99'] <= TARGET_P99_MS)}; "
                  f">= {TARGET_RPS:.0f} req/s {verdict(v1['rps'] >= TARGET_RPS)}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
