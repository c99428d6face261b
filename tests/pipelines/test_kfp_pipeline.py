"""The KFP adapter: compiled IR loads back with the KFP SDK and carries the kfp-kubernetes settings; the cache
key a KFP backend computes for preprocess changes with the run's day."""

from __future__ import annotations

import pytest
import yaml
from kfp import components

from pipelines import definition, images
from pipelines.kfp_pipeline import KubernetesSettings, compile_ir
from pipelines.run_date import resolve

from .conftest import OVERRIDES
from .kfp_cache_key import Run, cache_key, fingerprint, resolved_inputs


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
    # recommend is not guarded: after the gate whatever it decided (the champion, new or kept, recommends)
    assert set(root_tasks["recommend"]["dependentTasks"]) == {"gate", "preprocess"}
    assert "triggerPolicy" not in root_tasks["recommend"]
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
    # recommend reads the champion the gate may just have moved: never cached; resumable: retried
    assert tasks["recommend"]["cachingOptions"] == {} and tasks["recommend"]["retryPolicy"]["maxRetryCount"] == 2
    assert executors["exec-recommend"]["activeDeadlineSeconds"] == str(2 * 3600)


def test_gpu_toleration_and_credentials_in_the_platform_spec(kfp_ir):
    spec, platform = _docs(kfp_ir)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train"]
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


# ---- fresh data every scheduled run (issue #12, defect 1) -----------------------------------------------------
DAY_1 = Run(run_id="run-1", created_utc="2026-11-27T02:00:07Z", scheduled_utc="2026-11-27T02:00:00Z")
DAY_2 = Run(run_id="run-2", created_utc="2026-11-28T02:00:05Z", scheduled_utc="2026-11-28T02:00:00Z")
MANUAL = Run(run_id="run-3", created_utc="2026-11-29T09:15:00Z")  # nobody scheduled it: its creation time


def test_two_scheduled_days_give_preprocess_two_cache_keys_and_two_partitions(kfp_ir):
    """The backend's cache key of preprocess (tests/pipelines/kfp_cache_key.py: kubeflow/pipelines 2.17.0
    backend/src/v2) for two daily runs with the default run_date "": different keys, and each run's empty
    run_date resolves to its own day. A retry of the same run keeps its key (a cache hit, on purpose)."""
    keys = {run.run_id: fingerprint(cache_key(kfp_ir, "preprocess", run)) for run in (DAY_1, DAY_2, MANUAL)}
    assert len(set(keys.values())) == 3, "a daily run would reuse an earlier day's partition"
    assert fingerprint(cache_key(kfp_ir, "preprocess", DAY_1)) == keys["run-1"]
    days = [resolve(i["run_date"], i["scheduled_time"])
            for i in (resolved_inputs(kfp_ir, "preprocess", run) for run in (DAY_1, DAY_2, MANUAL))]
    assert days == ["2026-11-27", "2026-11-28", "2026-11-29"]
    # An explicit run_date (a backfill) wins over the schedule.
    backfill = Run(run_id="run-4", created_utc=DAY_2.created_utc, parameters={"run_date": "2026-01-01"})
    inputs = resolved_inputs(kfp_ir, "preprocess", backfill)
    assert resolve(inputs["run_date"], inputs["scheduled_time"]) == "2026-01-01"


def test_train_is_keyed_by_the_run_and_side_effecting_steps_are_never_cached(kfp_ir):
    spec, _ = _docs(kfp_ir)
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train"]["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    day1, day2 = (fingerprint(cache_key(kfp_ir, "train", run, {"partition": [f"partition-{run.run_id}"]}))
                  for run in (DAY_1, DAY_2))
    assert day1 != day2
    assert not tasks["gate"]["cachingOptions"].get("enableCache")


# ---- GPU scheduling (defect 5) --------------------------------------------------------------------------------
def test_train_asks_for_what_the_device_plugin_provides_and_the_run_has_a_deadline(kfp_ir):
    """The NVIDIA device plugin (docs/cluster.md installs it) advertises nvidia.com/gpu; nothing in the documented
    install sets GPU Feature Discovery labels (nvidia.com/gpu.present), so the train pod selects none, and a pod
    that no node can take fails with the run's deadline instead of staying Pending for ever."""
    spec, platform = _docs(kfp_ir)
    kubernetes_spec = platform["platforms"]["kubernetes"]
    train = kubernetes_spec["deploymentSpec"]["executors"]["exec-train"]
    assert "nodeSelector" not in train and "nodeAffinity" not in train
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert (resources["accelerator"]["resourceType"], resources["accelerator"]["resourceCount"]) == ("nvidia.com/gpu", "1")
    deadline = int(kubernetes_spec["pipelineConfig"]["activeDeadlineSeconds"])
    longest = max(int(e.get("activeDeadlineSeconds", 0)) for e in kubernetes_spec["deploymentSpec"]["executors"].values())
    assert longest < deadline <= 24 * 3600, "longer than any task's own timeout, shorter than the daily schedule"


def test_a_node_selector_is_still_available_for_choosing_among_gpu_nodes(tmp_path):
    settings = KubernetesSettings(gpu_node_selector=(("node.kubernetes.io/instance-type", "g5.xlarge"),))
    _, platform = _docs(compile_ir(tmp_path / "p.yaml", settings, overrides=OVERRIDES).read_text())
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert train["nodeSelector"]["labels"] == {"node.kubernetes.io/instance-type": "g5.xlarge"}


# ---- images (defect 3) ----------------------------------------------------------------------------------------
def test_every_task_pulls_its_immutable_image_if_not_present_and_private_registries_get_a_secret(tmp_path, kfp_ir):
    spec, platform = _docs(kfp_ir)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {e.get("imagePullPolicy") for e in executors.values()} == {images.PULL_POLICY} == {"IfNotPresent"}
    assert len(executors) == len(spec["deploymentSpec"]["executors"])
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"].endswith(":" + images.tag()) and images.tag() != images.project_version()
    settings = KubernetesSettings(image_pull_secrets=("ncf-registry",))
    _, platform = _docs(compile_ir(tmp_path / "p.yaml", settings, overrides=OVERRIDES).read_text())
    for executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        assert [s["secretName"] for s in executor["imagePullSecret"]] == ["ncf-registry"]


def test_kfp_local_gets_no_placeholder_it_cannot_resolve_and_compiling_is_unaffected(tmp_path):
    """kfp.local (2.17.3) fails on `{{$.pipeline_job_schedule_time_utc}}`: built for it, preprocess gets ""."""
    from kfp import compiler

    from pipelines.kfp_pipeline import build_pipeline

    path = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_pipeline(for_kfp_local=True, overrides=OVERRIDES), package_path=str(path))
    local_inputs = resolved_inputs(path.read_text(), "preprocess", DAY_1)
    assert local_inputs["scheduled_time"] == "" and resolve(local_inputs["run_date"], "") == ""
    assert resolved_inputs(compile_ir(tmp_path / "c.yaml", overrides=OVERRIDES).read_text(), "preprocess", DAY_1)[
        "scheduled_time"] == DAY_1.scheduled_utc


@pytest.mark.slow
def test_kfp_local_runs_preprocess_with_an_empty_run_date_as_today(tmp_path):
    """The real runner, one step: the partition is today's (UTC). `ncfctl run` passes its dates explicitly."""
    import datetime as dt

    import numpy as np
    from kfp import local

    from pipelines.kfp_pipeline import build_pipeline

    # 60 users x 12 interactions over 150 items: every user and item passes the 5/5 filter, 99 negatives exist.
    rng = np.random.default_rng(0)
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,ts\n" + "".join(
        f"u{u},i{i},{1_700_000_000 + 60 * n}\n"
        for u in range(60) for n, i in enumerate(rng.choice(150, 12, replace=False))))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    pipeline = build_pipeline(steps=(definition.STEPS[0],))  # after local.init: built for kfp.local
    pipeline(input_uri=str(events), storage_root=str(tmp_path), run_date="")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith("dt=")] == [f"dt={today}"]
