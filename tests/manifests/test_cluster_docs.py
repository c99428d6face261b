"""docs/cluster.md stays true to the repository: the paths it names exist, its `make` targets and `ncfctl` commands
and flags exist, and the objects its kubectl commands name (deployment/mlflow, job/minio-create-bucket, ...) are
what the overlays render."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.manifests.validation import MANIFESTS, build

DOC = REPO_ROOT / "docs" / "cluster.md"
TEXT = DOC.read_text()
NCFCTL = Path(sys.executable).with_name("ncfctl")
KINDS = {"deployment": "Deployment", "statefulset": "StatefulSet", "job": "Job", "svc": "Service",
         "inferenceservice": "InferenceService", "isvc": "InferenceService", "sparkapplication": "SparkApplication"}


def _shell_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", TEXT, re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_paths_named_in_the_guide_exist():
    paths = set(re.findall(r"(?<![\w/.-])((?:manifests|docker|config|docs|spark|serving|pipelines)/[\w./-]*\w)", TEXT))
    assert "manifests/overlays/local" in paths
    missing = sorted(p for p in paths if not (REPO_ROOT / p).exists())
    assert not missing, f"docs/cluster.md names paths that do not exist: {missing}"


def test_make_targets_and_ncfctl_flags_in_the_guide_exist():
    from ncfctl.cli import COMMANDS

    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), re.M))
    for target in re.findall(r"`make (\w[\w-]*)`|^make (\w[\w-]*)", TEXT, re.M):
        assert (target[0] or target[1]) in targets
    if not NCFCTL.exists():
        pytest.skip(f"{NCFCTL} not installed (make setup)")
    helps: dict[str, str] = {}
    for command in _shell_commands():
        if "ncfctl " not in command:
            continue
        words = shlex.split(command)
        sub = words[next(i for i, w in enumerate(words) if w.endswith("ncfctl")) + 1]
        assert sub in COMMANDS, f"docs/cluster.md: ncfctl {sub} does not exist"
        if sub not in helps:
            helps[sub] = subprocess.run([str(NCFCTL), sub, "--help"], capture_output=True, text=True, timeout=120,
                                        cwd=REPO_ROOT, check=True).stdout
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[sub]), f"ncfctl {sub}: no {flag}"


def test_objects_the_guide_waits_for_are_rendered_by_the_overlays():
    rendered = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
                for overlay in ("local", "aws") for o in build(MANIFESTS / "overlays" / overlay)}
    rendered |= {(o["kind"], "ncf", o["metadata"]["name"]) for o in build(MANIFESTS / "jobs" / "preprocess-spark")}
    checked = 0
    for command in _shell_commands():
        match = re.match(r"kubectl -n (\S+) (?:rollout status|wait \S+|port-forward|get|patch) (\S+?)[/ ](\S+)", command)
        if not match or match.group(2) not in KINDS:
            continue
        namespace, kind, name = match.group(1), KINDS[match.group(2)], match.group(3)
        if namespace == "kubeflow":
            continue  # KFP's own objects
        if kind == "Service" and name.endswith("-predictor"):
            assert (("InferenceService", namespace, name.removesuffix("-predictor")) in rendered), command
        else:
            assert (kind, namespace, name) in rendered, f"docs/cluster.md: `{command}` names an object no overlay renders"
        checked += 1
    assert checked >= 6
