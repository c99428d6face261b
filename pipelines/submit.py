"""`ncfctl submit`: put the pipeline on a KFP endpoint; start a run and/or a recurring run (periodic retraining).

    ncfctl submit --host https://kfp.example.com [--namespace team-ncf] [--version v42]
                  [--params config/pipeline-params.yaml] [--param epochs=30]
                  [--schedule "0 2 * * *"] [--no-run]
    ncfctl submit --kube-context group/project:agent ...   (no --host: through the Kubernetes API server)

Uploads the compiled pipeline (a new pipeline, or a new version of the existing one), makes sure the experiment
exists, then creates a run with the parameters and, with --schedule, a recurring run on that cron schedule.
The calls are planned first (`plan`) and then made (`execute`), so the arguments are testable without a server.

Without --host, kfp.Client reaches the KFP API through the API server of the kubeconfig context (`--kube-context`;
the Service proxy `kubeflow/services/ml-pipeline:http`): the credentials are the context's (a GitLab agent, an EKS
IAM identity), no KFP endpoint needs exposing and no AWS key is stored anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ncf.errors import UserError, exit_on_user_error
from pipelines import definition
from pipelines import params as pipeline_params
from pipelines.compile import add_backend_arguments, settings_from_args
from pipelines.kfp_pipeline import compile_ir


@dataclasses.dataclass(frozen=True)
class Call:
    """One kfp.Client method call. Values that are `Ref(name)` are results of an earlier call."""

    method: str
    kwargs: dict[str, Any]
    result: str = ""  # name under which the id it returns is kept


@dataclasses.dataclass(frozen=True)
class Ref:
    name: str


def kfp_cron(expression: str) -> str:
    """KFP schedules take 6 fields (seconds first); accept the usual 5-field cron (the seed's Airflow one) too."""
    fields = expression.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise UserError(f"--schedule {expression!r}: expected a cron expression of 5 fields (or 6 with seconds)")
    return " ".join(fields)


def plan(
    package_path: str,
    *,
    pipeline_name: str,
    pipeline_exists: bool,
    version: str,
    experiment: str,
    namespace: str | None,
    params: dict[str, Any],
    run: bool,
    schedule: str | None,
    run_name: str,
) -> list[Call]:
    calls: list[Call] = []
    if pipeline_exists:
        calls.append(Call("get_pipeline_id", {"name": pipeline_name}, "pipeline_id"))
    else:
        calls.append(Call("upload_pipeline", {
            "pipeline_package_path": package_path, "pipeline_name": pipeline_name,
            "description": definition.DESCRIPTION, "namespace": namespace,
        }, "pipeline_id"))
    # Always a named version too: runs and schedules pin it, so a later upload does not change them.
    calls.append(Call("upload_pipeline_version", {
        "pipeline_package_path": package_path, "pipeline_version_name": version,
        "pipeline_id": Ref("pipeline_id"), "description": definition.DESCRIPTION,
    }, "version_id"))
    calls.append(Call("create_experiment", {"name": experiment, "namespace": namespace}, "experiment_id"))
    target = {"pipeline_id": Ref("pipeline_id"), "version_id": Ref("version_id"), "params": dict(params)}
    if run:
        calls.append(Call("run_pipeline", {"experiment_id": Ref("experiment_id"), "job_name": run_name, **target},
                          "run_id"))
    if schedule:
        calls.append(Call("create_recurring_run", {
            "experiment_id": Ref("experiment_id"), "job_name": f"{pipeline_name}-retrain",
            "cron_expression": kfp_cron(schedule), "max_concurrency": 1, "no_catchup": True, "enabled": True,
            **target,
        }, "recurring_run_id"))
    return calls


# The ml-pipeline Service of a standalone KFP install, through the API server's Service proxy.
KFP_API_PROXY_PATH = "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy"


def kfp_client(host: str, token: str, kube_context: str, namespace: str | None):
    """A kfp.Client for `host`, or (no host) for the KFP API behind the kubeconfig context's API server."""
    import kfp

    ssl_ca_cert = None
    if not host:
        host, token, ssl_ca_cert = _through_api_server(kube_context)
    return kfp.Client(host=host, existing_token=token or None, ssl_ca_cert=ssl_ca_cert,
                      **({"namespace": namespace} if namespace else {}))


def _through_api_server(kube_context: str) -> tuple[str, str, str | None]:
    """(proxy URL, bearer token, CA file) of a kubeconfig context. Not kfp.Client(kube_context=...): with a token
    user its refresh hook puts the bare API server address back before every request (kfp 2.17.3), so calls miss
    the proxy path."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        # KUBECONFIG read now (the kubernetes package reads it once, at import)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, context=kube_context or None,
                                client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        raise UserError(f"--kube-context {kube_context or '(current)'}: cannot load the kubeconfig ({exc})") from exc
    token = configuration.api_key.get("authorization", "").removeprefix("Bearer ").strip()
    if not token:
        raise UserError(f"--kube-context {kube_context or '(current)'}: the context authenticates without a bearer "
                        "token (client certificates?); pass --host and --existing-token instead")
    return configuration.host.rstrip("/") + KFP_API_PROXY_PATH, token, configuration.ssl_ca_cert


_ID_FIELDS = {
    "pipeline_id": "pipeline_id", "version_id": "pipeline_version_id", "experiment_id": "experiment_id",
    "run_id": "run_id", "recurring_run_id": "recurring_run_id",
}


def execute(client: Any, calls: list[Call]) -> dict[str, str]:
    """Make the planned calls on a kfp.Client; returns the ids they produced."""
    ids: dict[str, str] = {}
    for call in calls:
        kwargs = {k: ids[v.name] if isinstance(v, Ref) else v for k, v in call.kwargs.items()}
        returned = getattr(client, call.method)(**kwargs)
        if call.result:
            ids[call.result] = returned if isinstance(returned, str) else getattr(returned, _ID_FIELDS[call.result])
    return ids


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ncfctl submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="", help="KFP API endpoint, e.g. http://localhost:8080 (default: the "
                        "ml-pipeline Service through the Kubernetes API server of --kube-context)")
    parser.add_argument("--kube-context", default="", help="kubeconfig context used when --host is empty "
                        "(default: the current context)")
    parser.add_argument("--namespace", default=None, help="KFP namespace (multi-user installs)")
    parser.add_argument("--existing-token", default=None, help="bearer token for the KFP API")
    parser.add_argument("--pipeline-name", default=definition.PIPELINE_NAME)
    parser.add_argument("--version", default=None, help="pipeline version name (default: UTC timestamp)")
    parser.add_argument("--experiment", default="ncf")
    parser.add_argument("--run-name", default=None, help="default: <pipeline>-<timestamp>")
    parser.add_argument("--schedule", default=None, metavar="CRON", help='also create a recurring run, e.g. "0 2 * * *"')
    parser.add_argument("--no-run", action="store_true", help="upload (and schedule) only")
    pipeline_params.add_arguments(parser)
    add_backend_arguments(parser)
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    k8s, _ = settings_from_args(args)
    values = pipeline_params.from_args(args)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")

    client = kfp_client(args.host, args.existing_token, args.kube_context, args.namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_ir(Path(tmp) / "pipeline.yaml", k8s)
        calls = plan(
            str(package), pipeline_name=args.pipeline_name,
            pipeline_exists=client.get_pipeline_id(args.pipeline_name) is not None,
            version=args.version or stamp, experiment=args.experiment, namespace=args.namespace, params=values,
            run=not args.no_run, schedule=args.schedule, run_name=args.run_name or f"{args.pipeline_name}-{stamp}",
        )
        ids = execute(client, calls)
    for name, value in ids.items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
