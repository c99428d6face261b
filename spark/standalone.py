"""A real Spark standalone cluster on 127.0.0.1, started from the pyspark install: one master and N workers,
each its own JVM (`spark-class org.apache.spark.deploy.master.Master` / `...deploy.worker.Worker`), executors
in further JVMs. For tests and benchmarks that need what `local[*]` hides: executors in other processes,
shuffles over the network stack, tables written by several processes into a scratch dir they share.

Everything binds to 127.0.0.1 (`SPARK_LOCAL_IP`, `--host`) on free ports, so no traffic leaves loopback.

    from spark.standalone import standalone_cluster

    with standalone_cluster(workers=2, cores_per_worker=1) as cluster:
        subprocess.run(["ncfctl", "preprocess", "--master", cluster.master_url,
                        "--scratch-dir", str(cluster.shared_dir), ...], env=cluster.driver_env())

A driver in the current process works too (`os.environ.update(cluster.env)` before the first Spark session,
then `get_spark(cluster.master_url)`). `start_cluster` / `StandaloneCluster.stop` do the same without a `with`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ncf.ports import LOOPBACK, free_port

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterError(RuntimeError):
    """The cluster did not start; the message carries the tail of the log that says why."""


def spark_home() -> Path:
    """The Spark distribution inside the pyspark package (bin/spark-class, jars/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


@dataclasses.dataclass
class StandaloneCluster:
    master_url: str  # spark://127.0.0.1:<port>: the --master for drivers
    web_ui_url: str  # the master's web UI; <url>/json/ is its state
    workers: int
    cores_per_worker: int
    memory_per_worker: str
    work_dir: Path  # daemon logs (master.log, worker-<k>.log) and the workers' executor dirs
    shared_dir: Path  # scratch space every executor sees: pass it as --scratch-dir
    env: dict[str, str]  # what a driver's environment needs (loopback, the venv's Python, SPARK_HOME)
    processes: list[subprocess.Popen] = dataclasses.field(default_factory=list, repr=False)
    owns_work_dir: bool = False

    def driver_env(self) -> dict[str, str]:
        """The current environment plus `env`: for a driver started as a subprocess."""
        return {**os.environ, **self.env}

    def state(self) -> dict:
        """The master's view of the cluster (workers, applications), from its JSON endpoint."""
        with urllib.request.urlopen(f"{self.web_ui_url}/json/", timeout=10) as response:
            return json.loads(response.read())

    def alive_workers(self) -> int:
        return int(self.state().get("aliveworkers", 0))

    def executor_dirs(self) -> list[Path]:
        """`<worker dir>/<app id>/<executor id>/` of every executor the workers have launched."""
        return sorted(p for p in self.work_dir.glob("worker-*/app-*/*") if p.is_dir())

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the workers (with their executors), then the master; remove the work dir if it was created here."""
        for process in reversed(self.processes):
            _terminate(process, timeout_s)
        self.processes.clear()
        if self.owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def _terminate(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM the daemon's process group (it runs in its own session, with the executors it launched)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(predicate, what: str, deadline: float, processes: list[subprocess.Popen], log: Path):
    while True:
        value = predicate()
        if value:
            return value
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise ClusterError(f"{what}: a daemon exited with code {dead[0].returncode}; {log}:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not ready in time; {log}:\n{_log_tail(log)}")
        time.sleep(0.5)


def _bound_url(log: Path, pattern: str) -> str | None:
    """The URL a daemon logged it bound to (a taken port makes Spark retry the next one, so ask the log)."""
    try:
        found = re.search(pattern, log.read_text(errors="replace"))
    except OSError:
        return None
    return found.group(1) if found else None


def start_cluster(workers: int = 2, cores_per_worker: int = 1, memory_per_worker: str = "1g",
                  work_dir: str | Path | None = None, timeout_s: float = 180.0,
                  daemon_memory: str = "512m") -> StandaloneCluster:
    """Start a master and `workers` workers on 127.0.0.1 and wait until every worker has registered."""
    if workers < 1 or cores_per_worker < 1:
        raise ValueError("workers and cores_per_worker must be at least 1")
    owns = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="ncf-spark-cluster-")) if owns else Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    shared = root / "shared"
    shared.mkdir(exist_ok=True)
    home = spark_home()
    env = {
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": LOOPBACK,
        "SPARK_MASTER_HOST": LOOPBACK,
        "SPARK_DAEMON_MEMORY": daemon_memory,
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
    }
    daemon_env = {**os.environ, **env}
    spark_class = str(home / "bin" / "spark-class")
    cluster = StandaloneCluster("", "", workers, cores_per_worker, memory_per_worker, root, shared, env,
                                owns_work_dir=owns)
    deadline = time.monotonic() + timeout_s

    def launch(name: str, args: list[str]) -> Path:
        log = root / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            cluster.processes.append(subprocess.Popen(
                [spark_class, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=daemon_env,
                cwd=root, start_new_session=True,
            ))
        return log

    try:
        master_log = launch("master", [MASTER_CLASS, "--host", LOOPBACK, "--port", str(free_port()),
                                       "--webui-port", str(free_port())])
        cluster.master_url = _wait_for(lambda: _bound_url(master_log, r"Starting Spark master at (spark://\S+)"),
                                       "Spark master", deadline, cluster.processes, master_log)
        cluster.web_ui_url = _wait_for(lambda: _bound_url(master_log, r"MasterWebUI.*started at (http://\S+)"),
                                       "Spark master web UI", deadline, cluster.processes, master_log)
        for k in range(workers):
            worker_dir = root / f"worker-{k}"
            worker_dir.mkdir(exist_ok=True)
            launch(f"worker-{k}", [WORKER_CLASS, "--host", LOOPBACK, "--port", str(free_port()),
                                   "--webui-port", str(free_port()), "--cores", str(cores_per_worker),
                                   "--memory", memory_per_worker, "--work-dir", str(worker_dir), cluster.master_url])

        def registered() -> bool:
            try:
                return cluster.alive_workers() == workers
            except (urllib.error.URLError, OSError, ValueError):
                return False

        _wait_for(registered, f"{workers} Spark workers", deadline, cluster.processes, root / "worker-0.log")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def standalone_cluster(workers: int = 2, cores_per_worker: int = 1, memory_per_worker: str = "1g",
                       work_dir: str | Path | None = None, timeout_s: float = 180.0) -> Iterator[StandaloneCluster]:
    """`start_cluster(...)`, stopped (daemons, executors, a temporary work dir) when the block ends."""
    cluster = start_cluster(workers, cores_per_worker, memory_per_worker, work_dir, timeout_s)
    try:
        yield cluster
    finally:
        cluster.stop()
