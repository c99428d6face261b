"""`ncfctl run` (= `make demo`): the SAME pipeline as on a cluster, run on this machine by kfp.local.

    ncfctl run                                 # two run dates on synthetic data: train, gate, deploy, gate again
    ncfctl run --run-date 2026-03-02           # one more date: the gate decides against the existing champion
    ncfctl run --input ml-100k/u.data          # a MovieLens file (or any log preprocess reads) instead
    ncfctl run --param epochs=5 --param lr=0.002

Embedded stand-ins for the cluster's services: the storage root is a local directory (default runs/demo) in
place of S3, MLflow is a sqlite file in it, and the deploy step starts (or hot-swaps) the KServe predictor on
127.0.0.1. Each component runs in its own subprocess (kfp.local.SubprocessRunner, this virtualenv). The command
ends with a recommendation fetched over HTTP from the predictor and where to look next.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ncf import storage
from ncf.errors import UserError, exit_on_user_error
from pipelines import definition
from pipelines import params as pipeline_params

DEFAULT_ROOT = "runs/demo"
DEFAULT_EVENTS = 40_000
# The synthetic world (users, items, tastes) is fixed by the first date's size; later dates see more of its
# events, like a growing log. ~40 events per user and ~20 per item keep nearly every item above the
# preprocess filter on every date, and far more than the 99 distinct negatives evaluation draws per user.
EVENTS_PER_USER = 40
EVENTS_PER_ITEM = 20
SYNTHETIC_GROWTH = 0.25  # each later run date adds this fraction of the first date's events
# Small enough for a 2-core laptop; any --param wins.
DEMO_PARAMS = {"epochs": 4, "serving_target": "local"}


@dataclasses.dataclass
class RunSummary:
    run_date: str
    partition_uri: str
    model_uri: str
    model_version: str
    promoted: bool
    reason: str
    gate_report: str
    endpoint: str | None  # set when the deploy step ran
    kfp_dir: Path
    seconds: float


def _log(message: str) -> None:
    print(f"[ncfctl run] {message}", flush=True)


def synthetic_input(root: str, run_date: str, num_events: int, index: int) -> str:
    """Generate (once) the synthetic event log a run date reads: `<root>/raw/dt=<date>`."""
    from spark.generate import GenerateConfig
    from spark.generate import run as generate

    output = storage.join(root, "raw", f"dt={run_date}")
    if storage.is_complete(output):
        _log(f"synthetic events for {run_date}: reusing {output}")
        return output
    events = num_events + int(index * SYNTHETIC_GROWTH * num_events)
    start = dt.date.fromisoformat(run_date) - dt.timedelta(days=30)
    _log(f"synthetic events for {run_date}: generating {events:,} events -> {output}")
    result = generate(GenerateConfig(
        output_uri=output, num_events=events, num_users=max(100, num_events // EVENTS_PER_USER),
        num_items=max(500, num_events // EVENTS_PER_ITEM), start_date=start.isoformat(), days=30,
    ))
    _log(f"  {result.num_events:,} events, {result.num_users:,} users, {result.num_items:,} items "
         f"in {result.seconds:.1f}s")
    return output


def _task_output(run_dir: Path, task: str) -> dict[str, Any] | None:
    path = run_dir / task / "executor_output.json"
    return json.loads(path.read_text()) if path.exists() else None


def _artifact_metadata(output: dict[str, Any], name: str) -> dict[str, Any]:
    return output["artifacts"][name]["artifacts"][0].get("metadata", {})


def run_once(pipeline, arguments: dict[str, Any], pipeline_root: Path) -> RunSummary:
    """Run the pipeline once through kfp.local (already initialised) and read back what each task produced."""
    before = set(pipeline_root.iterdir()) if pipeline_root.exists() else set()
    started = time.perf_counter()
    try:
        pipeline(**arguments)
    except Exception as exc:  # kfp.local raises RuntimeError naming the failed task; its log is above
        raise UserError(f"pipeline run for run_date={arguments.get('run_date')!r} failed: {exc}") from exc
    seconds = time.perf_counter() - started
    new = sorted(p for p in set(pipeline_root.iterdir()) - before if p.is_dir())
    if not new:
        raise UserError(f"{pipeline_root}: kfp.local wrote no run directory")
    run_dir = new[-1]
    pre, train, gate = (_task_output(run_dir, t) for t in ("preprocess", "train", "gate"))
    if not (pre and train and gate):
        raise UserError(f"{run_dir}: a task wrote no executor_output.json")
    partition = _artifact_metadata(pre, "partition")
    report = _artifact_metadata(gate, "report")
    deploy = _task_output(run_dir, "deploy")
    return RunSummary(
        run_date=partition["run_date"],
        partition_uri=partition["partition_uri"],
        model_uri=_artifact_metadata(train, "package")["model_uri"],
        model_version=report["version"],
        promoted=bool(gate["parameterValues"]["Output"]),
        reason=report["reason"],
        gate_report=report["report_uri"],
        endpoint=deploy["parameterValues"]["Output"] if deploy else None,
        kfp_dir=run_dir,
        seconds=seconds,
    )


def predict_url(endpoint: str, model_name: str) -> str:
    """The KServe V1 predict URL of a predictor endpoint (base URL or an explicit :predict URL)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(":predict") else f"{endpoint}/v1/models/{model_name}:predict"


def fetch_recommendation(url: str, user_id: str, k: int = 10, timeout: float = 30.0) -> dict[str, Any]:
    body = json.dumps({"instances": [{"user_id": user_id, "k": k}]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise UserError(f"POST {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc
        except (urllib.error.URLError, ConnectionError) as exc:  # a hot swap / start may still be in progress
            if time.monotonic() > deadline:
                raise UserError(f"POST {url}: predictor not reachable ({exc})") from exc
            time.sleep(0.5)


def curl_command(url: str, user_id: str, k: int = 5) -> str:
    """The query line printed for the user to paste (the predictor takes JSON whatever curl's -d content type)."""
    body = json.dumps({"instances": [{"user_id": user_id, "k": k}]})
    return f"curl -s {url} -d {shlex.quote(body)}"


def _first_user(partition_uri: str) -> str:
    from ncf.data import load_partition

    return str(load_partition(partition_uri).user_ids[0])


def _run_dates(args: argparse.Namespace) -> list[str]:
    if args.run_date:
        for value in args.run_date:
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise UserError(f"--run-date {value!r}: expected YYYY-MM-DD") from None
        return list(args.run_date)
    today = dt.datetime.now(dt.UTC).date()
    return [(today - dt.timedelta(days=1)).isoformat(), today.isoformat()]


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ncfctl run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="raw log to preprocess (default: synthetic events per date)")
    parser.add_argument("--run-date", action="append", metavar="YYYY-MM-DD",
                        help="run date (repeatable); default: yesterday and today, so the second run is gated "
                             "against the first run's champion")
    parser.add_argument("--storage-root", default=DEFAULT_ROOT, help=f"local storage root (default: {DEFAULT_ROOT})")
    parser.add_argument("--num-events", type=int, default=DEFAULT_EVENTS,
                        help=f"synthetic events for the first date (default: {DEFAULT_EVENTS:,})")
    pipeline_params.add_arguments(parser, params_file_default=None)
    args = parser.parse_args(argv)

    root = Path(args.storage_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    values = {**DEMO_PARAMS, "tracking_uri": tracking_uri, **pipeline_params.from_args(args)}
    values["storage_root"] = str(root)
    if args.input and not storage.exists(args.input):
        raise UserError(f"--input {args.input}: no such file or directory")
    defaults = {p.name: p.default for p in definition.parameters() if not p.required}
    values = {**defaults, **pipeline_params.validate(values, "ncfctl run")}

    from kfp import local

    from pipelines.kfp_pipeline import build_pipeline

    # kfp.local streams each step's output as it comes: unbuffered, per-epoch lines show up live.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # MLflow's per-file download bars would flood the streamed step logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    pipeline_root = root / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    pipeline = build_pipeline()
    steps = " -> ".join(definition.dependency_order())
    summaries: list[RunSummary] = []
    dates = _run_dates(args)
    for index, run_date in enumerate(dates):
        existing = len([d for d in storage.complete_partitions(root) if d != run_date])
        input_uri = args.input or synthetic_input(str(root), run_date, args.num_events, existing)
        _log(f"[{index + 1}/{len(dates)}] run_date={run_date}: {steps} (kfp.local, one subprocess per step)")
        summary = run_once(pipeline, {**values, "input_uri": str(input_uri), "run_date": run_date}, pipeline_root)
        summaries.append(summary)
        decision = "PROMOTED -> deployed" if summary.promoted else "kept the champion (deploy skipped)"
        _log(f"  done in {summary.seconds:.0f}s: model version {summary.model_version}: {decision}. {summary.reason}")

    _print_outcome(summaries, values, root, tracking_uri)
    return 0


def _print_outcome(summaries: list[RunSummary], values: dict[str, Any], root: Path, tracking_uri: str) -> None:
    endpoint = next((s.endpoint for s in reversed(summaries) if s.endpoint), None)
    last = summaries[-1]
    print()
    for s in summaries:
        gate = "promoted" if s.promoted else "not promoted"
        print(f"run {s.run_date}: partition {s.partition_uri}\n"
              f"    model version {s.model_version} ({s.model_uri}) gate: {gate}: {s.reason}\n"
              f"    gate report {s.gate_report}/gate.html   step outputs {s.kfp_dir}")
    if endpoint is None:
        print("\nno predictor was deployed: the gate promoted no model in these runs")
    else:
        url = predict_url(endpoint, values["model_name"])
        user = _first_user(last.partition_uri)
        response = fetch_recommendation(url, user)
        print(f"\npredictor (KServe V1) {url}\nrecommendation for user {user}:\n"
              f"{json.dumps(response, indent=2)}\n"
              f"try it: {curl_command(url, user)}")
    print(f"\nMLflow UI:  .venv/bin/mlflow ui --backend-store-uri {tracking_uri}   (then http://127.0.0.1:5000)\n"
          f"storage:    {root}   (data/dt=*, models/*, reports/gate/*, kfp/)")


if __name__ == "__main__":
    sys.exit(main())
