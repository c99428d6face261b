"""Parameter values from config/pipeline-params.yaml and --param flags, checked against the declaration."""

from __future__ import annotations

import pytest

from ncf.errors import UserError
from pipelines import definition, params


def test_the_ci_params_file_is_valid_and_uses_s3_storage():
    values = params.load_file(params.DEFAULT_PARAMS_FILE)
    declared = {p.name: p for p in definition.parameters()}
    assert set(values) <= set(declared)
    for name in ("epochs", "lr", "batch_size", "top_k", "dropout", "factor_num", "num_layers"):
        assert isinstance(values[name], declared[name].type), name
    assert values["storage_root"].startswith("s3://")
    assert values["serving_target"] == "kserve"


def test_unknown_names_and_bad_values_name_the_source(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"p.yaml: unknown pipeline parameter\(s\) \['learning_rate'\]"):
        params.load_file(bad)
    bad.write_text("epochs: three\n")
    with pytest.raises(UserError, match="p.yaml: epochs must be int, got 'three'"):
        params.load_file(bad)
    bad.write_text("- epochs\n")
    with pytest.raises(UserError, match="expected a mapping"):
        params.load_file(bad)
    with pytest.raises(UserError, match="cannot read"):
        params.load_file(tmp_path / "missing.yaml")


def test_flags_are_typed():
    assert params.parse_flags(["epochs=3", "lr=0.01", "model_name=ncf2"]) == {
        "epochs": 3, "lr": 0.01, "model_name": "ncf2",
    }
    with pytest.raises(UserError, match="expected NAME=VALUE"):
        params.parse_flags(["epochs"])
    with pytest.raises(UserError, match="--param: epochs must be an integer, got 2.5"):
        params.validate({"epochs": 2.5}, "--param")
