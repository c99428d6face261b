"""The test suite's driver start-up options (tests/spark_jvm.py) reach the JVM, rather than being dropped quietly."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests import spark_jvm

pytestmark = pytest.mark.spark


def test_the_suites_jvm_options_reach_the_running_driver(spark):
    wanted = os.environ["SPARK_SUBMIT_OPTS"].split()
    arguments = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
                     .getInputArguments())
    assert wanted and set(wanted) <= set(arguments), arguments
    archive = next((w.split("=", 1)[1] for w in wanted if w.startswith("-XX:SharedArchiveFile=")), None)
    assert archive == str(spark_jvm.archive_path())  # this machine's archive (dumped in the background when missing)
    # a spark.* system property of the driver is a Spark setting: a standalone cluster's executors get C1 too
    assert "-XX:TieredStopAtLevel=1" in spark.sparkContext.getConf().get("spark.executor.extraJavaOptions").split()


def test_a_dump_still_running_at_the_end_of_the_session_is_stopped_and_its_partial_file_removed(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    partial = spark_jvm.archive_path().with_name(f"spark.jsa.{os.getpid()}.tmp")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half an archive")
    dump = subprocess.Popen(["sleep", "60"], start_new_session=True)
    started = time.monotonic()
    problem = spark_jvm.finish_archive_dump(dump, timeout_s=0.2)
    assert dump.returncode == -signal.SIGKILL and not partial.exists() and time.monotonic() - started < 10
    assert problem == f"the Spark class-data archive dump exited with -9; no {spark_jvm.archive_path()}"
