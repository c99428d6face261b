"""Registry round trips on real stores: embedded sqlite, and `mlflow server` on PostgreSQL with S3 (moto) artifacts."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from ncf import contracts, gate, registry
from ncf.errors import UserError
from tests.mlflow_fixtures import (  # noqa: F401  (fixtures)
    assert_top_k,
    make_package,
    mlflow_server,
    oracle_model,
    postgres_url,
    reference_ranking,
    s3_env,
)
from tests.tiny_data import make_partition, write_partition


def _load_pyfunc(tracking_uri: str, uri: str):
    import mlflow

    with registry.active_store(tracking_uri):
        return mlflow.pyfunc.load_model(uri)


def test_sqlite_round_trip(tmp_path):
    from ncf.package import load_package
    from serving.recommender import Recommender

    partition = make_partition(uri=str(tmp_path / "data" / "dt=2026-11-27"))
    package_uri = make_package(str(tmp_path / "models" / "run-1"), partition, oracle_model(partition, 0.5))
    tracking_uri = registry.default_tracking_uri(tmp_path)
    version = registry.register_package(package_uri, tracking_uri=tracking_uri, tags={"pipeline_run_id": "r1"},
                                        metrics={"ndcg@10": 0.5})
    registry.set_alias(tracking_uri, "ncf", registry.CHAMPION, version.version)

    # The embedded store keeps artifacts beside the database, not in ./mlruns.
    artifact_uri = registry.package_artifact_uri(tracking_uri, "ncf", version.version)
    assert artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert registry.resolve_version(tracking_uri, "models:/ncf@champion") == version.version
    mv = registry.client(tracking_uri).get_model_version("ncf", version.version)
    assert mv.tags["pipeline_run_id"] == "r1"

    model = _load_pyfunc(tracking_uri, "models:/ncf@champion")
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["user_id", "k"]
    assert sig.outputs.input_names() == ["user_id", "item_ids", "scores", "fallback"]
    out = model.predict(pd.DataFrame({"user_id": ["u1", "u2", "stranger"], "k": [5, 3, 2]}))
    expected = Recommender(load_package(package_uri)).recommend(
        [Recommender(load_package(package_uri)).query("u1", 5)])[0]
    assert out.loc[0, "item_ids"] == expected.item_ids
    assert len(out.loc[1, "item_ids"]) == 3 and not out.loc[1, "fallback"]
    assert out.loc[2, "fallback"] and len(out.loc[2, "item_ids"]) == 2
    import mlflow

    model_dir = registry.client(tracking_uri).get_model_version_download_uri("ncf", version.version)
    requirements = mlflow.artifacts.load_text(f"{model_dir}/requirements.txt").split()
    assert sorted(requirements) == sorted(registry.pip_requirements())
    local = registry.download_package(tracking_uri, "ncf", version.version, tmp_path / "dl")
    reloaded = load_package(local)
    original = load_package(package_uri)
    for key, value in original.weights.items():
        assert np.array_equal(value.numpy(), reloaded.weights[key].numpy())


def test_pinned_requirements_and_bad_uris(tmp_path):
    pins = registry.pip_requirements()
    assert all("==" in p for p in pins) and any(p.startswith("torch==") for p in pins)
    with pytest.raises(UserError, match="expected models:/"):
        registry.parse_model_uri("models:/ncf")
    with pytest.raises(UserError, match="alias 'champion'"):
        registry.resolve_version(registry.default_tracking_uri(tmp_path), "models:/ncf@champion")
    with pytest.raises(UserError, match="needs an explicit --tracking-uri"):
        registry.default_tracking_uri("s3://bucket/root")


@pytest.mark.slow
def test_server_postgres_s3_register_gate_load(mlflow_server, moto_server, s3_bucket, monkeypatch):  # noqa: F811
    """Through `mlflow server` (PostgreSQL + S3): gate two models, load the champion back, read its S3 package."""
    from ncf import storage
    from ncf.package import load_package

    for key, value in s3_env(moto_server).items():
        monkeypatch.setenv(key, value)
    tracking_uri, _ = mlflow_server
    root = f"s3://{s3_bucket}/ncf"
    partition = make_partition(uri=contracts.partition_uri(root, "2026-11-27"))
    write_partition(partition, partition.uri)
    # Distinguishable packages (metrics, weights, rankings), so serving the wrong one cannot pass.
    first = make_package(f"{root}/models/run-1", partition, oracle_model(partition, 2.0), metrics={"ndcg@10": 0.21})
    second = make_package(f"{root}/models/run-2", partition, oracle_model(partition, 0.3, seed=1),
                          metrics={"ndcg@10": 0.64})

    results = [gate.run(gate.GateConfig(model_uri=uri, partition_uri=partition.uri, tracking_uri=tracking_uri,
                                        model_name="ncf-pg", git_commit="abc123"))
               for uri in (first, second)]
    assert [r.promoted for r in results] == [True, True]
    assert results[1].champion_version == results[0].version
    assert storage.read_json(f"{results[1].report_uri}/gate.json")["promoted"] is True

    champion = registry.alias_version(tracking_uri, "ncf-pg", registry.CHAMPION)
    assert str(champion.version) == results[1].version and champion.tags["git_commit"] == "abc123"
    # What a KServe storage initializer would download: the package under the S3 artifact root.
    package_uri = registry.package_artifact_uri(tracking_uri, "ncf-pg", str(champion.version))
    assert package_uri.startswith(f"s3://{mlflow_server[1]}/")
    served, wanted, other = load_package(package_uri), load_package(second), load_package(first)
    assert served.metrics == wanted.metrics == {"ndcg@10": 0.64}
    for key, value in served.weights.items():
        assert np.array_equal(value.numpy(), wanted.weights[key].numpy())
    out = _load_pyfunc(tracking_uri, "models:/ncf-pg@champion").predict(pd.DataFrame({"user_id": ["u3"]}))
    assert not out.loc[0, "fallback"]
    assert_top_k(out.loc[0, "item_ids"], out.loc[0, "scores"], reference_ranking(wanted, "u3"), 10)
    assert out.loc[0, "item_ids"] != reference_ranking(other, "u3")[0][:10]  # the first model would be told apart


def test_version_links_to_the_training_run_in_the_same_store(tmp_path):
    import mlflow

    partition = make_partition(num_users=10, num_items=30, per_user=4, num_neg=5)
    package_uri = make_package(str(tmp_path / "models" / "run-1"), partition, oracle_model(partition, 1.0))
    tracking_uri = registry.default_tracking_uri(tmp_path)
    experiment_id = registry.ensure_experiment(tracking_uri, "ncf-train")
    with registry.active_store(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as train_run:
        mlflow.log_param("lr", 0.001)
    assert os.environ.get("MLFLOW_TRACKING_URI") != tracking_uri  # the store switch did not leak
    linked = registry.register_package(package_uri, tracking_uri=tracking_uri, params={"lr": 0.5},
                                       metrics={"ndcg@10": 0.25}, train_run_id=train_run.info.run_id)
    assert linked.run_id == train_run.info.run_id
    run = registry.client(tracking_uri).get_run(linked.run_id)
    assert run.data.params["lr"] == "0.001" and run.data.metrics["gate.ndcg_at_10"] == 0.25
    elsewhere = registry.register_package(package_uri, tracking_uri=tracking_uri, train_run_id="not-in-this-store")
    assert elsewhere.run_id != train_run.info.run_id


# ---- concurrency: a fresh store created once, and the gate lock ----------------------------------------------

_FIRST_USE = r"""
import sys, time
from pathlib import Path
from ncf import registry
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
uri = sys.argv[1]
registry.ensure_experiment(uri)
assert registry.alias_version(uri, "ncf", "champion") is None
"""


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_first_use_of_a_fresh_sqlite_store(tmp_path, attempt):
    """Three processes open the same not-yet-existing store at once (the failure: each ran MLflow's migrations, and
    one crashed with an alembic error), creating it from the template or, without one, by migrations."""
    import subprocess
    import sys
    import time

    uri = registry.default_tracking_uri(tmp_path / "root")
    go = tmp_path / "go"
    # Attempt 0 without a usable template cache (a file where its directory would be): MLflow's migrations run.
    env = {**os.environ, **({"XDG_CACHE_HOME": str(tmp_path / "go")} if attempt == 0 else {})}
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE, uri, str(tmp_path / f"ready-{i}"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(3)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(3)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    assert registry.client(uri).get_experiment_by_name(registry.DEFAULT_EXPERIMENT) is not None


def test_a_fresh_store_is_a_copy_of_the_migrated_template(tmp_path, monkeypatch):
    """The first fresh store on a machine makes the template; later ones are copies, no migration runs, and each
    one's Default experiment keeps its artifacts beside it. Without a usable cache MLflow migrates as before."""
    from mlflow.store.db import utils

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = registry.default_tracking_uri(tmp_path / "a")
    assert registry.ensure_experiment(first) == "1"
    assert list((tmp_path / "cache" / "ncf-platform").glob("mlflow-store-*.db"))

    def no_migrations(*_):
        raise AssertionError("a store made from the template ran MLflow's migrations")

    monkeypatch.setattr(utils, "_initialize_tables", no_migrations)
    monkeypatch.setattr(utils, "_upgrade_db", no_migrations)
    copied = registry.default_tracking_uri(tmp_path / "b")
    client = registry.client(copied)
    assert client.get_experiment("0").artifact_location == (tmp_path / "b" / "mlartifacts" / "0").as_uri()
    assert registry.ensure_experiment(copied) == "1" and client.search_registered_models() == []
    client.create_registered_model("ncf")
    assert [m.name for m in registry.client(first).search_registered_models()] == []  # stores share nothing
    monkeypatch.undo()

    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))
    migrated = registry.default_tracking_uri(tmp_path / "c")
    assert registry.ensure_experiment(migrated) == "1"


def test_gate_lock_excludes_and_queues(tmp_path):
    """Threads of one process each take the lock repeatedly: never two inside at once, every one gets its turn."""
    import threading
    import time

    uri = registry.default_tracking_uri(tmp_path)
    inside, most, turns, errors = [0], [0], [], []
    guard = threading.Lock()

    def worker(name: str) -> None:
        try:
            for _ in range(2):
                with registry.gate_lock(uri, "ncf", timeout_s=120, poll_s=0.05) as lock:
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.05)
                    lock.check()
                    turns.append((name, lock.version))
                    with guard:
                        inside[0] -= 1
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and most[0] == 1 and len(turns) == 8
    # Served in ticket order, and nothing left behind: every ticket deleted on release.
    assert [v for _, v in turns] == sorted(v for _, v in turns)
    assert registry.client(uri).search_model_versions(f"name='{registry.gate_lock_name('ncf')}'") == []


def test_gate_lock_timeout_names_the_holder(tmp_path):
    uri = registry.default_tracking_uri(tmp_path)
    with registry.gate_lock(uri, "ncf") as held:
        with pytest.raises(UserError, match=r"ncf\.gate-lock: another gate \(.+:\d+, ticket \d+, last heartbeat "
                                            r"\d+s ago\) still holds the gate of 'ncf' after 1s.*--lock-timeout-s"):
            with registry.gate_lock(uri, "ncf", timeout_s=1, poll_s=0.1):
                pass
        held.check()  # the waiter that gave up took nothing from the holder
        with registry.gate_lock(uri, "other-model", timeout_s=0):  # one lock per model name
            pass
    with registry.gate_lock(uri, "ncf", timeout_s=0):  # released: free at once
        pass


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def lock_store(request, tmp_path):
    """(tracking URI, a model name of its own): the embedded sqlite store, or `mlflow server` on PostgreSQL."""
    import uuid

    if request.param == "sqlite":
        return registry.default_tracking_uri(tmp_path), "ncf"
    return request.getfixturevalue("mlflow_server")[0], f"ncf-lock-{uuid.uuid4().hex[:8]}"


_CRASHING_HOLDER = r"""
import os, signal, sys
from pathlib import Path
from ncf import registry
with registry.gate_lock(sys.argv[1], sys.argv[2], lease_s=2.0):
    Path(sys.argv[3]).touch()
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding the lock: no release, no more heartbeats
"""


def test_a_crashed_holder_is_broken_after_its_lease(lock_store, tmp_path, capfd):
    import subprocess
    import sys
    import time

    uri, name = lock_store
    held = tmp_path / "held"
    proc = subprocess.run([sys.executable, "-c", _CRASHING_HOLDER, uri, name, str(held)], capture_output=True,
                          timeout=120)
    assert proc.returncode == -9 and held.exists(), proc.stderr[-2000:]
    started = time.monotonic()
    with registry.gate_lock(uri, name, timeout_s=60, poll_s=0.2) as lock:
        lock.check()
    assert time.monotonic() - started < 30
    assert "breaking the lock of" in capfd.readouterr().err


def test_heartbeats_keep_a_long_gate_alive(lock_store):
    """A holder that keeps its lease alive is never broken, however long it holds the lock."""
    import time

    uri, name = lock_store
    with registry.gate_lock(uri, name, lease_s=1.5) as holder:
        time.sleep(3.5)  # more than two leases; a heartbeat every 0.25 s
        with pytest.raises(UserError, match="still holds the gate"):
            with registry.gate_lock(uri, name, timeout_s=2.0, poll_s=0.1):
                pass
        holder.check()


def test_a_holder_whose_lease_ran_out_cannot_act(tmp_path):
    """A hung holder (no heartbeats) is broken by the next gate, and finds out before it moves any alias."""
    uri = registry.default_tracking_uri(tmp_path)
    with registry.gate_lock(uri, "ncf", lease_s=1.0) as hung:
        hung._stop.set()  # the heartbeat thread stops, as in a process frozen by the OS
        with registry.gate_lock(uri, "ncf", timeout_s=30, poll_s=0.1) as fresh:
            fresh.check()
            with pytest.raises(UserError, match="lost the lock.*nothing was moved, re-run the gate"):
                hung.check()
