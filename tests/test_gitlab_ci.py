""".gitlab-ci.yml: the stages, that every job's commands exist in the project (make targets, ncfctl commands and
their flags, files), that the shell snippets do what they claim, and that `rules:` fire on the intended triggers
(evaluated here for merge requests, branch pushes, default-branch pushes with and without a change to the
pipeline parameters file, and schedules)."""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import shutil
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
    assert set(JOBS) == {"test", "compile", "images", "manifests", "upload", "run", "deploy-manifests"}
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


# ---- what a CI run on the default branch produces (issue #12, defects 2 and 3) ---------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PREDEFINED = {"CI_COMMIT_SHA": COMMIT, "CI_COMMIT_SHORT_SHA": COMMIT[:8], "CI_PIPELINE_ID": "4242",
              "CI_PIPELINE_SOURCE": "push", "CI_REGISTRY_IMAGE": "registry.gitlab.example.com/group/ncf",
              "CI_REGISTRY": "registry.gitlab.example.com", "KUBE_CONTEXT": "group/ncf:eks"}


def _ci_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a default-branch job sees: GitLab's predefined variables, then the file's `variables:`
    (expanded as GitLab does), then project variables (`extra`). KFP_ENDPOINT / KFP_TOKEN unset: the EKS setup."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "CI_PROJECT_DIR": str(REPO_ROOT),
           **PREDEFINED}
    for name, value in _variables().items():
        env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return {**env, **extra}


def _expanded_ncfctl_args(job: str, env: dict[str, str]) -> list[str]:
    """The job's `ncfctl submit ...` arguments after the shell expanded them."""
    (line,) = [line for line in JOBS[job]["script"] if "ncfctl submit" in line]
    command = line.replace(".venv/bin/ncfctl submit", "printf '%s\\0'", 1)
    out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def test_images_job_pushes_one_build_per_commit_and_its_sagemaker_variants(tmp_path):
    from pipelines import images

    assert _variables()["NCF_IMAGE_TAG"] == "$CI_COMMIT_SHA", "a tag never reused: the commit"
    script = "\n".join(JOBS["images"]["script"])
    names = re.search(r"for name in ([\w\s-]+); do", script).group(1).split()
    assert sorted(names) == sorted(images.NAMES)
    for name in names:
        assert (REPO_ROOT / "docker" / f"{name}.Dockerfile").exists()
    commands = subprocess.run(["bash", "-c", 'docker() { echo docker "$@"; }\n' + script], env=_ci_env(tmp_path),
                              capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
    pushed = set(re.findall(r"^docker push (\S+)$", commands, re.M))
    registry = PREDEFINED["CI_REGISTRY_IMAGE"]
    assert pushed == {f"{registry}/{n}:{COMMIT}{variant}" for n in images.NAMES for variant in ("", "-sagemaker")}
    for name in names:
        assert f"docker build -f docker/sagemaker.Dockerfile --build-arg BASE_IMAGE={registry}/{name}:{COMMIT}" in commands


def _compile_as(job: str, tmp_path: Path) -> tuple[dict, dict]:
    """Compile the pipeline exactly as the job's `ncfctl submit` does, in the job's environment (pipelines/images.py
    reads the registry and tag when imported, hence a fresh interpreter)."""
    env = _ci_env(tmp_path)
    args = _expanded_ncfctl_args(job, env)
    out = tmp_path / f"{job}.yaml"
    # submit's Kubernetes settings are exactly its backend flags (pipelines/compile.py add_backend_arguments).
    code = ("import argparse, sys; from pipelines.compile import add_backend_arguments, settings_from_args; "
            "from pipelines.kfp_pipeline import compile_ir; parser = argparse.ArgumentParser(); "
            "add_backend_arguments(parser); args, _ = parser.parse_known_args(sys.argv[2:]); "
            "compile_ir(sys.argv[1], settings_from_args(args)[0])")
    subprocess.run([sys.executable, "-c", code, str(out), *args], env={**env, "PYTHONPATH": str(REPO_ROOT)},
                   cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=300)
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform


@pytest.mark.parametrize("job", ["upload", "run"])
def test_the_pipeline_ci_uploads_reads_s3_through_irsa_and_ci_holds_no_aws_key(job, tmp_path):
    """EKS: pods get S3 from IRSA on KFP's pipeline-runner, so no task reads a Secret of AWS keys; CI itself holds
    none either: without a KFP endpoint the GitLab agent's context reaches KFP (pipelines/submit.py)."""
    _, platform = _compile_as(job, tmp_path)
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert "secretAsEnv" not in executor, f"{job}: {name} reads AWS keys from a Secret"
    args = _expanded_ncfctl_args(job, _ci_env(tmp_path))
    assert "--kube-context" in args, f"{job}: no way to reach KFP but a stored endpoint + token"
    assert args[args.index("--host") + 1] == "" and args[args.index("--kube-context") + 1] == PREDEFINED["KUBE_CONTEXT"]
    ci_text = (REPO_ROOT / ".gitlab-ci.yml").read_text()
    assert "AWS_ACCESS_KEY_ID" not in ci_text and "AWS_SECRET_ACCESS_KEY" not in ci_text


@pytest.mark.parametrize("job", ["upload", "run"])
def test_the_pipeline_ci_uploads_runs_the_images_this_commit_built(job, tmp_path):
    spec, platform = _compile_as(job, tmp_path)
    registry = PREDEFINED["CI_REGISTRY_IMAGE"]
    for executor in spec["deploymentSpec"]["executors"].values():
        image = executor["container"]["image"]
        assert image.startswith(registry + "/") and image.endswith(":" + COMMIT), image
    for executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        assert executor["imagePullPolicy"] == "IfNotPresent"
        assert [s["secretName"] for s in executor["imagePullSecret"]] == ["ncf-registry"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """What the manifests job leaves in dist/manifests/, rendered into a scratch copy of its working directory."""
    tmp = tmp_path_factory.mktemp("ci")
    work = tmp / "checkout"
    shutil.copytree(REPO_ROOT / "manifests", work / "manifests")
    env = _ci_env(tmp, CI_PROJECT_DIR=str(work))
    env["PATH"] = f"{Path(kubectl()).parent}:{env.get('PATH', '')}"  # the job's kubectl is the one make test installs
    for line in JOBS["manifests"]["script"]:
        subprocess.run(["bash", "-c", line], cwd=work, env=env, check=True)
    return work / "dist" / "manifests"


def _images(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image"] + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_manifests_job_renders_the_overlay_and_the_jobs_with_this_commits_images(rendered):
    from pipelines import images

    overlay = _variables()["NCF_OVERLAY"]
    assert sorted(p.name for p in rendered.iterdir()) == sorted(
        [f"{overlay}.yaml", "preprocess-spark.yaml", "train-ddp.yaml", "recommend-shards.yaml"])
    assert JOBS["manifests"]["artifacts"]["paths"] == ["dist/manifests/"]
    kinds = set()
    for path in rendered.iterdir():
        for obj in yaml.safe_load_all(path.read_text()):
            own = [ref for ref in _images(obj) if ref.rpartition(":")[0].rsplit("/", 1)[-1] in images.NAMES]
            assert all(ref == f"{PREDEFINED['CI_REGISTRY_IMAGE']}/{ref.rsplit('/', 1)[-1].split(':')[0]}:{COMMIT}"
                       for ref in own), (path.name, own)
            assert not any("ghcr.io/ncf-platform" in ref for ref in _images(obj))
            kinds |= {obj["kind"]} if own else set()
    assert {"ServingRuntime", "Deployment", "SparkApplication", "TrainJob", "Job"} <= kinds


def _run_deploy_line(prefix: str, path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """Run the deploy job's script line that starts with `prefix` on a rendered overlay."""
    line = next(line for line in JOBS["deploy-manifests"]["script"] if line.startswith(prefix))
    subprocess.run(["bash", "-c", line], cwd=path.parent, env={"PATH": "/usr/bin:/bin", **env}, check=True)
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_deploy_job_applies_the_rendered_overlay_and_keeps_the_live_model(rendered, tmp_path):
    overlay = _variables()["NCF_OVERLAY"]
    copy_line = next(line for line in JOBS["deploy-manifests"]["script"] if line.startswith("cp "))
    assert copy_line.split()[1] == '"dist/manifests/${NCF_OVERLAY}.yaml"' and "manifests" in JOBS["deploy-manifests"]["needs"]
    target = tmp_path / "rendered.yaml"
    shutil.copy(rendered / f"{overlay}.yaml", target)
    before = [doc for doc in yaml.safe_load_all(target.read_text()) if doc]
    assert _run_deploy_line('if [ -n "$LIVE_MODEL" ]', target, {"LIVE_MODEL": ""}) == before, (
        "no live InferenceService yet: the manifest is applied as rendered"
    )
    live = "s3://bucket/platform/models/2026-11-27-abc123"
    after = _run_deploy_line('if [ -n "$LIVE_MODEL" ]', target, {"LIVE_MODEL": live})
    expected = copy.deepcopy(before)
    next(o for o in expected if o["kind"] == "InferenceService")["spec"]["predictor"]["model"]["storageUri"] = live
    assert after == expected, "only the InferenceService's storageUri changes"
    assert "kubectl apply -f rendered.yaml" in JOBS["deploy-manifests"]["script"]


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
                           "manifests": "on_success", "upload": "on_success", "deploy-manifests": "manual"}),
        (MAIN_PUSH, [PARAMS_FILE], {"test": "on_success", "compile": "on_success", "images": "on_success",
                                    "manifests": "on_success", "upload": "on_success", "run": "on_success",
                                    "deploy-manifests": "manual"}),
        (SCHEDULE, [], {"run": "on_success"}),
    ],
    ids=["mr-code", "mr-params", "branch-params", "branch-with-open-mr", "main-code", "main-params", "schedule"],
)
def test_rules_fire_on_the_intended_triggers(event, changed, expected):
    assert _pipeline(event, changed) == expected


def test_run_job_triggers_on_the_parameters_file_the_pipeline_reads_and_the_input_schema_it_names():
    from pipelines import params

    assert params.DEFAULT_PARAMS_FILE == REPO_ROOT / PARAMS_FILE
    schema = yaml.safe_load((REPO_ROOT / PARAMS_FILE).read_text())["input_schema_uri"]
    assert (REPO_ROOT / schema).is_file()
    changes = [c for rule in JOBS["run"]["rules"] for c in rule.get("changes", [])]
    assert changes == [PARAMS_FILE, schema]
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
