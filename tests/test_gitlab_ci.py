""".gitlab-ci.yml: the stages, that every job's commands exist in the project (make targets, ncfctl commands and
their flags, files), that the shell snippets do what they claim, and that `rules:` fire on the intended triggers
(evaluated here for merge requests, branch pushes, default-branch pushes with and without a change to the
pipeline parameters file, and schedules)."""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.manifests.validation import kubectl

CI = yaml.safe_load((REPO_ROOT / ".gitlab-ci.yml").read_text())
RESERVED = {"stages", "workflow", "variables", "default", "include", "image", "services", "cache", "before_script",
            "after_script"}
PARAMS_FILE = "config/pipeline-params.yaml"
NCFCTL = Path(sys.executable).with_name("ncfctl")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """GitLab's `extends`: hashes merge deeply, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve(name: str) -> dict[str, Any]:
    job = CI[name]
    parents = job.get("extends", [])
    resolved: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        assert parent in CI, f"{name} extends unknown {parent}"
        resolved = _merge(resolved, _resolve(parent))
    return _merge(resolved, {k: v for k, v in job.items() if k != "extends"})


JOBS = {name: _resolve(name) for name in CI if name not in RESERVED and not name.startswith(".")}


def _lines(job: dict[str, Any]) -> list[str]:
    return [line for key in ("before_script", "script") for line in job.get(key, [])]


def _variables() -> dict[str, str]:
    return {k: str(v) for k, v in CI["variables"].items()}


def test_stages_run_test_compile_upload_run_deploy():
    assert CI["stages"] == ["test", "compile", "upload", "run", "deploy"]
    assert {job["stage"] for job in JOBS.values()} == set(CI["stages"])
    assert set(JOBS) == {"test", "compile", "images", "upload", "run", "deploy-manifests"}
    assert JOBS["test"]["script"] == ["make test"]  # the README's test command


# ---- commands exist ------------------------------------------------------------------------------------------
def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), re.M))


def _ncfctl_help(command: str) -> str:
    result = subprocess.run([str(NCFCTL), command, "--help"], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, f"ncfctl {command} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


def test_make_targets_exist():
    targets = _make_targets()
    used = [(name, word) for name, job in JOBS.items() for line in _lines(job)
            for word in re.findall(r"(?:^|&& )make ([\w-]+)", line)]
    assert used
    for name, target in used:
        assert target in targets, f"{name}: `make {target}` is not a Makefile target"


def test_ncfctl_commands_and_flags_exist():
    from ncfctl.cli import COMMANDS

    if not NCFCTL.exists():
        pytest.skip(f"{NCFCTL} not installed (make setup)")
    calls = [(name, shlex.split(line)) for name, job in JOBS.items() for line in _lines(job) if "ncfctl " in line]
    assert {name for name, _ in calls} >= {"upload", "run"}
    helps: dict[str, str] = {}
    for name, words in calls:
        command = words[words.index(next(w for w in words if w.endswith("ncfctl"))) + 1]
        assert command in COMMANDS, f"{name}: `ncfctl {command}` is not in ncfctl/cli.py COMMANDS"
        helps.setdefault(command, _ncfctl_help(command))
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[command]), (
                f"{name}: ncfctl {command} has no {flag} flag"
            )
        for word in words:
            if word.startswith(("config/", "docker/", "manifests/")):
                assert (REPO_ROOT / word).exists(), f"{name}: {word} does not exist"


def test_compile_artifacts_are_the_files_make_compile_writes():
    from pipelines import compile as compile_module

    recipe = re.search(r"^compile:.*\n((?:\t.*\n)+)", (REPO_ROOT / "Makefile").read_text(), re.M).group(1)
    output_dir = re.search(r"--output-dir (\S+)", recipe).group(1)
    assert sorted(JOBS["compile"]["artifacts"]["paths"]) == sorted(
        [f"{output_dir}/{compile_module.KFP_FILE}", f"{output_dir}/{compile_module.SAGEMAKER_FILE}"]
    )


def test_images_job_builds_the_projects_images_at_its_version():
    from pipelines import images

    script = "\n".join(JOBS["images"]["script"])
    names = re.search(r"for name in ([\w\s-]+); do", script).group(1).split()
    assert sorted(names) == sorted(images.NAMES)
    for name in names:
        assert (REPO_ROOT / "docker" / f"{name}.Dockerfile").exists()
    version_line = next(line for line in JOBS["images"]["script"] if line.startswith("VERSION="))
    result = subprocess.run(["bash", "-c", f"{version_line}; printf %s \"$VERSION\""], capture_output=True,
                            text=True, cwd=REPO_ROOT, check=True)
    assert result.stdout == images.project_version()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    overlay = REPO_ROOT / "manifests" / "overlays" / _variables()["NCF_OVERLAY"]
    assert overlay.is_dir()
    path = tmp_path_factory.mktemp("deploy") / "rendered.yaml"
    path.write_text(subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True,
                                   check=True).stdout)
    return path


def _run_deploy_line(prefix: str, path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """Run the deploy job's script line that starts with `prefix` on a rendered overlay."""
    line = next(line for line in JOBS["deploy-manifests"]["script"] if line.startswith(prefix))
    subprocess.run(["bash", "-c", line], cwd=path.parent, env={"PATH": "/usr/bin:/bin", **env}, check=True)
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_deploy_job_keeps_the_live_model_and_retargets_images(rendered):
    pristine = rendered.read_text()
    before = [doc for doc in yaml.safe_load_all(pristine) if doc]
    assert _run_deploy_line('if [ -n "$LIVE_MODEL" ]', rendered, {"LIVE_MODEL": ""}) == before, (
        "no live InferenceService yet: the manifest is applied as rendered"
    )
    live = "s3://bucket/platform/models/2026-11-27-abc123"
    after = _run_deploy_line('if [ -n "$LIVE_MODEL" ]', rendered, {"LIVE_MODEL": live})
    expected = copy.deepcopy(before)
    next(o for o in expected if o["kind"] == "InferenceService")["spec"]["predictor"]["model"]["storageUri"] = live
    assert after == expected, "only the InferenceService's storageUri changes"
    registry = "registry.example.com/group/ncf"
    retargeted = _run_deploy_line('sed -i "s#ghcr.io/ncf-platform/', rendered, {"NCF_IMAGE_REGISTRY": registry})
    images = [ref for obj in retargeted for ref in _images(obj)]
    assert any(ref.startswith(registry + "/") for ref in images)
    assert not any("ghcr.io/ncf-platform" in ref for ref in images)
    assert "kubectl apply -f rendered.yaml" in JOBS["deploy-manifests"]["script"]


def _images(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image"] + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


# ---- rules ---------------------------------------------------------------------------------------------------
_TERM = re.compile(r'^\$(\w+)(?:\s*(==|!=)\s*(?:"([^"]*)"|\$(\w+)))?$')


def _condition(expression: str, env: dict[str, str]) -> bool:
    assert "||" not in expression and "(" not in expression, f"evaluator handles && only: {expression}"
    for term in (t.strip() for t in expression.split("&&")):
        match = _TERM.match(term)
        assert match, f"unsupported rule term {term!r}"
        name, op, literal, other = match.groups()
        value = env.get(name)
        if op is None:
            ok = bool(value)
        else:
            expected = literal if other is None else env.get(other)
            ok = (value == expected) if op == "==" else (value != expected)
        if not ok:
            return False
    return True


def _decide(rules: list[dict[str, Any]], env: dict[str, str], changed: list[str]) -> str | None:
    """The `when` of the first matching rule (None: not added), GitLab's first-match semantics."""
    for rule in rules:
        if "if" in rule and not _condition(rule["if"], env):
            continue
        if "changes" in rule and not any(fnmatch.fnmatch(f, p) for f in changed for p in rule["changes"]):
            continue
        when = rule.get("when", "on_success")
        return None if when == "never" else when
    return None


def _pipeline(env: dict[str, str], changed: list[str]) -> dict[str, str]:
    env = {"CI_DEFAULT_BRANCH": "main", **env}
    if _decide(CI["workflow"]["rules"], env, changed) is None:
        return {}
    jobs = {name: _decide(job.get("rules", [{}]), env, changed) for name, job in JOBS.items()}
    return {name: when for name, when in jobs.items() if when is not None}


MR = {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "7"}
FEATURE_PUSH = {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "feature"}
MAIN_PUSH = {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main"}
SCHEDULE = {"CI_PIPELINE_SOURCE": "schedule", "CI_COMMIT_BRANCH": "main"}
CODE = ["ncf/train.py"]


@pytest.mark.parametrize(
    ("event", "changed", "expected"),
    [
        (MR, CODE, {"test": "on_success", "compile": "on_success"}),
        (MR, [PARAMS_FILE], {"test": "on_success", "compile": "on_success"}),
        (FEATURE_PUSH, [PARAMS_FILE], {"test": "on_success", "compile": "on_success"}),
        ({**FEATURE_PUSH, "CI_OPEN_MERGE_REQUESTS": "group/ncf!7"}, CODE, {}),
        (MAIN_PUSH, CODE, {"test": "on_success", "compile": "on_success", "images": "on_success",
                           "upload": "on_success", "deploy-manifests": "manual"}),
        (MAIN_PUSH, [PARAMS_FILE], {"test": "on_success", "compile": "on_success", "images": "on_success",
                                    "upload": "on_success", "run": "on_success", "deploy-manifests": "manual"}),
        (SCHEDULE, [], {"run": "on_success"}),
    ],
    ids=["mr-code", "mr-params", "branch-params", "branch-with-open-mr", "main-code", "main-params", "schedule"],
)
def test_rules_fire_on_the_intended_triggers(event, changed, expected):
    assert _pipeline(event, changed) == expected


def test_run_job_triggers_on_the_parameters_file_the_pipeline_reads():
    from pipelines import params

    assert params.DEFAULT_PARAMS_FILE == REPO_ROOT / PARAMS_FILE
    changes = [c for rule in JOBS["run"]["rules"] for c in rule.get("changes", [])]
    assert changes == [PARAMS_FILE]
    assert any(f"--params {PARAMS_FILE}" in line for line in JOBS["run"]["script"])


def test_jobs_that_need_earlier_jobs_only_need_jobs_that_exist_in_the_same_pipelines():
    for name, job in JOBS.items():
        for need in job.get("needs", []):
            need_name = need["job"] if isinstance(need, dict) else need
            assert need_name in JOBS, f"{name} needs unknown job {need_name}"
            if isinstance(need, dict) and need.get("optional"):
                continue
            for event, changed in [(MAIN_PUSH, CODE), (MAIN_PUSH, [PARAMS_FILE]), (MR, CODE), (SCHEDULE, [])]:
                pipeline = _pipeline(event, changed)
                if name in pipeline:
                    assert need_name in pipeline, f"{name} needs {need_name}, absent from {event} pipelines"
