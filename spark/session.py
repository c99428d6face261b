"""One way to get a SparkSession for the jobs in spark/: tuned for small local runs, unchanged on a cluster.

- Under `spark-submit` the master comes from spark-submit unless the job's own `--master` names one;
  otherwise `local[*]`.
- Python workers run the driver's interpreter (the venv), not whatever `python3` is first on PATH.
- Few shuffle partitions locally (the default 200 makes small jobs slow), UTC session time zone (ISO-8601
  timestamps without an offset mean the same instant everywhere), Spark UI off unless asked for.
- S3A (`s3a://` inputs) authenticates with the AWS SDK's default chain, as the SparkApplication does
  (manifests/jobs/preprocess-spark): environment keys, IRSA web identity on EKS, instance profile. Hadoop's own
  default chain has no web-identity provider. Under spark-submit its `--conf` decides.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ncf.errors import UserError

DEFAULT_MASTER = "local[*]"
S3A_CREDENTIALS_PROVIDER = "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


def _check_java() -> None:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise UserError(
            "Spark needs Java 17 and 'java' is not on PATH: install it "
            "('apt-get install -y openjdk-17-jre-headless' or 'brew install openjdk@17') or set JAVA_HOME"
        )


def _under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands the Python driver its gateway port.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def local_parallelism(master: str) -> int | None:
    """Cores of a `local[N]` / `local[*]` master, None for cluster masters."""
    if not master.startswith("local"):
        return None
    inside = master[master.find("[") + 1 : master.find("]")] if "[" in master else "1"
    count = inside.split(",")[0]
    return (os.cpu_count() or 1) if count == "*" else int(count)


def get_spark(master: str = "", app_name: str = "ncf", driver_memory: str = "", ui: bool = False):
    """Return the active SparkSession or start one. Settings apply only when a new session starts."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    _check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if not master and not _under_spark_submit():
        master = DEFAULT_MASTER
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    cores = local_parallelism(master) if master else None
    if cores is not None:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: no network lookups, no warning
        builder = builder.config("spark.sql.shuffle.partitions", str(max(4, 2 * cores)))
        # Local runs have one JVM: give it enough heap for 10M-event shuffles (only when not set otherwise).
        builder = builder.config("spark.driver.memory", driver_memory or os.environ.get("NCF_SPARK_DRIVER_MEMORY", "3g"))
    elif driver_memory:
        builder = builder.config("spark.driver.memory", driver_memory)
    if LOG4J_CONFIG.exists() and not _under_spark_submit():  # quiet JVM start-up (spark-submit users bring their own)
        builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG}")
    if not _under_spark_submit():
        builder = builder.config("spark.hadoop.fs.s3a.aws.credentials.provider", S3A_CREDENTIALS_PROVIDER)
    builder = (
        builder.config("spark.ui.enabled", "true" if ui else "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.adaptive.enabled", "true")
        # Spark's own _SUCCESS files inside tables would be noise: the partition has exactly one, at its root.
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .config("spark.hadoop.parquet.enable.summary-metadata", "false")
        # pandas writes nanosecond timestamps, which Spark refuses; read them as epoch numbers instead
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
    )
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # the JVM failed to start: say why in one line
        raise UserError(f"cannot start Spark (master={master or 'from spark-submit'}): {exc}") from exc
    spark.sparkContext.setLogLevel(os.environ.get("NCF_SPARK_LOG_LEVEL", "ERROR"))
    return spark
