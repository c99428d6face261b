"""One real predictor process for the serving tests, started by the deploy step (serving_target=local) from the
registry alias `models:/ncf@champion` on an embedded MLflow store; two registered NeuMF versions to swap between."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ncf.ports import free_port
from tests.mlflow_fixtures import make_package
from tests.tiny_data import make_partition


@dataclasses.dataclass
class Served:
    url: str
    grpc_port: int
    tracking_uri: str
    root: Path
    packages: dict[str, str]  # registry version -> package path
    config: object  # the DeployConfig that started it
    partition: object


def neumf(partition, seed: int):
    import torch

    from ncf.models import ModelSpec, build_model

    torch.manual_seed(seed)
    return build_model(ModelSpec("NeuMF", partition.num_users, partition.num_items, factor_num=8,
                                 num_layers=2)).eval()


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    from ncf import registry
    from serving import deploy

    root = tmp_path_factory.mktemp("serving-root")
    partition = make_partition(num_users=50, num_items=200, per_user=12, uri=str(root / "data" / "dt=2026-11-27"))
    tracking_uri = registry.default_tracking_uri(root)
    packages = {}
    for seed in (0, 1):
        path = make_package(str(root / "models" / f"run-{seed}"), partition, neumf(partition, seed))
        version = registry.register_package(path, tracking_uri=tracking_uri).version
        packages[version] = path
    first = min(packages, key=int)
    registry.set_alias(tracking_uri, "ncf", registry.CHAMPION, first)
    config = deploy.DeployConfig(tracking_uri=tracking_uri, serving_target="local", port=free_port(count=2),
                                 state_dir=str(root / "state"), timeout_s=120)
    result = deploy.run(config)
    assert result.action == "started" and result.version == first
    state = deploy.state_path(config, tracking_uri)
    import json

    pid = json.loads(state.read_text())["pid"]
    try:
        yield Served(result.endpoint, config.port + 1, tracking_uri, root, packages, config, partition)
    finally:
        deploy.stop_local_server(pid)
