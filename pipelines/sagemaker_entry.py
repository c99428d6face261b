"""Container entry points of the SageMaker pipeline's jobs: the same step functions the KFP components call.

  python -m pipelines.sagemaker_entry preprocess --output-dir DIR [--scheduled-time T] <PreprocessConfig flags>
      runs the step (an empty --run-date: the UTC day of T, the execution's start time), writes
      DIR/partition.json {"partition_uri", "run_date"} (read by a PropertyFile)
  python -m pipelines.sagemaker_entry train
      SageMaker's training-container contract (the image runs `train`): reads the hyperparameters file,
      trains (ncf.train prints `HR=...; NDCG=...; Loss=...;` per epoch for the metric definitions), copies the
      package to /opt/ml/model so SageMaker's model artifact is the package
  python -m pipelines.sagemaker_entry gate --evaluation-dir DIR <GateConfig flags>
      runs the gate, writes DIR/evaluation.json {"promoted", "reason", ...} (read by a PropertyFile)
  python -m pipelines.sagemaker_entry recommend <RecommendConfig flags>
      the champion's top-K for every user -> <storage root>/recommendations/dt=<run date> (ncf/recommend.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

from ncf import storage
from ncf.config import add_arguments, from_namespace
from ncf.errors import UserError, exit_on_user_error

HYPERPARAMETERS = "/opt/ml/input/config/hyperparameters.json"
MODEL_DIR = "/opt/ml/model"
PARTITION_FILE = "partition.json"
EVALUATION_FILE = "evaluation.json"


def _write_json(directory: str, name: str, obj: dict[str, Any]) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    storage.write_json(Path(directory) / name, obj)


def preprocess(argv: list[str]) -> int:
    from pipelines.run_date import resolve
    from spark.preprocess import PreprocessConfig, run

    parser = argparse.ArgumentParser(prog="sagemaker_entry preprocess")
    parser.add_argument("--output-dir", required=True, help="where partition.json goes")
    parser.add_argument("--scheduled-time", default="", help="ISO 8601; its UTC day is the default run date")
    add_arguments(parser, PreprocessConfig)
    args = parser.parse_args(argv)
    config = from_namespace(PreprocessConfig, args)
    result = run(dataclasses.replace(config, run_date=resolve(config.run_date, args.scheduled_time)))
    _write_json(args.output_dir, PARTITION_FILE,
                {"partition_uri": result.partition_uri, "run_date": result.stats["run_date"]})
    return 0


def train_config_from_hyperparameters(hyperparameters: dict[str, str]):
    """SageMaker hands every hyperparameter over as a string; parse them with the step's own flag types."""
    from ncf.train import TrainConfig

    parser = argparse.ArgumentParser(prog="sagemaker_entry train", exit_on_error=False)
    add_arguments(parser, TrainConfig)
    argv: list[str] = []
    for name, value in sorted(hyperparameters.items()):
        argv += ["--" + name.replace("_", "-"), str(value)]
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise UserError(f"{HYPERPARAMETERS}: {exc}") from exc
    return from_namespace(TrainConfig, args)


def train(argv: list[str]) -> int:
    from ncf.train import run

    parser = argparse.ArgumentParser(prog="sagemaker_entry train")
    parser.add_argument("--hyperparameters", default=HYPERPARAMETERS)
    parser.add_argument("--model-dir", default=MODEL_DIR)
    args = parser.parse_args(argv)
    # ncf.train prints `HR=...; NDCG=...; Loss=...;` every epoch: the metric definitions scrape those lines.
    result = run(train_config_from_hyperparameters(storage.read_json(args.hyperparameters)))
    with storage.local_copy(result.model_uri) as package:
        shutil.copytree(package, args.model_dir, dirs_exist_ok=True)
    return 0


def gate(argv: list[str]) -> int:
    from ncf.gate import GateConfig, run

    parser = argparse.ArgumentParser(prog="sagemaker_entry gate")
    parser.add_argument("--evaluation-dir", required=True, help="where evaluation.json goes")
    add_arguments(parser, GateConfig)
    args = parser.parse_args(argv)
    result = run(from_namespace(GateConfig, args))
    _write_json(args.evaluation_dir, EVALUATION_FILE, dataclasses.asdict(result))
    return 0


def recommend(argv: list[str]) -> int:
    from ncf.recommend import RecommendConfig, run, summary_line

    parser = argparse.ArgumentParser(prog="sagemaker_entry recommend")
    add_arguments(parser, RecommendConfig)
    print(summary_line(run(from_namespace(RecommendConfig, parser.parse_args(argv)))))
    return 0


COMMANDS = {"preprocess": preprocess, "train": train, "gate": gate, "recommend": recommend}


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        raise UserError(f"usage: python -m pipelines.sagemaker_entry {{{','.join(COMMANDS)}}} [flags]; got {argv[:1]}")
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
