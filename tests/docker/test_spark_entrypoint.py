"""docker/spark-entrypoint.sh in `driver` mode, the way the Spark Operator starts the driver pod (spark-submit in
client deploy mode), running the SparkApplication's main file on a tiny log with a local master instead of
k8s://. The `executor` branch needs a Kubernetes driver to connect to and is not run here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17 on PATH"),
    pytest.mark.slow,  # one spark-submit: JVM + Python workers, ~15-25 s on 2 cores
]


def test_driver_mode_runs_the_spark_application_main_file(tmp_path):
    import pyspark

    log = tmp_path / "events.csv"
    rows = ["user_id,item_id,ts"] + [f"u{u},i{(u * 7 + k) % 40},{1_700_000_000 + u * 100 + k}"
                                     for u in range(25) for k in range(8)]
    log.write_text("\n".join(rows) + "\n")
    main_file = REPO_ROOT / "spark" / "preprocess.py"  # local:///opt/ncf/spark/preprocess.py in the image
    env = {
        "PATH": os.environ["PATH"],
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "HOME": str(tmp_path),
    }
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    result = subprocess.run(
        [str(REPO_ROOT / "docker" / "spark-entrypoint.sh"), "driver",
         "--master", "local[1]", "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.memory=1g",
         str(main_file), f"--input-uri={log}", f"--storage-root={tmp_path / 'root'}", "--run-date=2026-11-27",
         "--min-user-interactions=2", "--min-item-interactions=2", "--num-test-negatives=5"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    partition = tmp_path / "root" / "data" / "dt=2026-11-27"
    assert (partition / "_SUCCESS").exists()
    stats = json.loads((partition / "stats.json").read_text())
    assert stats["num_users"] == 25 and stats["num_test"] == 25
