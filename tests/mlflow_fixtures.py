"""Real MLflow stores for tests: an embedded sqlite store, and an `mlflow server` on a throwaway PostgreSQL
cluster with S3 artifacts on the moto server (tests/conftest.py).

Test modules import the fixtures they use: `from tests.mlflow_fixtures import mlflow_server  # noqa: F401`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("NCF_PG_BIN", "/usr/lib/postgresql/15/bin"))


def stop_process_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a server started with `start_new_session=True`: its whole process group (workers too)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_runner() -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as `nobody` when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and `runuser` is missing: cannot start PostgreSQL as a non-root user")
    return [runuser, "-u", "nobody", "--"]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 with an empty `mlflow` database; yields its SQLAlchemy URL."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL not installed ({PG_BIN}/initdb missing; `bash scripts/ensure_postgres.sh` installs it)")
    runner = _pg_runner()
    root = Path(tempfile.mkdtemp(prefix="ncf-pg-"))
    if runner:
        shutil.chown(root, user="nobody")
    data, port = root / "data", free_port()
    try:
        subprocess.run(
            [*runner, str(PG_BIN / "initdb"), "-D", str(data), "--username=postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, text=True,
        )
        subprocess.run(
            [*runner, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "start",
             "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"],
            check=True, capture_output=True, text=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL cluster: {exc.stderr.strip() or exc}")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*runner, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment for boto3 / MLflow to use the moto server with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def mlflow_server(postgres_url, moto_server):
    """`mlflow server` backed by PostgreSQL with S3 (moto) artifacts; yields (tracking URL, artifact bucket).

    Artifacts go straight to S3 (`--no-serve-artifacts`), so a model version's source is an s3:// URI that a
    KServe storage initializer can download. Tests that talk to it must set `s3_env(moto_server)` themselves.
    """
    import boto3

    env = {**os.environ, **s3_env(moto_server)}
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="ncf-mlflow-server-", suffix=".log")[1])
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", postgres_url,
             "--default-artifact-root", f"s3://{bucket}/mlflow", "--no-serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, log, timeout=120)
        yield url, bucket
    finally:
        stop_process_group(proc)
        log.unlink(missing_ok=True)


# ---- tiny partitions and model packages (real files through ncf.package / the partition contract) ----------

def oracle_model(partition, noise: float, seed: int = 0):
    """A GMF whose quality is set by `noise`: 0 ranks each user's test item first, larger is closer to random."""
    import torch

    from ncf.models import ModelSpec, build_model

    gen = torch.Generator().manual_seed(seed)
    factors = 32
    model = build_model(ModelSpec("GMF", partition.num_users, partition.num_items, factor_num=factors))
    with torch.no_grad():
        items = torch.randn(partition.num_items, factors, generator=gen)
        model.embed_item_GMF.weight.copy_(items)
        users = torch.randn(partition.num_users, factors, generator=gen) * noise
        users[torch.as_tensor(partition.test_users, dtype=torch.long)] += items[
            torch.as_tensor(partition.test_items, dtype=torch.long)]
        model.embed_user_GMF.weight.copy_(users)
        model.predict_layer.weight.fill_(1.0)
        model.predict_layer.bias.zero_()
    return model.eval()


def make_package(uri: str, partition, model, metrics: dict | None = None, hyperparameters: dict | None = None) -> str:
    """A real model package (ncf.package.save_package) for `model` trained on `partition`."""
    from ncf.package import package_tables, save_package

    return save_package(uri, model, **package_tables(partition), metrics=metrics or {"ndcg@10": 0.0},
                        hyperparameters=hyperparameters or {"epochs": 1, "lr": 0.001, "factor_num": 32},
                        extra={"partition_uri": partition.uri})
