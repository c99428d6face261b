"""Typed configs <-> flags: the seed's names survive, bad values get a clear message."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ncf.config import add_arguments, from_dict, from_namespace, param, pipeline_fields
from ncf.errors import UserError


@dataclasses.dataclass
class ExampleConfig:
    partition_uri: str = param(help="input partition")
    factor_num: int = param(32, "embedding size", pipeline=True)
    lr: float = param(0.001, "learning rate", pipeline=True)
    early_stop: bool = param(True, "stop on plateau")
    tracking_uri: str | None = param(None, "MLflow URI", pipeline=True)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, ExampleConfig)
    return from_namespace(ExampleConfig, parser.parse_args(argv))


def test_flags_round_trip_with_types():
    cfg = _parse(["--partition-uri", "p", "--factor-num", "8", "--lr", "0.01", "--early-stop", "false"])
    assert cfg == ExampleConfig("p", 8, 0.01, False, None)


def test_required_field_and_bad_value_are_rejected(capsys):
    with pytest.raises(SystemExit):
        _parse([])
    assert "--partition-uri" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--partition-uri", "p", "--factor-num", "eight"])
    assert "invalid int value: 'eight'" in capsys.readouterr().err


def test_pipeline_fields_are_the_user_facing_ones():
    assert [f.name for f in pipeline_fields(ExampleConfig)] == ["factor_num", "lr", "tracking_uri"]


def test_from_dict_names_unknown_fields():
    with pytest.raises(UserError, match=r"params.yaml: unknown field\(s\) \['factor'\]"):
        from_dict(ExampleConfig, {"partition_uri": "p", "factor": 3}, source="params.yaml")


def test_help_with_a_literal_percent_sign_formats():
    from ncf.train import TrainConfig

    parser = argparse.ArgumentParser(prog="ncfctl train")
    add_arguments(parser, TrainConfig)
    assert "80% of the memory" in parser.format_help()  # argparse's %-formatting used to fail on it
