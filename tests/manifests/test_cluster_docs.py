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


# ---- versions and commands that exist (issue #12, defects 2 and 7) ----------------------------------------------
def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("."))


def _exported(name: str) -> str:
    (value,) = set(re.findall(rf"^export {name}=(\S+)", TEXT, re.M))
    return value


def test_the_kfp_backend_pinned_here_provides_every_feature_the_compiled_pipeline_uses(tmp_path):
    """The compiled IR's `optional` Secret / ConfigMap env needs >= 2.15.0 (older drivers drop it silently), the
    scheduled-time placeholder and the run deadline >= 2.17.0 (pipelines/kfp_pipeline.py BACKEND_FEATURES)."""
    from pipelines.kfp_pipeline import BACKEND_FEATURES, backend_features, compile_ir

    pinned = _exported("PIPELINE_VERSION")
    used = backend_features(compile_ir(tmp_path / "p.yaml", overrides={"input_uri": "s3://b/raw/"}).read_text())
    assert "optional Secret / ConfigMap env" in used and "scheduled / created time placeholders" in used
    for feature, minimum in used.items():
        assert _version_tuple(pinned) >= _version_tuple(minimum), (
            f"docs/cluster.md pins KFP {pinned}; the compiled pipeline uses {feature} (KFP >= {minimum}: "
            f"{BACKEND_FEATURES[feature][1]})"
        )
    table = re.search(r"^\| Kubeflow Pipelines backend \| `([^`]+)`", TEXT, re.M).group(1)
    assert table == pinned


EXACT = re.compile(r"^v?\d+\.\d+\.\d+$")
PINS = {  # component -> (how the guide's commands pin it, the versions table row)
    "KFP": (lambda: _exported("PIPELINE_VERSION"), "Kubeflow Pipelines backend"),
    "cert-manager": (lambda: _exported("CERT_MANAGER_VERSION"), "cert-manager"),
    "KServe": (lambda: _exported("KSERVE_VERSION"), "KServe"),
    "Spark Operator": (lambda: re.search(r"helm install spark-operator \S+ --version (\S+)", _joined()).group(1),
                       "Spark Operator"),
    "Kubeflow Trainer": (lambda: _exported("TRAINER_VERSION"), "Kubeflow Trainer"),
    "NVIDIA device plugin": (lambda: re.search(r"helm upgrade -i nvdp \S+ --version (\S+)", _joined()).group(1),
                             "NVIDIA device plugin (GPU nodes)"),
}


def _joined() -> str:
    return "\n".join(_shell_commands())


@pytest.mark.parametrize("component", PINS)
def test_every_component_is_installed_at_one_exact_version(component):
    command_pin, row = PINS[component]
    version = command_pin()
    assert EXACT.match(version), f"{component}: {version!r} is not an exact release"
    assert re.search(rf"^\| {re.escape(row)} \| `{re.escape(version)}` \|", TEXT, re.M), (
        f"{component}: the versions table and the commands disagree"
    )


def test_every_install_command_names_its_version_and_where_it_comes_from():
    commands = _shell_commands()
    assert not [c for c in commands if "quick_install" in c], "KServe removed hack/quick_install.sh (kserve#5289)"
    added: set[str] = set()
    for command in commands:
        words = command.split()
        if words[:3] == ["helm", "repo", "add"]:
            added.add(next(w for w in words[3:] if not w.startswith("-")))
        elif words[:2] == ["helm", "install"] or words[:3] == ["helm", "upgrade", "-i"]:
            chart = [w for w in words[2:] if not w.startswith("-") and w != "-i"][1]
            assert "--version" in words, f"unpinned: {command}"
            if not chart.startswith("oci://"):
                assert chart.split("/")[0] in added, f"`{command}`: no `helm repo add {chart.split('/')[0]}` before it"
        elif words[:3] == ["kubectl", "apply", "-k"] or words[:4] == ["kubectl", "apply", "--server-side", "-k"]:
            if "github.com" in command:
                assert re.search(r"\?ref=\$(PIPELINE_VERSION|TRAINER_VERSION)\"", command), f"unpinned: {command}"


TOOL_WORDS = {"for", "do", "done", "if", "then", "fi", "export", "cd", "set", "echo", "printf", "true"}


def test_every_tool_the_guide_runs_is_listed_up_front():
    section = TEXT[TEXT.index("Tools, on the machine"):TEXT.index("## Local cluster")]
    listed = {word for cell in re.findall(r"^\| ([^|]+) \|", section, re.M) for word in re.findall(r"`([\w.-]+)", cell)}
    used = set()
    for command in _shell_commands():
        for part in re.split(r"\||&&|;|\$\(", command):
            words = [w for w in part.strip().split() if not re.match(r"^\w+=", w)]  # VAR=value prefixes
            if not words:
                continue
            first = words[0].strip('"()')
            if first in TOOL_WORDS or first.startswith(("-", "$", "'", '"')) or "/" in first or not first:
                continue  # shell syntax, the repository's own scripts (.venv/bin/ncfctl, manifests/pin-images.sh)
            used.add(first)
    assert used, "no commands found"
    assert used <= listed, f"docs/cluster.md runs tools its tools table does not list: {sorted(used - listed)}"
    for script in ("manifests/pin-images.sh", ".venv/bin/ncfctl"):
        assert script in TEXT
