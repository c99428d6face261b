"""KFP components: thin wrappers over the steps, one per declared step, with the step's user-facing fields."""

from __future__ import annotations

import pytest

from components.deploy import deploy
from components.gate import gate
from components.preprocess import preprocess
from components.recommend import recommend
from components.train import train
from pipelines import definition, images, kfp_pipeline

COMPONENTS = {"preprocess": preprocess, "train": train, "gate": gate, "deploy": deploy, "recommend": recommend}
# Inputs the pipeline wires (artifacts, the run id, the run's scheduled time), not user-facing parameters.
WIRING = {
    "preprocess": {"scheduled_time"},  # the run's scheduled time (KFP placeholder): the default run date
    "train": {"partition", "pipeline_run_id"},
    "gate": {"partition", "package", "pipeline_run_id"},
    "deploy": set(),
    "recommend": {"partition"},  # its storage root and run date
}


@pytest.mark.parametrize("step", definition.STEPS, ids=lambda s: s.name)
def test_component_inputs_are_the_steps_user_facing_fields_plus_wiring(step):
    component = COMPONENTS[step.name]
    assert set(component.component_spec.inputs) == set(definition.step_parameters(step)) | WIRING[step.name], (
        f"components/{step.name}.py: its signature must list exactly {step.config}'s pipeline=True fields"
    )


def test_every_declared_step_has_a_component_and_a_kfp_builder():
    assert set(COMPONENTS) == {s.name for s in definition.STEPS} == set(kfp_pipeline.BUILDERS)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_components_run_the_project_image_without_installing_kfp(name):
    container = COMPONENTS[name].component_spec.implementation.container
    assert container.image == (images.TRAIN_IMAGE if name == "train" else images.PIPELINE_IMAGE)
    command = " ".join(container.command)
    assert "pip install" not in command  # install_kfp_package=False: the image has kfp
    # the step is imported inside the body, so compiling never imports Spark / torch / MLflow
    module = next(s.config.split(":")[0] for s in definition.STEPS if s.name == name)
    assert f"from {module} import" in command[command.index(f"def {name}("):]


def test_the_gate_returns_one_bool_and_writes_a_report_and_metrics():
    spec = gate.component_spec
    assert {n: o.type for n, o in spec.outputs.items()} == {
        "Output": "Boolean", "scores": "system.Metrics@0.0.1", "report": "system.HTML@0.0.1",
    }


def test_artifact_types_for_the_kfp_ui():
    assert preprocess.component_spec.outputs["partition"].type == "system.Dataset@0.0.1"
    assert train.component_spec.outputs["package"].type == "system.Model@0.0.1"
    assert train.component_spec.outputs["metrics"].type == "system.Metrics@0.0.1"
    assert deploy.component_spec.outputs["Output"].type == "String"
    assert recommend.component_spec.outputs["recommendations"].type == "system.Dataset@0.0.1"
