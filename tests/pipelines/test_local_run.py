"""`ncfctl run`: the same pipeline through kfp.local on tiny synthetic data, two dates, a real predictor; the quiet
console (one line per step, full logs in files) on a real kfp.local pipeline."""

# No `from __future__ import annotations`: KFP reads the component's annotations as types.
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from kfp import dsl

from ncf.ports import free_port
from pipelines import local_run, step_logs


def test_predict_url():
    assert local_run.predict_url("http://127.0.0.1:8080/", "ncf") == "http://127.0.0.1:8080/v1/models/ncf:predict"
    assert local_run.predict_url("http://h/v1/models/x:predict", "ncf") == "http://h/v1/models/x:predict"


def test_the_recommend_steps_line_shows_users_and_the_output(tmp_path):
    out = tmp_path / "recommendations" / "dt=2026-03-02"
    outputs = {"artifacts": {"recommendations": {"artifacts": [{"metadata": {
        "output_uri": str(out), "users": 12345, "rows": 123450, "model": "models:/ncf/2", "recommend_k": 10,
        "skipped": ""}}]}}}
    assert local_run.step_summary("recommend", outputs) == (
        f"12,345 users x top-10 from models:/ncf/2 -> {step_logs.display_path(out)}")
    skipped = {"artifacts": {"recommendations": {"artifacts": [{"metadata": {"skipped": "no champion yet"}}]}}}
    assert local_run.step_summary("recommend", skipped) == "skipped: no champion yet"


def _train_outputs(metrics: dict, package: dict) -> dict:
    return {"artifacts": {name: {"artifacts": [{"metadata": metadata}]}
                          for name, metadata in (("metrics", metrics), ("package", package))}}


def test_the_train_steps_line_names_the_model_that_was_exported():
    scores = {"val_ndcg@10": 0.4518, "hr@10": 0.743, "ndcg@10": 0.4504}
    chosen = _train_outputs(scores, {"model_type": "NeuMF", "family": "ials", "chosen_candidate": "ials"})
    assert local_run.step_summary("train", chosen) == (
        "ials chosen on validation, validation ndcg@10 0.4518, test hr@10 0.7430 ndcg@10 0.4504")
    ncf_alone = _train_outputs({**scores, "best_epoch": 3}, {"model_type": "GMF", "family": "ncf"})
    assert local_run.step_summary("train", ncf_alone).startswith("GMF, validation ndcg@10 0.4518 (epoch 3)")
    another_family = _train_outputs(scores, {"model_type": "NeuMF", "family": "ease", "chosen_candidate": ""})
    assert local_run.step_summary("train", another_family).startswith("ease, ")


def test_bad_run_date_missing_input_and_bad_port_are_user_errors(tmp_path, capsys):
    assert local_run.main(["--storage-root", str(tmp_path), "--run-date", "2026-13-01"]) == 2
    assert "--run-date '2026-13-01': expected YYYY-MM-DD" in capsys.readouterr().err
    assert local_run.main(["--storage-root", str(tmp_path), "--input", str(tmp_path / "nope.csv")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert local_run.main(["--storage-root", str(tmp_path), "--param", "epochz=1"]) == 2
    assert "unknown pipeline parameter(s) ['epochz']" in capsys.readouterr().err
    assert local_run.main(["--storage-root", str(tmp_path), "--port", "65535"]) == 2
    assert "--port: expected 1..65534" in capsys.readouterr().err


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def chatty(label: str, epochs: int) -> int:
    import sys

    for epoch in range(1, epochs + 1):
        print(f"[{label}] epoch {epoch}/{epochs} 0.1s", file=sys.stderr)
        print(f"HR=0.{epoch}; NDCG=0.{epoch}; Loss=0.5;")
    return epochs


@dsl.pipeline(name="chatty")
def chatty_pipeline(epochs: int = 3):
    first = chatty(label="GMF", epochs=epochs).set_display_name("first")
    chatty(label="NeuMF", epochs=first.output).after(first)


@pytest.mark.parametrize("verbose", [False, True])
def test_each_steps_output_goes_to_its_log_and_the_console_gets_a_line_per_step(tmp_path, verbose):
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    out = io.StringIO()
    runner = step_logs.StepRunner(tmp_path / "logs", step_logs.Console(out, verbose=verbose),
                                  lambda task, outputs: f"returned {outputs['parameterValues']['Output']}")
    with step_logs.capture(runner, tmp_path / "logs" / "kfp.log"):
        chatty_pipeline(epochs=3)
    console = out.getvalue()
    assert [o.log.name for o in runner.outcomes] == ["chatty.log", "chatty-2.log"]  # one component, two tasks
    for outcome, label in zip(runner.outcomes, ("GMF", "NeuMF"), strict=True):
        text = outcome.log.read_text()
        assert "HR=0.3; NDCG=0.3; Loss=0.5;" in text and f"[{label}] epoch 3/3" in text and "KFP Executor" in text
    kfp_log = (tmp_path / "logs" / "kfp.log").read_text()
    assert "Executing task" in kfp_log and "non-Python base image" not in kfp_log  # python:3.11 warns of nothing
    starts = [ln for ln in console.splitlines() if re.match(r"^  chatty(-2)?\s+started", ln)]
    dones = [ln for ln in console.splitlines() if re.match(r"^  chatty(-2)?\s+done in \d+s: returned 3 ", ln)]
    assert len(starts) == 2 and len(dones) == 2, console
    if verbose:  # everything streams as kfp.local prints it, and is logged too
        assert "Executing task" in console and "    HR=0.1; NDCG=0.1; Loss=0.5;" in console
    else:
        assert console.count("\n") == 4, console


def test_the_gate_lines_name_the_popularity_baseline():
    """The quiet run's gate line and the run summary carry the baseline the gate logged in its `scores` metrics."""
    def artifact(metadata):
        return {"artifacts": [{"metadata": metadata}]}

    outputs = {"parameterValues": {"Output": False}, "artifacts": {
        "report": artifact({"version": "2", "reason": "challenger 0.1000 is not better than the popularity baseline "
                                                      "0.2000"}),
        "scores": artifact({"challenger_ndcg@10": 0.1, "baseline_ndcg@10": 0.2, "promoted": 0, "version": 2})}}
    assert local_run.step_summary("gate", outputs) == (
        "v2 not promoted: challenger 0.1000 is not better than the popularity baseline 0.2000 (popularity baseline "
        "ndcg@10 0.2000)")
    del outputs["artifacts"]["scores"]  # a gate from before the baseline: no number, no claim
    assert local_run.step_summary("gate", outputs).endswith("0.2000")
    summary = local_run.RunSummary("2026-03-02", "p", "m", "2", False, "r", "g", None, Path("kfp"), Path("logs"),
                                   1.0, "ndcg@10", challenger_score=0.1, champion_score=None, baseline_score=0.2)
    assert summary.scores() == "ndcg@10: challenger 0.1000 vs no champion, popularity 0.2000"


@pytest.mark.slow
def test_two_dates_train_gate_deploy_and_serve_a_recommendation(tmp_path, capsys):
    from ncf import registry, status
    from serving.deploy import stop_local_server

    root = tmp_path / "demo"
    port = free_port(count=2)  # REST, and gRPC on port + 1
    try:
        code = local_run.main([
            "--storage-root", str(root), "--num-events", "20000", "--port", str(port),
            "--run-date", "2026-03-01", "--run-date", "2026-03-02",
            # enough epochs to learn the synthetic users' tastes: the gate promotes no model that does not beat
            # popularity (on these 20k events NeuMF scores ndcg@10 0.167 after 4 epochs, popularity 0.168; 0.234
            # after 8)
            "--param", "epochs=8",
        ])
        out, err = capsys.readouterr()
        assert code == 0, out[-3000:] + err[-3000:]
        assert f"http://127.0.0.1:{port}/v1/models/ncf:predict" in out  # the port asked for, not 8080
        command = out.split("try it: ", 1)[1].splitlines()[0]
        pasted = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert pasted.returncode == 0 and len(json.loads(pasted.stdout)["predictions"][0]["item_ids"]) == 5
        assert status.main(["--storage-root", str(root)]) == 0
        shown = capsys.readouterr().out
    finally:
        for state in (root / "serving").glob("*-local.json"):
            stop_local_server(json.loads(state.read_text())["pid"])

    # Quiet: a line per step, nothing of what the steps and kfp.local print; everything in the log files.
    assert len(out.splitlines()) <= 60, out
    for noise in ("KFP Executor", "Executing task", "Warning", "WARN", "Traceback", "executor_input"):
        assert noise not in out + err, noise
    for date in ("2026-03-01", "2026-03-02"):
        assert (root / "data" / f"dt={date}" / "_SUCCESS").exists()
        (log_dir,) = (root / "logs").glob(f"{date}-*")
        assert {p.name for p in log_dir.iterdir()} >= {"generate.log", "kfp.log", "preprocess.log", "train.log",
                                                       "gate.log", "recommend.log"}
        # the champion's nightly top-K, every night whatever the gate decided
        recommendations = root / "recommendations" / f"dt={date}"
        assert (recommendations / "_SUCCESS").exists() and list(recommendations.glob("part-*.parquet"))
        assert re.search(rf"^  recommend\s+done in \d+s: [\d,]+ users x top-10 from models:/ncf/\d+ -> "
                         rf"\S*recommendations/dt={date}", out, re.M), out
        assert "HR=" in (log_dir / "train.log").read_text() and "Executing task" in (log_dir / "kfp.log").read_text()
        assert f"{log_dir}/train.log" in out  # its path is printed

    # The gate decisions, as printed, are the ones the gate made, and agree with the scores printed beside them.
    runs = re.findall(r"^run (\S+): model version (\d+) (PROMOTED|not promoted) \(\d+s\)\. ndcg@10: challenger "
                      r"([\d.]+) vs (no champion|champion ([\d.]+)), popularity ([\d.]+)\. (.*)$", out, re.M)
    assert [(r[0], r[1]) for r in runs] == [("2026-03-01", "1"), ("2026-03-02", "2")], out
    first, second = runs
    assert first[2] == "PROMOTED" and first[4] == "no champion" and first[7].startswith("first model:")
    assert float(first[3]) > float(first[6])  # the demo's model beats popularity on its partition
    challenger, champion, baseline = float(second[3]), float(second[5]), float(second[6])
    # min_delta 0, floor 0, min_baseline_gain 0 in the demo
    assert (second[2] == "PROMOTED") == (challenger > champion and challenger > baseline), second
    assert second[7].startswith("gain" if second[2] == "PROMOTED" else "challenger")
    assert re.search(r"gate .*v1 PROMOTED: first model: .* over the popularity baseline .*\(popularity baseline "
                     r"ndcg@10 [\d.]+\)", out), out
    tracking_uri = registry.default_tracking_uri(root)
    client = registry.client(tracking_uri)
    for _, version, verdict, *_ in runs:
        assert client.get_model_version("ncf", version).tags["gate"] == ("passed" if verdict == "PROMOTED" else
                                                                         "rejected")
    champion_version = "2" if second[2] == "PROMOTED" else "1"
    assert str(registry.alias_version(tracking_uri, "ncf", "champion").version) == champion_version
    assert re.search(r"^v1 .*FIRST", shown, re.M) and re.search(
        rf"^v2 .*{'PROMOTED' if second[2] == 'PROMOTED' else 'rejected'}", shown, re.M)

    recommendation = next(ln for ln in out.splitlines() if ln.startswith("recommendation for user "))
    response = json.loads(recommendation.split(": ", 1)[1])
    prediction = response["predictions"][0]
    assert len(prediction["item_ids"]) == 10 and len(prediction["scores"]) == 10
    assert response["model_version"] == champion_version
    assert f"local predictor: serving v{champion_version} (champion) at http://127.0.0.1:{port}" in shown
    assert "mlflow ui --backend-store-uri sqlite:///" in out


@pytest.mark.slow
def test_a_failing_step_ends_the_run_with_one_line_naming_it_and_its_log(tmp_path, capsys):
    bad = tmp_path / "events.csv"
    bad.write_text("user_id,item_id,ts\nu1,i1,not-a-time\n")  # nothing preprocess can keep
    code = local_run.main(["--storage-root", str(tmp_path / "root"), "--input", str(bad), "--run-date", "2026-03-01",
                           "--port", str(free_port(count=2))])
    out, err = capsys.readouterr()
    assert code == 2, err
    (line,) = err.strip().splitlines()
    match = re.fullmatch(r"error: preprocess step failed: (.+) \(log: (.+/preprocess\.log)\)", line)
    assert match, line
    assert match[1] in (tmp_path / "root" / "logs").glob("2026-03-01-*/preprocess.log").__next__().read_text()
    assert re.search(r"^  preprocess  FAILED after \d+s: ", out, re.M) and "train" not in out.split("FAILED")[1]
    assert out.count("preprocess  started") == 1, out  # bad input is reported, not retried with the cluster's backoff
    assert not list((tmp_path / "root" / "data").glob("dt=*"))  # nothing published
