"""The test suite's driver start-up options (tests/spark_jvm.py) reach the JVM, rather than being dropped quietly."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.spark


def test_the_suites_jvm_options_reach_the_running_driver(spark):
    wanted = os.environ["SPARK_SUBMIT_OPTS"].split()
    arguments = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
                     .getInputArguments())
    assert wanted and set(wanted) <= set(arguments), arguments
    archive = next((w.split("=", 1)[1] for w in wanted if w.startswith("-XX:SharedArchiveFile=")), None)
    assert archive is None or os.path.exists(archive)
    # a spark.* system property of the driver is a Spark setting: a standalone cluster's executors get C1 too
    assert "-XX:TieredStopAtLevel=1" in spark.sparkContext.getConf().get("spark.executor.extraJavaOptions").split()
