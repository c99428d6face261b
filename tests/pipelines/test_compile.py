"""`ncfctl compile`: both files into dist/, byte-identical on a rerun, refused when parity fails."""

from __future__ import annotations

import json

import pytest
import yaml

from ncf.errors import UserError
from ncfctl.cli import main as ncfctl
from pipelines import compile as compile_cmd
from pipelines import parity


def test_ncfctl_compile_writes_kfp_ir_and_sagemaker_json(tmp_path, capsys):
    out = tmp_path / "dist"
    assert ncfctl(["compile", "--output-dir", str(out), "--param", "epochs=7"]) == 0
    kfp_text = (out / compile_cmd.KFP_FILE).read_text()
    sm_text = (out / compile_cmd.SAGEMAKER_FILE).read_text()
    spec = next(yaml.safe_load_all(kfp_text))
    assert spec["root"]["inputDefinitions"]["parameters"]["epochs"]["defaultValue"] == 7
    sm = json.loads(sm_text)
    assert {p["Name"]: p.get("DefaultValue") for p in sm["Parameters"]}["epochs"] == 7
    assert parity.check(kfp_text, sm, overrides={**compile_cmd.pipeline_params.load_file(
        compile_cmd.pipeline_params.DEFAULT_PARAMS_FILE), "epochs": 7}) == []
    assert "parity: same steps" in capsys.readouterr().out
    # deterministic: a second compile gives the same bytes
    assert ncfctl(["compile", "--output-dir", str(out), "--param", "epochs=7"]) == 0
    assert (out / compile_cmd.SAGEMAKER_FILE).read_text() == sm_text
    assert (out / compile_cmd.KFP_FILE).read_text() == kfp_text


def test_compile_refuses_a_local_storage_root_for_sagemaker(tmp_path, capsys):
    code = ncfctl(["compile", "--output-dir", str(tmp_path), "--param", "storage_root=runs/x"])
    assert code == 2
    assert "storage_root must be an s3:// URI" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_compile_writes_nothing_when_the_backends_drift(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cmd.parity, "check", lambda *a, **k: ["SageMaker: step 'x' is declared but missing"])
    with pytest.raises(UserError, match="not the same pipeline:\n  SageMaker: step 'x'"):
        compile_cmd.compile_all(tmp_path / "dist", {"storage_root": "s3://b/p", "input_uri": "s3://b/r",
                                                    "tracking_uri": "https://mlflow.example.com"})
    assert not (tmp_path / "dist").exists()
