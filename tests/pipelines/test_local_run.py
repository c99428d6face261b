"""`ncfctl run`: the same pipeline through kfp.local on tiny synthetic data, two dates, a real predictor."""

from __future__ import annotations

import json

import pytest

from pipelines import local_run


def test_predict_url():
    assert local_run.predict_url("http://127.0.0.1:8080/", "ncf") == "http://127.0.0.1:8080/v1/models/ncf:predict"
    assert local_run.predict_url("http://h/v1/models/x:predict", "ncf") == "http://h/v1/models/x:predict"


def test_bad_run_date_and_missing_input_are_user_errors(tmp_path, capsys):
    assert local_run.main(["--storage-root", str(tmp_path), "--run-date", "2026-13-01"]) == 2
    assert "--run-date '2026-13-01': expected YYYY-MM-DD" in capsys.readouterr().err
    assert local_run.main(["--storage-root", str(tmp_path), "--input", str(tmp_path / "nope.csv")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert local_run.main(["--storage-root", str(tmp_path), "--param", "epochz=1"]) == 2
    assert "unknown pipeline parameter(s) ['epochz']" in capsys.readouterr().err


@pytest.mark.slow
def test_two_dates_train_gate_deploy_and_serve_a_recommendation(tmp_path, capsys):
    from serving.deploy import stop_local_server

    root = tmp_path / "demo"
    try:
        code = local_run.main([
            "--storage-root", str(root), "--num-events", "20000",
            "--run-date", "2026-03-01", "--run-date", "2026-03-02", "--param", "epochs=1",
        ])
        out = capsys.readouterr().out
        assert code == 0, out[-3000:]
    finally:
        for state in (root / "serving").glob("*-local.json"):
            stop_local_server(json.loads(state.read_text())["pid"])
    assert (root / "data" / "dt=2026-03-01" / "_SUCCESS").exists()
    assert (root / "data" / "dt=2026-03-02" / "_SUCCESS").exists()
    assert "run 2026-03-01: partition" in out and "run 2026-03-02: partition" in out
    assert "model version 1" in out and "model version 2" in out  # the second run was gated against the first
    response = json.loads(out[out.index("recommendation for user"):].split("\n", 1)[1].split("\ntry it:")[0])
    prediction = response["predictions"][0]
    assert len(prediction["item_ids"]) == 10 and len(prediction["scores"]) == 10
    assert "mlflow ui --backend-store-uri sqlite:///" in out
