"""docker/: the three images pass hadolint and keep the project's image rules (no Docker engine runs here).

Rules: pinned base images, non-root final user, multi-stage, every pip install constrained by constraints.txt,
a HEALTHCHECK where a port serves (explicit NONE elsewhere), every COPY source exists and survives .dockerignore,
and the slim serving image really is enough to import the predictor.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
IMAGES = ("pipeline", "train-cuda", "serving")
HADOLINT = Path(sys.executable).with_name("hadolint")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # global ARG defaults (before the first FROM)
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined; comments and heredoc-free (hadolint would flag those)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), " ".join(rest.split())
        if instruction == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert instruction == "ARG", f"{path.name}: {instruction} before the first FROM"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((instruction, rest))
    return Dockerfile(path, args, stages)


DOCKERFILES = {name: parse(DOCKER / f"{name}.Dockerfile") for name in IMAGES}


def test_the_makefile_images_target_builds_exactly_these_files():
    from pipelines import images

    # `make -n` expands the loop as the shell would see it; run it through bash with `docker` echoed.
    recipe = subprocess.run(["make", "--no-print-directory", "-n", "images"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True)
    commands = subprocess.run(
        ["bash", "-c", "docker() { echo docker \"$@\"; }\n" + recipe.stdout],
        capture_output=True, text=True, check=True,
    ).stdout
    built = dict(re.findall(r"docker build -f docker/([\w-]+)\.Dockerfile -t (\S+) \.", commands))
    assert set(built) == set(IMAGES) == set(images.NAMES)
    for name, tag in built.items():
        assert tag == images.image(name), "make images tags what the pipeline and manifests reference"
    variants = dict(re.findall(
        r"docker build -f docker/sagemaker\.Dockerfile --build-arg BASE_IMAGE=(\S+) -t (\S+) docker", commands))
    assert variants == {images.image(n): images.image(n) + images.SAGEMAKER_SUFFIX for n in IMAGES}


def test_image_tags_are_one_per_commit(monkeypatch):
    """Not the project version: `make images` on a new commit must not overwrite what nodes have cached."""
    from pipelines import images

    monkeypatch.delenv("NCF_IMAGE_TAG", raising=False)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert images.tag().removesuffix("-dirty") == commit
    make_tag = subprocess.run(["python3", "pipelines/images.py", "tag"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout.strip()
    assert make_tag == images.tag(), "the Makefile and the compiled pipeline agree (stdlib only, no venv)"
    monkeypatch.setenv("NCF_IMAGE_TAG", "0123abcd")
    assert images.tag() == "0123abcd" and images.image("serving").endswith("/serving:0123abcd")


def test_sagemaker_variant_runs_the_same_image_as_root():
    """SageMaker mounts /opt/ml/processing/<output> and /opt/ml/model owned by root and cannot set the container's
    user: the variant only switches the user, so it is the same code as the tag it is built from."""
    variant = parse(DOCKER / "sagemaker.Dockerfile")
    (stage,) = variant.stages
    assert stage.base == "ghcr.io/ncf-platform/pipeline:0.1.0" and variant.args["BASE_IMAGE"]
    assert "${BASE_IMAGE}" in (DOCKER / "sagemaker.Dockerfile").read_text()
    assert stage.instructions == [("USER", "0:0")]


@pytest.mark.skipif(not HADOLINT.exists() and shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_passes():
    exe = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    result = subprocess.run(
        [exe, "--format", "json", *(str(DOCKER / f"{n}.Dockerfile") for n in (*IMAGES, "sagemaker"))],
        capture_output=True, text=True, timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and not findings, "\n".join(
        f"{Path(f['file']).name}:{f['line']} {f['code']} {f['message']}" for f in findings
    ) or result.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned(name):
    for stage in DOCKERFILES[name].stages:
        if stage.base in {s.name for s in DOCKERFILES[name].stages}:
            continue  # FROM an earlier stage
        image, _, tag = stage.base.partition(":")
        assert "@sha256:" in stage.base or (tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag)), (
            f"{name}: base image {stage.base!r} is not pinned to a full version or digest"
        )


@pytest.mark.parametrize("name", IMAGES)
def test_final_stage_runs_as_a_numeric_non_root_user(name):
    final = DOCKERFILES[name].final
    users = final.all("USER")
    assert users, f"{name}: the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]} (Kubernetes runAsNonRoot needs a numeric uid)"
    last_user = max(i for i, (ins, _) in enumerate(final.instructions) if ins == "USER")
    assert all(ins != "RUN" for ins, _ in final.instructions[last_user:]), f"{name}: RUN after USER"


@pytest.mark.parametrize("name", IMAGES)
def test_multi_stage_final_image_takes_the_built_venv(name):
    dockerfile = DOCKERFILES[name]
    assert len(dockerfile.stages) >= 2
    copies = dockerfile.final.all("COPY")
    assert any(c.startswith("--from=build ") and "/opt/venv" in c for c in copies), name
    assert not any("pip install" in r for r in dockerfile.final.all("RUN")), f"{name}: pip in the final stage"


@pytest.mark.parametrize("name", IMAGES)
def test_every_pip_install_is_constrained(name):
    pinned_torch = re.search(r"^torch==(\S+)$", (REPO_ROOT / "constraints.txt").read_text(), re.M)
    assert pinned_torch, "constraints.txt pins torch"
    installs = []
    for stage in DOCKERFILES[name].stages:
        for run in stage.all("RUN"):
            installs += [cmd.strip() for cmd in run.split("&&") if "pip install" in cmd]
    assert installs, name
    for cmd in installs:
        words = shlex.split(cmd)
        constrained = "-c" in words and words[words.index("-c") + 1] == "constraints.txt"
        torch_from_constraints = "torch==${TORCH_VERSION}" in cmd  # TORCH_VERSION is read from constraints.txt
        project_only = "--no-deps" in words and words[-1] == "."
        assert constrained or torch_from_constraints or project_only, f"{name}: unconstrained `{cmd}`"


def test_healthcheck_where_a_port_serves():
    serving = DOCKERFILES["serving"].final
    (check,) = serving.all("HEALTHCHECK")
    assert "CMD" in check and "/v2/health/ready" in check
    assert "8080" in " ".join(serving.all("EXPOSE"))
    for name in ("pipeline", "train-cuda"):
        assert DOCKERFILES[name].final.all("HEALTHCHECK") == ["NONE"], f"{name}: batch image, say HEALTHCHECK NONE"


def _dockerignore() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule for our patterns: a path is out when it or one of its parents matches (last match wins)."""
    parts = relative.split("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pat) or (pat.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pat[3:])):
                ignored = not negate
                break
    return ignored


def test_dockerignore_keeps_the_context_small_and_every_copy_source_in_it():
    patterns = _dockerignore()
    for heavy in (".venv", ".git", "dist", "runs", "tests"):
        assert _ignored(heavy, patterns), f".dockerignore lets {heavy} into the build context"
    for name, dockerfile in DOCKERFILES.items():
        for stage in dockerfile.stages:
            for copy in stage.all("COPY"):
                words = [w for w in copy.split() if not w.startswith("--")]
                if any(w.startswith("--from=") for w in copy.split()):
                    continue
                for source in words[:-1]:
                    assert (REPO_ROOT / source).exists(), f"{name}: COPY {source}: no such file"
                    if source != ".":
                        assert not _ignored(source.rstrip("/"), patterns), f"{name}: COPY {source} is in .dockerignore"
    # `COPY . /opt/ncf` must still carry what the SparkApplication and the pipeline read by path.
    for needed in ("spark/preprocess.py", "pyproject.toml", "constraints.txt", "docker/spark-entrypoint.sh"):
        assert not _ignored(needed, patterns), needed


def test_spark_entrypoint_is_valid_bash_and_executable():
    script = DOCKER / "spark-entrypoint.sh"
    assert script.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for token in ("driver)", "executor)", "KubernetesExecutorBackend", "--deploy-mode client"):
        assert token in text


# ---- the serving image's slim install is enough for the predictor -----------------------------------------------
def _requirement_closure(requirements: list[str]) -> set[str]:
    """Distribution names pip installs for `requirements`, from installed metadata (requested extras followed)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(r), "") for r in requirements]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for spec in importlib.metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(canonicalize_name(req.name), e) for e in ("", *req.extras)]
    return {name for name, _ in seen}


_IMPORT_GUARD = """
import importlib.abc, importlib.util, sys
ALLOWED = set({allowed!r})
OWN = set({own!r})
class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in ALLOWED or top in OWN or top in sys.stdlib_module_names or top.startswith("_sysconfigdata"):
            return None
        raise ModuleNotFoundError(f"{{name!r}} is not in the serving image (docker/serving-requirements.txt)")
sys.meta_path.insert(0, Guard())
import {module}
print("ok")
"""


def test_serving_image_requirements_are_enough_to_import_the_predictor():
    """Imports the predictor with only the serving image's distributions importable: a new import in serving/
    that needs Spark, MLflow, KFP, ... fails here instead of in the cluster."""
    entry = re.search(r'ENTRYPOINT \["python", "-m", "([\w.]+)"\]', (DOCKER / "serving.Dockerfile").read_text())
    assert entry, "serving.Dockerfile: ENTRYPOINT python -m <module>"
    module = entry.group(1)
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    requirements = [
        line.strip() for line in (DOCKER / "serving-requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    from packaging.utils import canonicalize_name

    closure = _requirement_closure(requirements)
    allowed = {
        top for top, dists in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(d) in closure for d in dists)
    }
    own = {"ncf", "serving", "spark", "pipelines", "components", "ncfctl", "bench"}  # pip install --no-deps .
    for heavy in ("pyspark", "mlflow", "kfp", "sagemaker", "boto3"):
        assert heavy not in allowed, f"serving-requirements.txt pulls in {heavy}"
    code = _IMPORT_GUARD.format(allowed=sorted(allowed), own=sorted(own), module=module)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={"PATH": sysconfig.get_path("scripts"), "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_serving_image_dependencies_are_all_pinned_by_constraints():
    from packaging.utils import canonicalize_name

    requirements = [
        line.strip() for line in (DOCKER / "serving-requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pins = {canonicalize_name(line.split("==")[0]) for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    unpinned = _requirement_closure(requirements) - pins - {"setuptools"}  # setuptools: pip's build backend
    assert not unpinned, f"the serving image would install unpinned {sorted(unpinned)}: add them to constraints.txt"


# ---- SageMaker's container conventions: `<image> train` and `<image> serve` ---------------------------------------
def test_train_image_runs_sagemakers_train_command(tmp_path):
    final = DOCKERFILES["train-cuda"].final
    assert not final.all("ENTRYPOINT"), "train-cuda: `<image> train` and the TrainJob's torchrun must run as given"
    (train,) = [c.split() for c in final.all("COPY") if c.split()[-1] == "/usr/local/bin/train"]
    assert "--chmod=0755" in train, "train must be executable whatever the checkout's file modes"
    script = REPO_ROOT / train[-2]
    assert script.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(script)], check=True)
    # Run it as SageMaker would (plus paths to read and write): it reaches pipelines.sagemaker_entry's train, whose
    # clear error for a missing hyperparameters file names the file.
    missing = tmp_path / "input" / "hyperparameters.json"
    result = subprocess.run(
        [str(script), "--hyperparameters", str(missing), "--model-dir", str(tmp_path / "model")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": f"{sysconfig.get_path('scripts')}:/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 2 and f"{missing}: cannot read" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "model").exists()


def test_serving_image_takes_sagemakers_serve_argument():
    from serving.sagemaker_routes import SAGEMAKER_COMMAND, SAGEMAKER_PORT

    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", (DOCKER / "serving.Dockerfile").read_text(), re.M)
    # `<image> serve` replaces CMD only: serving.server gets `serve` (tests/serving/test_sagemaker_routes.py runs it).
    assert json.loads(entrypoint.group(1)) == ["python", "-m", "serving.server"] and SAGEMAKER_COMMAND == "serve"
    serving = DOCKERFILES["serving"].final
    assert str(SAGEMAKER_PORT) in " ".join(serving.all("EXPOSE")).split()
    (check,) = serving.all("HEALTHCHECK")
    assert f"127.0.0.1:{SAGEMAKER_PORT}/" in check, "the HEALTHCHECK probes the port SageMaker's mode listens on"
