"""bench/quality.py: any partition can be benched by name, every candidate and the baseline side by side."""

from __future__ import annotations

import re

import pytest

from bench.quality import main
from tests.tiny_data import make_partition, write_partition


def test_a_named_partition_is_benched_with_every_candidate_and_the_baseline(tmp_path):
    partition = make_partition(num_users=40, num_items=60, per_user=8, num_neg=20, seed=4)
    uri = write_partition(partition, str(tmp_path / "data" / "dt=2026-12-07"))
    results = tmp_path / "RESULTS.md"
    assert main(["--datasets", "tiny", "--partition", f"tiny={uri}", "--candidates", "ease,ials",
                 "--results", str(results)]) == 0
    text = results.read_text()
    assert f"--partition tiny={uri}" in text and "### tiny: 40 users x 60 items" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "validation" not in line]
    labels = [row.split("|")[1].strip() for row in rows]
    assert any(label.startswith("ease") or label.startswith("**ease**") for label in labels), labels
    assert any(label.startswith("ials") or label.startswith("**ials**") for label in labels), labels
    assert labels[-1] == "popularity (baseline, not a candidate)"
    assert sum("(chosen;" in label for label in labels) == 1
    assert all(row.count("|") == 6 for row in rows)


@pytest.mark.parametrize(("argv", "message"), [
    (["--datasets", "grocery"], "unknown dataset 'grocery' (ml-100k, synthetic, or one named by --partition"),
    (["--datasets", "grocery", "--partition", "grocery"], "--partition 'grocery': expected NAME=URI"),
])
def test_bad_dataset_arguments_are_refused_before_any_work(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=re.escape(message)):
        main([*argv, "--data-dir", str(tmp_path / "none"), "--results", str(tmp_path / "RESULTS.md")])
    assert not (tmp_path / "RESULTS.md").exists() and not (tmp_path / "none").exists()
