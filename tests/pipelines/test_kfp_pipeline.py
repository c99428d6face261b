"""The KFP adapter: compiled IR loads back with the KFP SDK and carries the kfp-kubernetes settings."""

from __future__ import annotations

import yaml
from kfp import components

from pipelines import definition
from pipelines.kfp_pipeline import KubernetesSettings, compile_ir

from .conftest import OVERRIDES


def _docs(text: str) -> tuple[dict, dict]:
    pipeline_spec, platform_spec = yaml.safe_load_all(text)
    return pipeline_spec, platform_spec


def test_compiled_yaml_loads_back_with_the_kfp_sdk(kfp_ir, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(kfp_ir)
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == definition.PIPELINE_NAME
    assert set(loaded.component_spec.inputs) == {p.name for p in definition.parameters()}
    assert loaded.component_spec.platform_spec.platforms["kubernetes"]


def test_parameters_and_defaults_are_the_declared_ones(kfp_ir):
    spec, _ = _docs(kfp_ir)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    for p in definition.parameters():
        assert p.name in inputs
        expected = OVERRIDES.get(p.name, None if p.required else p.default)
        if expected is None:
            assert "defaultValue" not in inputs[p.name]
        else:
            assert inputs[p.name]["defaultValue"] == expected, p.name


def test_deploy_runs_only_when_the_gate_returns_true(kfp_ir):
    spec, _ = _docs(kfp_ir)
    root_tasks = spec["root"]["dag"]["tasks"]
    [condition] = [t for t in root_tasks.values() if t["taskInfo"]["name"] == "gate-promoted"]
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    assert condition["dependentTasks"] == ["gate"]
    assert list(spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]) == ["deploy"]
    assert spec["components"]["comp-gate"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "BOOLEAN"


def test_retries_timeouts_and_caching(kfp_ir):
    spec, platform = _docs(kfp_ir)
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("preprocess", "train"):
        assert tasks[name]["retryPolicy"] == {
            "backoffDuration": "60s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s", "maxRetryCount": 2,
        }
    assert "retryPolicy" not in tasks["gate"]  # a retry could register the model twice
    assert tasks["preprocess"]["cachingOptions"] == {"enableCache": True}
    assert tasks["train"]["cachingOptions"] == {"enableCache": True}
    assert tasks["gate"]["cachingOptions"] == {}  # registers a version: never served from cache
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["activeDeadlineSeconds"] == str(6 * 3600)
    assert executors["exec-deploy"]["activeDeadlineSeconds"] == str(1200)


def test_gpu_node_selector_toleration_and_credentials_in_the_platform_spec(kfp_ir):
    spec, platform = _docs(kfp_ir)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train"]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert train["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    for name in ("exec-preprocess", "exec-train", "exec-gate", "exec-deploy"):
        secret = executors[name]["secretAsEnv"][0]
        assert secret["secretName"] == "ncf-s3-credentials"
        assert {e["envVar"] for e in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        config_map = executors[name]["configMapAsEnv"][0]
        assert config_map["configMapName"] == "ncf-storage"
    assert "nodeSelector" not in executors["exec-preprocess"]


def test_settings_are_configurable(tmp_path):
    settings = KubernetesSettings(
        gpu_count=0, aws_secret="", storage_config_map="", retries=0, caching=False,
    )
    spec, platform = _docs(compile_ir(tmp_path / "cpu.yaml", settings, overrides=OVERRIDES).read_text())
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-train"]["container"].get("resources", {})
    executors = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    assert all("secretAsEnv" not in e and "nodeSelector" not in e for e in executors.values())
    tasks = spec["root"]["dag"]["tasks"]
    assert "retryPolicy" not in tasks["train"] and tasks["train"]["cachingOptions"] == {}


def test_components_use_the_project_images(kfp_ir):
    from pipelines import images

    spec, _ = _docs(kfp_ir)
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-train"]["container"]["image"] == images.TRAIN_IMAGE
    for name in ("exec-preprocess", "exec-gate", "exec-deploy"):
        assert executors[name]["container"]["image"] == images.PIPELINE_IMAGE
        assert "pip install" not in " ".join(executors[name]["container"]["command"])
