"""Parity: the compiled KFP IR and the SageMaker definition are the same pipeline as the one declaration."""

# No `from __future__ import annotations`: the test component below needs real annotations for KFP.

import copy
import dataclasses
import json

import pytest
from kfp import dsl

from ncf.config import param
from pipelines import definition, kfp_pipeline, parity, sagemaker_pipeline
from pipelines.definition import STEPS, AdapterError, Step

from .conftest import OVERRIDES


def test_kfp_and_sagemaker_compile_to_the_same_pipeline(kfp_ir, sagemaker_definition):
    assert parity.check(kfp_ir, sagemaker_definition, overrides=OVERRIDES) == []
    kfp, sm = parity.kfp_shape(kfp_ir), parity.sagemaker_shape(sagemaker_definition)
    assert kfp.order == sm.order == ("preprocess", "train", "gate", "deploy", "recommend")
    assert kfp.edges == sm.edges == {("preprocess", "train"), ("train", "gate"), ("gate", "deploy"),
                                     ("gate", "recommend")}
    assert kfp.gate == sm.gate == ("gate", "promoted", True, ("deploy",))
    assert kfp.parameters == sm.parameters
    assert kfp.parameters["storage_root"] == ("str", OVERRIDES["storage_root"])


# --- a step added to the declaration -----------------------------------------------------------------------------


@dataclasses.dataclass
class ExplainConfig:
    model_uri: str = param("", "wired by the pipeline")
    explain_top_n: int = param(5, "items to explain per user", pipeline=True)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def explain(explain_top_n: int) -> str:
    return str(explain_top_n)


EXPLAIN = Step("explain", f"{__name__}:ExplainConfig", ("train",), "explain recommendations")
WITH_EXPLAIN = (*STEPS[:2], EXPLAIN, *STEPS[2:])


def _kfp_taught_explain(step, params, tasks):
    return explain(explain_top_n=params["explain_top_n"])


def test_a_new_step_the_sagemaker_adapter_was_not_taught_fails_naming_that_adapter():
    with pytest.raises(AdapterError, match=r"the sagemaker adapter does not implement declared step\(s\) \['explain'\]"):
        sagemaker_pipeline.build_pipeline(steps=WITH_EXPLAIN, overrides=OVERRIDES)
    with pytest.raises(AdapterError, match=r"the kfp adapter does not implement declared step\(s\) \['explain'\]"):
        kfp_pipeline.build_pipeline(steps=WITH_EXPLAIN, overrides=OVERRIDES)


def test_parity_names_the_backend_that_lacks_a_declared_step(tmp_path, sagemaker_definition):
    taught = {**kfp_pipeline.BUILDERS, "explain": _kfp_taught_explain}
    kfp_ir = kfp_pipeline.compile_ir(tmp_path / "p.yaml", steps=WITH_EXPLAIN, builders=taught,
                                     overrides=OVERRIDES).read_text()
    problems = parity.check(kfp_ir, sagemaker_definition, steps=WITH_EXPLAIN, overrides=OVERRIDES)
    assert "SageMaker: step 'explain' is declared but missing (teach the SageMaker adapter)" in problems
    assert "SageMaker: parameter 'explain_top_n' is declared but missing" in problems
    assert not [p for p in problems if p.startswith("KFP")], problems
    assert parity.kfp_shape(kfp_ir).order == ("preprocess", "train", "explain", "gate", "deploy", "recommend")


# --- drift inside a compiled output --------------------------------------------------------------------------


def test_a_changed_default_is_reported_with_both_values(kfp_ir, sagemaker_definition):
    drifted = copy.deepcopy(sagemaker_definition)
    lr = next(p for p in drifted["Parameters"] if p["Name"] == "lr")
    lr["DefaultValue"] = lr["DefaultValue"] * 10
    problems = parity.check(kfp_ir, drifted, overrides=OVERRIDES)
    assert len(problems) == 1 and problems[0].startswith("SageMaker: parameter 'lr' is ('float', "), problems


def test_a_changed_gate_condition_is_reported(kfp_ir, sagemaker_definition):
    drifted = json.loads(json.dumps(sagemaker_definition).replace('"RightValue": true', '"RightValue": false'))
    problems = parity.check(kfp_ir, drifted, overrides=OVERRIDES)
    assert problems == [
        "SageMaker: gate condition ('gate', 'promoted', False, ('deploy',)) != declared "
        "('gate', 'promoted', True, ('deploy',))"
    ]


def test_a_lost_dependency_is_reported(kfp_ir, sagemaker_definition):
    drifted = copy.deepcopy(sagemaker_definition)
    gate = next(s for s in drifted["Steps"] if s["Name"] == "gate")
    del gate["DependsOn"]  # the gate reads the model by URI: only DependsOn orders it after training
    problems = parity.check(kfp_ir, drifted, overrides=OVERRIDES)
    assert "SageMaker: missing dependency train -> gate" in problems


def test_declared_shape_uses_overrides_for_defaults():
    shape = parity.declared_shape(overrides={"epochs": 3})
    assert shape.parameters["epochs"] == ("int", 3)
    assert shape.order == tuple(definition.dependency_order())
