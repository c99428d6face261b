"""Container image references: the one place code reads them.

`<registry>/<name>:<tag>`:
- registry: `NCF_IMAGE_REGISTRY` (default `ghcr.io/ncf-platform`), so `NCF_IMAGE_REGISTRY=registry.example.com/ml
  ncfctl compile` retargets every image at once;
- tag: `NCF_IMAGE_TAG` (CI sets the commit SHA), else the source tree's commit (`git rev-parse --short=12 HEAD`,
  `-dirty` when it has uncommitted changes), else the project version (a tree without git, e.g. inside an image).

One tag per commit, never reused: a node that already has `<name>:<tag>` has the right code (pull policy
`IfNotPresent`), and a code change changes the image string KFP's cache key includes. `make images` tags what
this module names (`python3 pipelines/images.py tag`). SageMaker runs `<name>:<tag>-sagemaker`
(docker/sagemaker.Dockerfile: the same image, run as root; see `sagemaker_image`). Both are read when this module
is imported.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DEFAULT_REGISTRY = "ghcr.io/ncf-platform"
NAMES = ("pipeline", "train-cuda", "serving")
PULL_POLICY = "IfNotPresent"  # tags are immutable (see above)
SAGEMAKER_SUFFIX = "-sagemaker"
_SOURCE_TREE = Path(__file__).resolve().parents[1]


def project_version() -> str:
    try:
        return version("ncf-platform")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.1.0"


@functools.cache
def _source_commit() -> str | None:
    if not (_SOURCE_TREE / ".git").exists() or shutil.which("git") is None:
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_SOURCE_TREE), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def tag() -> str:
    return os.environ.get("NCF_IMAGE_TAG") or _source_commit() or project_version()


def registry() -> str:
    return os.environ.get("NCF_IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")


def _check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown image {name!r}; known: {', '.join(NAMES)}")


def image(name: str) -> str:
    """Full reference of one of the project's images, e.g. `ghcr.io/ncf-platform/pipeline:8a8c18f1c2d3`."""
    _check(name)
    return f"{registry()}/{name}:{tag()}"


def sagemaker_image(name: str, sagemaker_registry: str) -> str:
    """The SageMaker variant of an image in `sagemaker_registry` (ECR): `<registry>/<name>:<tag>-sagemaker`."""
    _check(name)
    return f"{sagemaker_registry.rstrip('/')}/{name}:{tag()}{SAGEMAKER_SUFFIX}"


PIPELINE_IMAGE = image("pipeline")
TRAIN_IMAGE = image("train-cuda")
SERVING_IMAGE = image("serving")


if __name__ == "__main__":  # `python3 pipelines/images.py tag` (the Makefile): stdlib only, no venv needed
    if sys.argv[1:] != ["tag"]:
        sys.exit("usage: python3 pipelines/images.py tag")
    print(tag())
