"""Real MLflow stores for tests: an embedded sqlite store, and an `mlflow server` on a throwaway PostgreSQL
cluster with S3 artifacts on the moto server (tests/conftest.py).

Test modules import the fixtures they use: `from tests.mlflow_fixtures import mlflow_server  # noqa: F401`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from ncf.ports import free_port


def pg_bin() -> Path | None:
    """PostgreSQL's server bin directory, of any version: $NCF_PG_BIN, else the newest /usr/lib/postgresql/<v>/bin
    (Debian keeps initdb off PATH), else the directory of `initdb` on PATH: the places scripts/ensure_postgres.sh
    accepts."""
    if os.environ.get("NCF_PG_BIN"):
        return Path(os.environ["NCF_PG_BIN"])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def stop_process_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a server started with `start_new_session=True`: its whole process group (workers too)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _pg_runner() -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as `nobody` when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root and `runuser` (util-linux) is missing: cannot start PostgreSQL as a non-root "
                    "user", pytrace=False)
    return [runuser, "-u", "nobody", "--"]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 with an empty `mlflow` database; yields its SQLAlchemy URL.

    Fails (never skips) when PostgreSQL is missing or does not start: `make test` installs it, so either is a fault.
    """
    bin_dir = pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        pytest.fail(f"PostgreSQL server not found ({bin_dir or 'no initdb'}; set NCF_PG_BIN to its bin directory): "
                    "`bash scripts/ensure_postgres.sh` installs it (`make test` runs that)", pytrace=False)
    runner = _pg_runner()
    root = Path(tempfile.mkdtemp(prefix="ncf-pg-"))
    if runner:
        shutil.chown(root, user="nobody")
    data, port = root / "data", free_port()
    try:
        subprocess.run(
            [*runner, str(bin_dir / "initdb"), "-D", str(data), "--username=postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, text=True,
        )
        subprocess.run(
            [*runner, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "start",
             "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"],
            check=True, capture_output=True, text=True,
        )
    except subprocess.CalledProcessError as exc:
        log = root / "server.log"
        detail = (exc.stderr or "").strip() + ("\n" + log.read_text()[-2000:] if log.exists() else "")
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"cannot start a PostgreSQL cluster with {bin_dir}: {detail or exc}", pytrace=False)
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*runner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
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


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90, what: str = "server") -> None:
    """Until `url` answers 200; fails with the tail of `log` when `proc` exits or `timeout` passes."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what}: {url} not 200 after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


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
        wait_http(url + "/health", proc, log, timeout=120, what="mlflow server")
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


def make_package(uri: str, partition, model, metrics: dict | None = None, hyperparameters: dict | None = None,
                 extra: dict | None = None) -> str:
    """A real model package (ncf.package.save_package) for `model` trained on `partition` (`extra`: more
    config.json fields, e.g. `partition_fingerprint`)."""
    from ncf.families.ncf import export
    from ncf.package import package_tables, save_package

    return save_package(uri, export(model), **package_tables(partition), metrics=metrics or {"ndcg@10": 0.0},
                        hyperparameters=hyperparameters or {"epochs": 1, "lr": 0.001, "factor_num": 32},
                        extra={"partition_uri": partition.uri, **(extra or {})})


# ---- concurrent gates: one process each, released at once, and the never-worse check over what they did ----------

_GATE_PROCESS = r"""
import json, sys, time
from pathlib import Path
from ncf import gate
config = gate.GateConfig(**json.loads(sys.argv[1]))
Path(sys.argv[2]).touch()  # imports done: ready
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
started = time.time()
r = gate.run(config)
print(json.dumps({"version": r.version, "promoted": r.promoted, "score": r.challenger_score,
                  "champion_version": r.champion_version, "champion_score": r.champion_score,
                  "started": started, "finished": time.time()}))
"""


def run_concurrent_gates(configs: list[dict], workdir: Path, env: dict | None = None,
                         timeout: float = 600) -> list[dict]:
    """Run `gate.run(GateConfig(**config))` for each config in its own process, all released at the same instant
    (after their imports); return each gate's result (plus its `model_uri` and stderr `log`). Any failed gate fails
    the test, and so do gates that were not all running at once."""
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    go = workdir / "go"
    procs = []
    for i, config in enumerate(configs):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _GATE_PROCESS, json.dumps(config), str(workdir / f"ready-{i}"), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    deadline = time.monotonic() + timeout
    try:
        while not all((workdir / f"ready-{i}").exists() for i in range(len(procs))):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
                p.communicate()[1][-3000:] for p in procs if p.poll() is not None]
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for proc, config, (out, err) in zip(procs, configs, outputs, strict=True):
        assert proc.returncode == 0, f"gate of {config['model_uri']} failed ({proc.returncode}):\n{err[-3000:]}"
        results.append({**json.loads(out.strip().splitlines()[-1]), "model_uri": config["model_uri"], "log": err})
    assert max(r["started"] for r in results) < min(r["finished"] for r in results), "the gates did not overlap"
    return results


def assert_gates_serialised(results: list[dict], champion_before: tuple[str, float], champion_now) -> None:
    """The never-worse property over gates that ran at once: in the order they registered their versions (the order
    they held the gate lock), each compared against the champion the previous one left, promoted only a strictly
    better model, and the champion left at the end is the best model seen."""
    version, score = champion_before
    for result in sorted(results, key=lambda r: int(r["version"])):
        assert result["champion_version"] == version, (
            f"v{result['version']} was compared against v{result['champion_version']}, but the champion at its turn "
            f"was v{version}: two gates read the same champion")
        assert result["champion_score"] == score
        if result["promoted"]:
            assert result["score"] > score
            version, score = result["version"], result["score"]
        else:
            assert result["score"] <= score
    assert score == max([champion_before[1], *(r["score"] for r in results)])
    assert str(champion_now.version) == version


def reference_ranking(package, user_id: str, exclude_seen: bool = True, candidates: list[str] | None = None):
    """A known user's full ranking computed without the serving code: the model's plain forward pass over every
    item (or the candidates), the user's training items dropped, argsort. Returns (item ids, scores), best first."""
    import numpy as np
    import torch

    from ncf.families.ncf import load_model

    user = package.user_ids.index(user_id)
    items = np.arange(len(package.item_ids)) if candidates is None else np.asarray(
        [package.item_ids.index(c) for c in candidates])
    with torch.no_grad():
        scores = load_model(package)(torch.full((len(items),), user, dtype=torch.long),
                                     torch.as_tensor(items, dtype=torch.long)).double().numpy()
    if exclude_seen:
        keep = ~np.isin(items, package.seen_indices[package.seen_indptr[user]:package.seen_indptr[user + 1]])
        items, scores = items[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return [package.item_ids[i] for i in items[order]], scores[order]


def assert_top_k(item_ids: list[str], scores: list[float], reference, k: int, tol: float = 1e-4) -> None:
    """`item_ids` / `scores` are the k best of `reference_ranking`: the same scores, best first, nothing ranked
    higher left out (the exact order too, unless two of the scores are within `tol`)."""
    import numpy as np

    ref_ids, ref_scores = reference
    want = min(k, len(ref_ids))
    by_id = dict(zip(ref_ids, ref_scores, strict=True))
    assert len(item_ids) == want and set(item_ids) <= set(by_id), "an excluded or unknown item was returned"
    np.testing.assert_allclose(scores, [by_id[i] for i in item_ids], rtol=tol, atol=tol)
    assert list(scores) == sorted(scores, reverse=True)
    assert min(by_id[i] for i in item_ids) >= ref_scores[want - 1] - tol, "a better item was left out"
    if want == 1 or np.min(-np.diff(ref_scores[:want + 1])) > tol:
        assert list(item_ids) == ref_ids[:want]
