"""SageMaker container entry points: hyperparameters (all strings) become a typed TrainConfig."""

from __future__ import annotations

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
