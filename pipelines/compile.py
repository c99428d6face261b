"""`ncfctl compile`: write the KFP IR YAML and the SageMaker definition JSON, after checking they agree.

    ncfctl compile --output-dir dist [--params config/pipeline-params.yaml] [--param epochs=30]

Parameter values from the params file / flags become the compiled pipelines' defaults (the same for both
backends). Nothing is written when the two compiled pipelines differ from the declaration (pipelines/parity.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ncf.errors import UserError, exit_on_user_error
from pipelines import params as pipeline_params
from pipelines import parity
from pipelines.definition import AdapterError
from pipelines.kfp_pipeline import KubernetesSettings, compile_ir
from pipelines.sagemaker_pipeline import SageMakerSettings, definition_json, quiet_sdk_logs

KFP_FILE = "ncf-pipeline.yaml"
SAGEMAKER_FILE = "sagemaker-pipeline.json"


def _pairs(values: list[str], flag: str) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        key, sep, rest = value.partition("=" if flag == "--gpu-node-selector" else ":")
        if not sep or not key:
            raise UserError(f"{flag} {value!r}: expected KEY{'=' if flag == '--gpu-node-selector' else ':'}VALUE")
        out.append((key, rest))
    return tuple(out)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    k8s, sm = KubernetesSettings(), SageMakerSettings()
    group = parser.add_argument_group("Kubernetes (KFP)")
    group.add_argument("--gpu-count", type=int, default=k8s.gpu_count, help="GPUs for the train task (0: CPU)")
    group.add_argument("--gpu-node-selector", action="append", metavar="LABEL=VALUE",
                       help="node selector of the train task (repeatable; default: none, the nvidia.com/gpu "
                            "request picks a GPU node), e.g. node.kubernetes.io/instance-type=g5.xlarge")
    group.add_argument("--gpu-toleration", action="append", metavar="KEY:EFFECT",
                       help=f"toleration of the train task (repeatable; default: {k8s.gpu_tolerations})")
    group.add_argument("--aws-secret", default=k8s.aws_secret, help="Secret with AWS_ACCESS_KEY_ID / "
                       "AWS_SECRET_ACCESS_KEY for every task ('' = none: EKS, IRSA of KFP's pipeline-runner)")
    group.add_argument("--storage-config-map", default=k8s.storage_config_map,
                       help="ConfigMap with AWS_DEFAULT_REGION / AWS_ENDPOINT_URL ('' = none)")
    group.add_argument("--retries", type=int, default=k8s.retries, help="retries per task (backoff 60s x2)")
    group.add_argument("--no-caching", action="store_true", help="turn KFP caching off for every task")
    group.add_argument("--run-deadline", type=int, default=k8s.run_deadline_s, metavar="SECONDS",
                       help="fail the run after this long, a task that never gets a node included (0: never)")
    group.add_argument("--image-pull-secret", action="append", metavar="SECRET",
                       help="docker-registry Secret in KFP's namespace for a private registry (repeatable)")
    group = parser.add_argument_group("SageMaker")
    group.add_argument("--role-arn", default=sm.role_arn, help="execution role of the SageMaker pipeline")
    group.add_argument("--region", default=sm.region)
    group.add_argument("--model-package-group", default=sm.model_package_group)
    group.add_argument("--endpoint-name", default=sm.endpoint_name)
    group.add_argument("--sagemaker-image-registry", default=sm.image_registry, metavar="ECR_PREFIX",
                       help="ECR repository prefix holding the <name>:<tag>-sagemaker images")
    group.add_argument("--sagemaker-subnet", action="append", metavar="SUBNET_ID",
                       help="run the jobs in this VPC subnet (repeatable; with --sagemaker-security-group)")
    group.add_argument("--sagemaker-security-group", action="append", metavar="SG_ID", help="(repeatable)")


def settings_from_args(args: argparse.Namespace) -> tuple[KubernetesSettings, SageMakerSettings]:
    k8s = KubernetesSettings(
        gpu_count=args.gpu_count,
        aws_secret=args.aws_secret,
        storage_config_map=args.storage_config_map,
        retries=args.retries,
        caching=not args.no_caching,
        run_deadline_s=args.run_deadline,
        image_pull_secrets=tuple(name for name in args.image_pull_secret or () if name),  # "": an unset CI variable
    )
    if args.gpu_node_selector:
        k8s = dataclasses.replace(k8s, gpu_node_selector=_pairs(args.gpu_node_selector, "--gpu-node-selector"))
    if args.gpu_toleration:
        k8s = dataclasses.replace(k8s, gpu_tolerations=_pairs(args.gpu_toleration, "--gpu-toleration"))
    sm = SageMakerSettings(
        role_arn=args.role_arn,
        region=args.region,
        model_package_group=args.model_package_group,
        endpoint_name=args.endpoint_name,
        image_registry=args.sagemaker_image_registry,
        subnets=tuple(args.sagemaker_subnet or ()),
        security_group_ids=tuple(args.sagemaker_security_group or ()),
    )
    return k8s, sm


def compile_all(
    output_dir: str | Path,
    overrides: dict[str, Any],
    k8s: KubernetesSettings | None = None,
    sm: SageMakerSettings | None = None,
) -> tuple[Path, Path]:
    """Compile both backends into `output_dir`; raises UserError (writing nothing) when they disagree."""
    k8s, sm = k8s or KubernetesSettings(), sm or SageMakerSettings()
    quiet_sdk_logs(sm.region)
    output_dir = Path(output_dir)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kfp_text = compile_ir(Path(tmp) / KFP_FILE, k8s, overrides=overrides).read_text()
        sm_text = definition_json(sm, overrides=overrides)
    except AdapterError as exc:
        raise UserError(str(exc)) from exc
    problems = parity.check(kfp_text, json.loads(sm_text), overrides=overrides)
    if problems:
        raise UserError("the compiled pipelines are not the same pipeline:\n  " + "\n  ".join(problems))
    output_dir.mkdir(parents=True, exist_ok=True)
    kfp_path, sm_path = output_dir / KFP_FILE, output_dir / SAGEMAKER_FILE
    kfp_path.write_text(kfp_text)
    sm_path.write_text(sm_text)
    return kfp_path, sm_path


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ncfctl compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="dist", help="where the files go (default: dist)")
    pipeline_params.add_arguments(parser)
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    k8s, sm = settings_from_args(args)
    kfp_path, sm_path = compile_all(args.output_dir, pipeline_params.from_args(args), k8s, sm)
    print(f"KFP IR:               {kfp_path}\nSageMaker definition: {sm_path}\n"
          f"parity: same steps, dependency order, parameters and gate condition")
    return 0


if __name__ == "__main__":
    sys.exit(main())
