"""The one declaration: parameters are exactly the union of the steps' user-facing config fields."""

from __future__ import annotations

import dataclasses

import pytest

from ncf.config import param, pipeline_fields
from pipelines import definition
from pipelines.definition import STEPS, AdapterError, Step

SEED_HYPERPARAMETERS = ("epochs", "lr", "batch_size", "top_k", "dropout", "factor_num", "num_layers")
REQUIRED_BY_THE_ISSUE = (
    "run_date", "input_uri", "storage_root", *SEED_HYPERPARAMETERS,
    "gate_metric", "min_delta", "floor", "model_name", "serving_target", "tracking_uri",
)


@dataclasses.dataclass
class FirstConfig:
    shared: int = param(3, "shared by both", pipeline=True)
    only_first: str = param("a", "user-facing", pipeline=True)
    internal: str = param("x", "wired by the pipeline")


@dataclasses.dataclass
class SecondConfig:
    shared: int = param(3, "same default", pipeline=True)
    only_second: float = param(0.5, "user-facing", pipeline=True)


@dataclasses.dataclass
class ConflictingConfig:
    shared: int = param(4, "a different default", pipeline=True)


def _steps(*configs: str) -> tuple[Step, ...]:
    names = ("first", "second", "third")
    return tuple(
        Step(names[i], f"{__name__}:{cfg}", (names[i - 1],) if i else ()) for i, cfg in enumerate(configs)
    )


def test_parameters_are_exactly_the_union_of_the_user_facing_fields():
    expected: dict[str, object] = {}
    for step in STEPS:
        for field in pipeline_fields(step.config_class()):
            expected.setdefault(field.name, field.default)
    params = definition.parameters()
    assert [p.name for p in params] == list(expected)
    assert {p.name: p.default for p in params} == expected
    for name in REQUIRED_BY_THE_ISSUE:
        assert name in expected, f"{name} must be a user-facing field of some step config"


def test_shared_fields_become_one_parameter_listing_their_steps():
    params = {p.name: p for p in definition.parameters(_steps("FirstConfig", "SecondConfig"))}
    assert list(params) == ["shared", "only_first", "only_second"]
    assert params["shared"].steps == ("first", "second")
    assert params["only_second"].type is float and params["only_second"].default == 0.5


def test_a_field_declared_differently_by_two_steps_is_an_error_naming_both():
    with pytest.raises(AdapterError, match=r"'shared' is declared differently by steps \('first',\).*'second'"):
        definition.parameters(_steps("FirstConfig", "ConflictingConfig"))


def test_dependency_order_and_edges():
    assert definition.dependency_order() == ["preprocess", "train", "gate", "deploy", "recommend"]
    assert definition.edges() == {("preprocess", "train"), ("train", "gate"), ("gate", "deploy"),
                                  ("gate", "recommend")}
    with pytest.raises(AdapterError, match="runs after undeclared step 'missing'"):
        definition.dependency_order((Step("a", "x:Y", ("missing",)),))


def test_the_gate_guards_deploy_on_the_gate_steps_promoted_output():
    assert definition.GATE.step == "gate" and definition.GATE.output == "promoted"
    assert definition.GATE.equals is True and definition.GATE.guarded == ("deploy",)
    assert "recommend" not in definition.GATE.guarded  # the champion (new or kept) recommends every night
    from ncf.gate import GateResult

    assert "promoted" in {f.name for f in dataclasses.fields(GateResult)}


def test_check_adapter_names_the_adapter_and_the_missing_steps():
    with pytest.raises(AdapterError, match=r"the kfp adapter does not implement declared step\(s\) \['deploy'\]"):
        definition.check_adapter("kfp", {"preprocess": 1, "train": 1, "gate": 1, "recommend": 1})
