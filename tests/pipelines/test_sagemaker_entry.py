"""SageMaker container entry points: hyperparameters (all strings) become a typed TrainConfig."""

from __future__ import annotations

import json

import pytest

from ncf.errors import UserError
from pipelines import sagemaker_entry


def test_hyperparameters_are_parsed_with_the_steps_own_types():
    config = sagemaker_entry.train_config_from_hyperparameters({
        "partition_uri": "s3://b/p/data/dt=2026-03-01", "output_uri": "s3://b/p/models/exec1",
        "epochs": "3", "lr": "0.002", "batch_size": "512", "dropout": "0.1", "model": "GMF",
    })
    assert (config.epochs, config.lr, config.batch_size, config.dropout, config.model) == (3, 0.002, 512, 0.1, "GMF")
    assert config.output_uri == "s3://b/p/models/exec1"


def test_a_bad_hyperparameter_names_the_file_and_value():
    with pytest.raises(UserError, match="hyperparameters.json.*epochs"):
        sagemaker_entry.train_config_from_hyperparameters({"partition_uri": "p", "output_uri": "o", "epochs": "x"})


def test_unknown_command_is_a_user_error(capsys):
    assert sagemaker_entry.main(["evaluate"]) == 2
    assert "usage: python -m pipelines.sagemaker_entry" in capsys.readouterr().err


def test_preprocess_defaults_the_run_date_to_the_executions_day(monkeypatch, tmp_path):
    """The wiring only (the step itself runs in tests/spark): the config handed to spark.preprocess.run."""
    import spark.preprocess

    seen = []

    def run(config):
        seen.append(config)
        return spark.preprocess.PreprocessResult(partition_uri="s3://b/p/data/dt=x", stats={"run_date": config.run_date})

    monkeypatch.setattr(spark.preprocess, "run", run)
    common = ["--output-dir", str(tmp_path), "--input-uri", "s3://b/raw/", "--storage-root", "s3://b/p"]
    assert sagemaker_entry.main(["preprocess", *common, "--scheduled-time", "2026-11-27T23:59:58.123Z"]) == 0
    assert sagemaker_entry.main(["preprocess", *common, "--run-date", "2026-01-01",
                                 "--scheduled-time", "2026-11-27T02:00:00Z"]) == 0
    assert [c.run_date for c in seen] == ["2026-11-27", "2026-01-01"]
    assert json.loads((tmp_path / sagemaker_entry.PARTITION_FILE).read_text())["run_date"] == "2026-01-01"


def test_recommend_runs_the_step_with_its_flags(tmp_path, capsys):
    from ncf import contracts, storage
    from tests.ncf.test_recommend import _package

    package = _package(tmp_path / "models" / "run-1")
    assert sagemaker_entry.main(["recommend", "--model-uri", package, "--storage-root", str(tmp_path),
                                 "--run-date", "2026-03-02", "--recommend-k", "3", "--device", "cpu"]) == 0
    assert storage.is_complete(contracts.recommendations_uri(tmp_path, "2026-03-02"))
    assert "recommend: 37 users from" in capsys.readouterr().out
