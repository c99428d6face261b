"""`ncfctl status` on a real registry (first, rejected, promoted and trained versions, tests/ncf/gated.py), with a
real local predictor and a Kubernetes API that does not answer."""

from __future__ import annotations

import json
import re

import pytest

from ncf import status
from ncf.ports import free_port
from serving import deploy


def _row(text: str, version: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if re.match(rf"^v{version}\b", ln))
    return re.split(r"\s{2,}", line.strip())


def test_each_decision_is_shown_as_the_gate_made_it(gated_store, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    assert status.main(["--storage-root", str(gated_store.root)]) == 0
    text = capsys.readouterr().out
    v1, v2, v3, v4 = gated_store.results
    assert (v1.promoted, v2.promoted, v3.promoted) == (True, False, True)  # the store is what it claims
    expected = {"1": "FIRST", "2": "rejected", "3": "PROMOTED", "4": "PROMOTED" if v4.promoted else "rejected"}
    for result in gated_store.results:
        row = _row(text, result.version)
        assert row[4] == expected[result.version], row
        assert row[5] == f"{result.challenger_score:.4f}", row
        champion = "-" if result.champion_score is None else (f"{result.champion_score:.4f} "
                                                               f"(v{result.champion_version})")
        assert row[6] == champion, row
        assert row[7] == f"{result.baseline_score:.4f}", row  # the popularity baseline on the same rows
        assert row[8] == f"dt={('2026-11-24', '2026-11-25', '2026-11-26', '2026-11-27')[int(result.version) - 1]}"
        assert row[10:] == ["01234567", "run-7"], row
        assert f"v{result.version} {expected[result.version].lower()}: {result.reason}" in text
    champion = "4" if v4.promoted else "3"
    assert _row(text, champion)[0].startswith(f"v{champion} [") and "champion" in _row(text, champion)[0]
    assert f"champion v{champion}" in text.splitlines()[0]
    assert _row(text, "1")[3] == "ncf/GMF" and _row(text, "4")[3] == "ncf/NeuMF"  # family/model type
    assert "local predictor: not deployed" in text
    assert "InferenceService: unreachable" in text


def test_json_carries_the_same_facts(gated_store, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    assert status.main(["--storage-root", str(gated_store.root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model_name"] == "ncf" and data["tracking_uri"] == gated_store.tracking_uri
    by_version = {v["version"]: v for v in data["versions"]}
    assert [by_version[str(i)]["decision"] for i in (1, 2, 3)] == ["first", "rejected", "promoted"]
    assert by_version["2"]["reason"].startswith("challenger") and "below the floor" in by_version["2"]["reason"]
    assert by_version["3"]["champion_version"] == "1" and by_version["1"]["champion_score"] is None
    for result in gated_store.results:
        assert by_version[result.version]["baseline_score"] == pytest.approx(result.baseline_score, abs=1e-6)
    assert by_version["4"]["train_run_id"] == gated_store.train_run_id
    assert by_version["4"]["partition_uri"].endswith("dt=2026-11-27") and by_version["4"]["git_commit"]
    assert data["champion"] in ("3", "4") and "champion" in by_version[data["champion"]]["aliases"]
    assert data["serving"]["kserve"]["state"] == "unreachable"


def test_serving_shows_the_version_the_local_predictor_reports(gated_store, capsys, monkeypatch, tmp_path):
    # A kubeconfig whose API server is a closed local port: "unreachable", quickly and without a trace.
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    config = deploy.DeployConfig(tracking_uri=gated_store.tracking_uri, port=free_port(count=2), timeout_s=120)
    result = deploy.run(config)
    pid = json.loads(deploy.state_path(config, gated_store.tracking_uri).read_text())["pid"]
    try:
        assert status.main(["--storage-root", str(gated_store.root)]) == 0
        text = capsys.readouterr().out
        assert f"local predictor: serving v{result.version} (champion) at {result.endpoint}, pid {pid}" in text
        (kserve,) = [ln for ln in text.splitlines() if "InferenceService:" in ln]
        assert kserve.startswith("  InferenceService: unreachable (") and "Traceback" not in text
    finally:
        deploy.stop_local_server(pid)
    assert status.main(["--storage-root", str(gated_store.root)]) == 0
    assert "local predictor: not running (GET http://127.0.0.1:" in capsys.readouterr().out


def test_a_missing_store_is_one_error_line_and_creates_nothing(tmp_path, capsys):
    assert status.main(["--storage-root", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sqlite:///") and "no MLflow store there yet" in err and err.count("\n") == 1
    assert not (tmp_path / "nothing").exists()
