"""Faster Spark driver start-up for the test suite (most of a small Spark test is the JVM starting).

The suite starts a few dozen driver JVMs (module fixtures, `ncfctl` subprocesses, kfp.local steps, spark-submit),
each loading Spark's ~20,000 classes and compiling them for jobs of a few thousand rows. `tests/conftest.py` sets
Spark's SPARK_SUBMIT_OPTS (the driver JVM's options in client mode, pyspark sessions included; inherited by
subprocesses) to
- a class-data-sharing archive of those classes, dumped once per machine by a small session into `.ncf/spark-cds/`
  (JDK dynamic CDS, keyed by the pyspark version and the java binary; a stale or missing archive is ignored by the
  JVM, silently), and
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
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_DIR = REPO_ROOT / ".ncf" / "spark-cds"
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # the JVM prints CDS warnings on stdout otherwise
C1 = "-XX:TieredStopAtLevel=1"
DAEMON_OPTIONS = C1  # SPARK_DAEMON_JAVA_OPTS: a standalone cluster's master and workers (spark/standalone.py)
_DUMP = """
import tempfile
from spark.session import get_spark
spark = get_spark()
frame = spark.range(1000).selectExpr("id % 7 AS k", "id AS v", "current_timestamp() AS ts")
frame.groupBy("k").count().collect()
with tempfile.TemporaryDirectory() as out:
    frame.write.parquet(out + "/p")
    frame.write.option("header", True).csv(out + "/c")
    spark.read.parquet(out + "/p").join(spark.read.option("header", True).csv(out + "/c"), "v").count()
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
    return ARCHIVE_DIR / f"spark-{pyspark.__version__}-{key}.jsa"


def ensure_archive(timeout_s: float = 300) -> Path | None:
    """The archive, dumped now when missing (~40 s on 2 cores, once); None when it could not be made (the suite then starts
    Spark the usual way)."""
    archive = archive_path()
    if archive is None or archive.exists():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f"{archive.name}.{os.getpid()}.tmp")
    env = {**os.environ, "SPARK_SUBMIT_OPTS": f"-XX:ArchiveClassesAtExit={partial} {QUIET}",
           "PYTHONPATH": str(REPO_ROOT)}
    try:
        subprocess.run([sys.executable, "-c", _DUMP], cwd=REPO_ROOT, env=env, timeout=timeout_s, check=True,
                       capture_output=True)
        partial.rename(archive)  # whole or absent: a concurrent dump loses the rename race harmlessly
    except (OSError, subprocess.SubprocessError):
        partial.unlink(missing_ok=True)
        return None
    return archive


def java_options(archive: Path | None) -> str:
    """SPARK_SUBMIT_OPTS: the driver's options, and C1 for the executors of a standalone cluster too (a `spark.*`
    system property of the driver is a Spark setting)."""
    shared = f"-XX:SharedArchiveFile={archive} " if archive is not None else ""
    return f"{shared}{C1} {QUIET} -Dspark.executor.extraJavaOptions={C1}"
