"""The family registry and the train step's settings: every family's settings are TrainConfig fields."""

from __future__ import annotations

import dataclasses

import pytest

from ncf.errors import UserError
from ncf.families import FAMILIES, get
from ncf.train import TrainConfig, hyperparameters


def test_settings_are_the_train_config_fields_marked_with_the_family():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in FAMILIES:
        family = get(name)
        assert family.name == name
        settings = {f.name for f in dataclasses.fields(family.settings_type)}
        marked = {n for n, f in fields.items() if f.metadata.get("family") == name}
        assert settings == marked, name
        # the defaults agree, so `family.settings(TrainConfig(...))` of an untouched config is the family's default
        config = TrainConfig(partition_uri="p", output_uri="o", family=name)
        assert family.settings(config) == family.settings_type()


def test_hyperparameters_hold_the_chosen_familys_settings_only():
    ease = hyperparameters(TrainConfig(partition_uri="p", output_uri="o", family="ease", ease_lambda=50.0))
    assert ease["ease_lambda"] == 50.0 and ease["family"] == "ease"
    assert "lr" not in ease and "ials_factors" not in ease and "top_k" in ease
    ncf = hyperparameters(TrainConfig(partition_uri="p", output_uri="o"))
    assert ncf["lr"] == 0.002 and "ease_lambda" not in ncf


def test_unknown_family():
    with pytest.raises(UserError, match="unknown model family 'bert4rec'"):
        get("bert4rec")
