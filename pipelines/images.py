"""Container image references: the one place code reads them.

`${NCF_IMAGE_REGISTRY:-ghcr.io/ncf-platform}/<name>:<project version>` (docs/ARCHITECTURE.md). The registry
is read when this module is imported, so `NCF_IMAGE_REGISTRY=registry.example.com/ml ncfctl compile`
retargets every image at once.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

DEFAULT_REGISTRY = "ghcr.io/ncf-platform"
NAMES = ("pipeline", "train-cuda", "serving")


def project_version() -> str:
    try:
        return version("ncf-platform")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.1.0"


def image(name: str) -> str:
    """Full reference of one of the project's images, e.g. `ghcr.io/ncf-platform/pipeline:0.1.0`."""
    if name not in NAMES:
        raise ValueError(f"unknown image {name!r}; known: {', '.join(NAMES)}")
    registry = os.environ.get("NCF_IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
    return f"{registry}/{name}:{project_version()}"


PIPELINE_IMAGE = image("pipeline")
TRAIN_IMAGE = image("train-cuda")
SERVING_IMAGE = image("serving")
