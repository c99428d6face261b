"""Faster Spark driver start-up for the test suite (most of a small Spark test is the JVM starting).

The suite starts a few dozen driver JVMs (module fixtures, `ncfctl` subprocesses, kfp.local steps, spark-submit),
each loading Spark's ~20,000 classes and compiling them for jobs of a few thousand rows. `tests/conftest.py` sets
Spark's SPARK_SUBMIT_OPTS (the driver JVM's options in client mode, pyspark sessions included; inherited by
subprocesses) to
- a class-data-sharing archive of those classes (JDK dynamic CDS), dumped once per machine by a small session into
  the user's cache (`$XDG_CACHE_HOME`, else `~/.cache`, `ncf-platform/spark-cds/`, keyed by the pyspark version and
  the java binary), in the background while the first tests run (~40 s on 2 cores): a driver started before the
  archive is in place, or with a stale one, runs without it (the JVM ignores it, silently), and
- the C1 compiler only (`-XX:TieredStopAtLevel=1`), for the standalone cluster's daemons and executors too: C2 pays
  off in long jobs, not in these.
Measured (2 cores): session start + first job 8.2 + 4.5 s -> 4.0 + 1.9 s; a 20,000-event preprocess 37 -> 29 s;
tests/spark/test_standalone.py 92.6 -> 70.4 s with C1 in the cluster's JVMs.
Set SPARK_SUBMIT_OPTS / SPARK_DAEMON_JAVA_OPTS yourself (even to "") to run the suite without them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from ncf.storage import user_cache_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # the JVM prints CDS warnings on stdout otherwise
C1 = "-XX:TieredStopAtLevel=1"
DAEMON_OPTIONS = C1  # SPARK_DAEMON_JAVA_OPTS: a standalone cluster's master and workers (spark/standalone.py)
_DUMP = """
import os, sys, tempfile
from pyspark import SparkContext
from spark.session import get_spark
partial, archive = sys.argv[1:3]
spark = get_spark()
frame = spark.range(1000).selectExpr("id % 7 AS k", "id AS v", "current_timestamp() AS ts")
frame.groupBy("k").count().collect()
with tempfile.TemporaryDirectory() as out:
    frame.write.parquet(out + "/p")
    frame.write.option("header", True).csv(out + "/c")
    spark.read.parquet(out + "/p").join(spark.read.option("header", True).csv(out + "/c"), "v").count()
spark.stop()
gateway = SparkContext._gateway
gateway.shutdown()
gateway.proc.stdin.close()  # pyspark's JVM exits when its stdin closes, and writes the archive as it exits
gateway.proc.wait(timeout=120)
os.replace(partial, archive)  # whole or absent: a JVM never maps a half-written archive
"""


def archive_path() -> Path | None:
    """Where this machine's archive lives (None without java or pyspark)."""
    java_home = os.environ.get("JAVA_HOME")
    java = shutil.which("java", path=os.path.join(java_home, "bin") if java_home else None)
    try:
        import pyspark
    except ImportError:
        return None
    if java is None:
        return None
    key = hashlib.sha256(os.path.realpath(java).encode()).hexdigest()[:12]
    return user_cache_dir() / "spark-cds" / f"spark-{pyspark.__version__}-{key}.jsa"


def start_archive_dump() -> subprocess.Popen | None:
    """Start dumping the archive when it is missing (a detached process, ~40 s on 2 cores, once per machine); None
    when there is nothing to dump or it cannot be written (the suite then starts Spark the usual way)."""
    archive = archive_path()
    if archive is None or archive.exists():
        return None
    partial = archive.with_name(f"{archive.name}.{os.getpid()}.tmp")
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [sys.executable, "-c", _DUMP, str(partial), str(archive)], cwd=REPO_ROOT,
            env={**os.environ, "SPARK_SUBMIT_OPTS": f"-XX:ArchiveClassesAtExit={partial} {QUIET}",
                 "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None


def finish_archive_dump(dump: subprocess.Popen, timeout_s: float = 120) -> str | None:
    """At the end of the session: let a running dump finish, else stop it (its JVM too) and drop its partial file.
    Returns why there is no archive, or None when there is one."""
    try:
        dump.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(dump.pid, signal.SIGKILL)
        dump.wait()
    for partial in (user_cache_dir() / "spark-cds").glob(f"*.{os.getpid()}.tmp"):
        partial.unlink(missing_ok=True)
    archive = archive_path()
    if archive is not None and archive.exists():
        return None
    return f"the Spark class-data archive dump exited with {dump.returncode}; no {archive}"


def java_options(archive: Path | None) -> str:
    """SPARK_SUBMIT_OPTS: the driver's options, and C1 for the executors of a standalone cluster too (a `spark.*`
    system property of the driver is a Spark setting)."""
    shared = f"-XX:SharedArchiveFile={archive} " if archive is not None else ""
    return f"{shared}{C1} {QUIET} -Dspark.executor.extraJavaOptions={C1}"
