"""`ncfctl run` (= `make demo`): the SAME pipeline as on a cluster, run on this machine by kfp.local.

    ncfctl run                                 # two run dates on synthetic data: train, gate, deploy, gate again
    ncfctl run --run-date 2026-03-02           # one more date: the gate decides against the existing champion
    ncfctl run --input ml-100k/u.data          # a MovieLens file (or any log preprocess reads) instead
    ncfctl run --param epochs=5 --param lr=0.002
    ncfctl run --param recommend_k=20          # the nightly top-K: <storage root>/recommendations/dt=<run date>
    ncfctl run --port 8090                     # the local predictor on another port (runs can overlap)
    ncfctl run --verbose                       # stream every step's output, as kfp.local prints it

Embedded stand-ins for the cluster's services: the storage root is a local directory (default runs/demo) in
place of S3, MLflow is a sqlite file in it, and the deploy step starts (or hot-swaps) the KServe predictor on
127.0.0.1. Each component runs in its own subprocess (kfp.local.SubprocessRunner, this virtualenv). The terminal
gets one line per step as it starts and ends (pipelines/step_logs.py); everything the steps print is in
<storage root>/logs/<run date>-<time>/<step>.log. The command ends with a recommendation fetched over HTTP from
the predictor and where to look next.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ncf import contracts, errors, storage
from ncf.errors import UserError, exit_on_user_error
from pipelines import definition
from pipelines import params as pipeline_params
from pipelines.step_logs import Console, StepRunner, capture, display_path, run_logged

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
    log_dir: Path
    seconds: float
    gate_metric: str = ""
    challenger_score: float | None = None
    champion_score: float | None = None  # None: there was no champion (first model)
    baseline_score: float | None = None  # the popularity baseline on the same rows (None: not reported)

    def scores(self) -> str:
        if self.challenger_score is None:
            return ""
        champion = "no champion" if self.champion_score is None else f"champion {self.champion_score:.4f}"
        baseline = "" if self.baseline_score is None else f", popularity {self.baseline_score:.4f}"
        return f"{self.gate_metric}: challenger {self.challenger_score:.4f} vs {champion}{baseline}"


def _log(console: Console, message: str) -> None:
    console.line(f"[ncfctl run] {message}")


def synthetic_input(root: str, run_date: str, num_events: int, index: int, console: Console, log_dir: Path) -> str:
    """Generate (once) the synthetic event log a run date reads: `<root>/raw/dt=<date>` (Spark, in a subprocess
    whose output goes to `<log_dir>/generate.log`)."""
    from spark.generate import GenerateConfig

    output = contracts.raw_uri(root, run_date)
    if storage.is_complete(output):
        console.line(f"  {'generate':<10}  reusing {display_path(output)}")
        return output
    events = num_events + int(index * SYNTHETIC_GROWTH * num_events)
    start = dt.date.fromisoformat(run_date) - dt.timedelta(days=30)
    config = GenerateConfig(
        output_uri=output, num_events=events, num_users=max(100, num_events // EVENTS_PER_USER),
        num_items=max(500, num_events // EVENTS_PER_ITEM), start_date=start.isoformat(), days=30,
    )
    flags = [f"--{f.name.replace('_', '-')}={getattr(config, f.name)}" for f in dataclasses.fields(config)]
    log = log_dir / "generate.log"
    console.line(f"  {'generate':<10}  started {time.strftime('%H:%M:%S')}: {events:,} synthetic events")
    # NCF_DEBUG: the trace goes into generate.log (like a pipeline step's), where classify_log reads the cause.
    returncode, seconds = run_logged([sys.executable, "-m", "spark.generate", *flags], log, console,
                                     env={**os.environ, errors.DEBUG_ENV: "1"})
    lines = log.read_text(errors="replace").splitlines()
    if returncode != 0:
        failure = errors.classify_log("\n".join(lines)) or errors.Classified(errors.INTERNAL,
                                                                              f"exited with {returncode}")
        raise errors.Fault(failure.kind, f"generate failed: {failure.message} (log: {display_path(log)})")
    wrote = next((line for line in reversed(lines) if line.startswith("wrote ")), "").replace(output,
                                                                                               display_path(output))
    console.line(f"  {'generate':<10}  done in {seconds:.0f}s: {wrote}   log: {display_path(log)}")
    return output


def _task_output(run_dir: Path, task: str) -> dict[str, Any] | None:
    path = run_dir / task / "executor_output.json"
    return json.loads(path.read_text()) if path.exists() else None


def _artifact_metadata(output: dict[str, Any], name: str) -> dict[str, Any]:
    artifacts = output.get("artifacts", {}).get(name, {}).get("artifacts") or [{}]
    return artifacts[0].get("metadata", {})


def _metric(metrics: dict[str, Any], prefix: str) -> tuple[str, float] | None:
    """(`hr@10`, value) for the first key `<prefix><name>@K`."""
    key = next((k for k in sorted(metrics) if k.startswith(prefix) and "@" in k), None)
    return (key[len(prefix):], float(metrics[key])) if key else None


def step_summary(task: str, outputs: dict[str, Any]) -> str:
    """The key numbers of a finished step, from its executor_output.json."""
    if task == "preprocess":
        m = _artifact_metadata(outputs, "partition")
        return (f"{int(m.get('num_events', 0)):,} events -> {int(m.get('num_users', 0)):,} users x "
                f"{int(m.get('num_items', 0)):,} items ({int(m.get('num_train', 0)):,} train / "
                f"{int(m.get('num_test', 0)):,} test rows)")
    if task == "train":
        metrics, package = _artifact_metadata(outputs, "metrics"), _artifact_metadata(outputs, "package")
        # Model selection's winner when it ran (the family's name otherwise; NCF alone: its model type).
        chosen = package.get("chosen_candidate")
        model = (f"{chosen} chosen on validation" if chosen
                 else package.get("model_type") if package.get("family", "ncf") == "ncf" else package.get("family"))
        parts = [str(model or "model")]
        validation = _metric(metrics, "val_ndcg")
        if validation:
            epoch = f" (epoch {int(metrics['best_epoch'])})" if "best_epoch" in metrics else ""
            parts.append(f"validation ndcg{validation[0]} {validation[1]:.4f}{epoch}")
        hr, ndcg = _metric(metrics, "hr"), _metric(metrics, "ndcg")
        if hr and ndcg:
            parts.append(f"test hr{hr[0]} {hr[1]:.4f} ndcg{ndcg[0]} {ndcg[1]:.4f}")
        return ", ".join(parts)
    if task == "gate":
        report = _artifact_metadata(outputs, "report")
        verdict = "PROMOTED" if outputs.get("parameterValues", {}).get("Output") else "not promoted"
        baseline = _metric(_artifact_metadata(outputs, "scores"), "baseline_")
        scores = f" (popularity baseline {baseline[0]} {baseline[1]:.4f})" if baseline else ""
        return f"v{report.get('version', '?')} {verdict}: {report.get('reason', '')}{scores}"
    if task == "deploy":
        return f"serving at {outputs.get('parameterValues', {}).get('Output', '?')}"
    if task == "recommend":
        m = _artifact_metadata(outputs, "recommendations")
        if m.get("skipped"):
            return f"skipped: {m['skipped']}"
        return (f"{int(m.get('users', 0)):,} users x top-{int(m.get('recommend_k', 0))} from {m.get('model', '?')} "
                f"-> {display_path(m['output_uri']) if m.get('output_uri') else '(not published)'}")
    return ""


def run_once(pipeline: Callable[[], Any], arguments: dict[str, Any], pipeline_root: Path,
             runner: StepRunner) -> RunSummary:
    """Run the pipeline (`pipeline()` builds it, kfp.local initialised) once; read back what each task produced."""
    before = set(pipeline_root.iterdir()) if pipeline_root.exists() else set()
    started = time.perf_counter()
    try:
        # Building warns about settings only a cluster uses (accelerators, images): that goes to kfp.log too.
        with capture(runner, runner.log_dir / "kfp.log"):
            pipeline()(**arguments)
    except Exception as exc:  # kfp.local raises RuntimeError naming the failed task
        failed = runner.failed
        if failed is None:
            raise UserError(f"pipeline run for run_date={arguments.get('run_date')!r} failed: {exc} "
                            f"(log: {display_path(runner.log_dir / 'kfp.log')})") from exc
        raise errors.Fault(failed.failure.kind, f"{failed.name} step failed: {failed.failure.message} "
                                                f"(log: {display_path(failed.log)})") from exc
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
    scores = _artifact_metadata(gate, "scores")
    deploy = _task_output(run_dir, "deploy")
    metric = arguments.get("gate_metric", "")
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
        log_dir=runner.log_dir,
        seconds=seconds,
        gate_metric=metric,
        challenger_score=scores.get(f"challenger_{metric}"),
        champion_score=scores.get(f"champion_{metric}"),
        baseline_score=scores.get(f"baseline_{metric}"),
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
    from serving.deploy import PORT_ENV

    parser = argparse.ArgumentParser(prog="ncfctl run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="raw log to preprocess (default: synthetic events per date)")
    parser.add_argument("--run-date", action="append", metavar="YYYY-MM-DD",
                        help="run date (repeatable); default: yesterday and today, so the second run is gated "
                             "against the first run's champion")
    parser.add_argument("--storage-root", default=DEFAULT_ROOT, help=f"local storage root (default: {DEFAULT_ROOT})")
    parser.add_argument("--num-events", type=int, default=DEFAULT_EVENTS,
                        help=f"synthetic events for the first date (default: {DEFAULT_EVENTS:,})")
    parser.add_argument("--port", type=int, default=None,
                        help="REST port of the local predictor when the deploy step starts one (gRPC: port + 1; "
                             f"default: ${PORT_ENV}, else 8080); a running one is hot-swapped where it is")
    parser.add_argument("--verbose", action="store_true",
                        help="stream every step's output (kfp.local's own lines too) as well as logging it")
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
    if args.port is not None:
        if not 0 < args.port < 65535:
            raise UserError(f"--port: expected 1..65534 (gRPC takes port + 1), got {args.port}")
        os.environ[PORT_ENV] = str(args.port)  # the deploy step's subprocess inherits it (serving/deploy.py)

    from kfp import local

    from pipelines.kfp_pipeline import KubernetesSettings, build_pipeline

    # Unbuffered: per-epoch lines reach the log files (and the bars) as they happen.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # MLflow's per-file download bars would flood the step logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    console = Console(sys.stdout, verbose=args.verbose)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    _log(console, f"storage {display_path(root)}; each step's output goes to {display_path(root / 'logs')}/"
                  f"<run date>-{stamp}/<step>.log" + ("" if args.verbose else " (--verbose streams it)"))
    pipeline_root = root / "kfp"

    @functools.cache
    def pipeline():
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
        # No retries here: kfp.local honours the cluster's (backoff 60 s, x2), so a bad input file took 4 minutes to
        # report; a retry cannot fix it, and a laptop has no evicted pods or lost nodes for retries to cover.
        return build_pipeline(KubernetesSettings(retries=0))

    steps = " -> ".join(definition.dependency_order())
    summaries: list[RunSummary] = []
    dates = _run_dates(args)
    for index, run_date in enumerate(dates):
        log_dir = root / "logs" / f"{run_date}-{stamp}"
        _log(console, f"[{index + 1}/{len(dates)}] run_date={run_date}: {steps}")
        existing = len([d for d in contracts.complete_partitions(root) if d != run_date])
        input_uri = args.input or synthetic_input(str(root), run_date, args.num_events, existing, console, log_dir)
        runner = StepRunner(log_dir, console, step_summary)
        summary = run_once(pipeline, {**values, "input_uri": str(input_uri), "run_date": run_date}, pipeline_root,
                           runner)
        summaries.append(summary)

    _print_outcome(console, summaries, values, root, tracking_uri)
    return 0


def _print_outcome(console: Console, summaries: list[RunSummary], values: dict[str, Any], root: Path,
                   tracking_uri: str) -> None:
    endpoint = next((s.endpoint for s in reversed(summaries) if s.endpoint), None)
    lines = [""]
    for s in summaries:
        verdict = "PROMOTED" if s.promoted else "not promoted"
        lines += [f"run {s.run_date}: model version {s.model_version} {verdict} ({s.seconds:.0f}s). {s.scores()}. "
                  f"{s.reason}",
                  f"    partition {display_path(s.partition_uri)}   package {display_path(s.model_uri)}",
                  f"    gate report {display_path(s.gate_report)}/gate.html   logs {display_path(s.log_dir)}/"]
    if endpoint is None:
        lines.append("no predictor was deployed: the gate promoted no model in these runs")
    else:
        url = predict_url(endpoint, values["model_name"])
        user = _first_user(summaries[-1].partition_uri)
        response = fetch_recommendation(url, user)
        lines += [f"predictor (KServe V1) {url}, serving model version {response.get('model_version')}",
                  f"recommendation for user {user}: {json.dumps(response)}",
                  f"try it: {curl_command(url, user)}"]
    storage_flag = "" if display_path(root) == DEFAULT_ROOT else f" --storage-root {shlex.quote(display_path(root))}"
    lines += [f"status:     .venv/bin/ncfctl status{storage_flag}   (every version, gate decisions, what serves)",
              f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {tracking_uri}   (then http://127.0.0.1:5000)",
              f"storage:    {display_path(root)}   (data/dt=*, models/*, reports/gate/*, recommendations/dt=*, "
              f"logs/, kfp/)"]
    for line in lines:
        console.line(line)


if __name__ == "__main__":
    sys.exit(main())
