"""Immutable partitions: the content fingerprint, re-runs of a date, and two runs of one date at once."""

from __future__ import annotations

import threading
import time

import pytest

from ncf import storage
from ncf.errors import UserError
from spark import preprocess
from spark.preprocess import PreprocessConfig, partition_fingerprint, run

pytestmark = pytest.mark.spark


def _log(write_text, name: str, users: int = 30, items: int = 12, shift: int = 0):
    """A small event log every user and item of which passes the default filters (5 / 5)."""
    lines = [f"u{u},i{(u + k) % items},{1700000000 + 60 * k + shift}" for u in range(users) for k in range(8)]
    return write_text(name, "user_id,item_id,ts\n" + "\n".join(lines) + "\n")


def _config(input_uri, root, **overrides) -> PreprocessConfig:
    return PreprocessConfig(input_uri=str(input_uri), storage_root=str(root), run_date="2026-02-01",
                            num_test_negatives=3, **overrides)


def _snapshot(uri) -> dict:
    """Every file of a partition with its bytes and modification time: 'left as is' means all of these."""
    from pathlib import Path

    return {p.relative_to(uri): (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(uri).rglob("*") if p.is_file()}


def test_fingerprint_depends_on_content_not_on_row_order_or_file_layout(spark, tmp_path):
    from pyspark.sql import functions as F

    rows = [(u, i, 1000 + u * i, 1, 1.0) for u in range(40) for i in range(5)]
    frame = spark.createDataFrame(rows, "user_idx int, item_idx int, ts long, count int, weight float")
    layouts = {"one": frame.coalesce(1), "many": frame.orderBy(F.rand(3)).repartition(4)}
    for name, table in layouts.items():
        for sub in preprocess.FINGERPRINT_TABLES:
            table.write.parquet(str(tmp_path / name / sub))
    one, tables = partition_fingerprint(spark, str(tmp_path / "one"))
    assert partition_fingerprint(spark, str(tmp_path / "many"))[0] == one
    assert tables["train"]["rows"] == 200 and len(one) == 64
    changed = frame.withColumn("ts", F.when(F.col("user_idx") == 7, F.col("ts") + 1).otherwise(F.col("ts")))
    changed.write.parquet(str(tmp_path / "changed" / "train"))
    for sub in preprocess.FINGERPRINT_TABLES[1:]:
        frame.write.parquet(str(tmp_path / "changed" / sub))
    assert partition_fingerprint(spark, str(tmp_path / "changed"))[0] != one


def test_rerunning_a_date_keeps_identical_content_and_refuses_other_content(spark, tmp_path, write_text):
    root = tmp_path / "root"
    first = run(_config(_log(write_text, "a.csv"), root))
    uri = first.partition_uri
    assert first.outcome == "published" and storage.read_json(f"{uri}/stats.json")["fingerprint"] == first.stats["fingerprint"]
    before = _snapshot(uri)

    again = run(_config(_log(write_text, "copy.csv"), root))  # the same log under another name
    assert again.outcome == "identical" and again.stats == storage.read_json(f"{uri}/stats.json")
    assert _snapshot(uri) == before

    other = _log(write_text, "b.csv", shift=5)
    with pytest.raises(UserError) as err:
        run(_config(other, root))
    assert str(err.value).startswith(
        f"{uri}: the partition exists with different content (fingerprint {first.stats['fingerprint'][:12]}; "
        "this run's "
    ) and "Pass --overwrite true (pipeline parameter overwrite=true) to replace it" in str(err.value)
    assert _snapshot(uri) == before

    replaced = run(_config(other, root, overwrite=True))
    assert replaced.outcome == "replaced" and replaced.stats["fingerprint"] != first.stats["fingerprint"]
    assert storage.read_json(f"{uri}/stats.json")["fingerprint"] == replaced.stats["fingerprint"]


def _run_together(configs, monkeypatch) -> list[str]:
    """Run preprocess for each config in its own thread, all reaching publish together; returns each run's
    outcome or error message, in config order."""
    gate = threading.Barrier(len(configs), timeout=600)
    original = preprocess.partition_fingerprint

    def fingerprint_then_wait(*args, **kwargs):
        result = original(*args, **kwargs)
        gate.wait()  # every run has read what the date held and computed its content: now all publish
        return result

    monkeypatch.setattr(preprocess, "partition_fingerprint", fingerprint_then_wait)
    results: list = [None] * len(configs)

    def one(k):
        try:
            results[k] = run(configs[k]).outcome
        except UserError as exc:
            results[k] = str(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(configs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    monkeypatch.setattr(preprocess, "partition_fingerprint", original)
    return results


def test_two_runs_of_one_date_at_once_publish_once(spark, tmp_path, write_text, monkeypatch):
    root = tmp_path / "root"
    logs = [_log(write_text, "a.csv"), _log(write_text, "b.csv", shift=5)]
    results = _run_together([_config(log, root) for log in logs], monkeypatch)
    assert sorted(r if r == "published" else "refused" for r in results) == ["published", "refused"], results
    loser = next(r for r in results if r != "published")
    assert "another run published this date while this one ran" in loser and "nothing written" in loser
    winner = logs[results.index("published")]
    assert run(_config(winner, root)).outcome == "identical"  # the winner's content is what was published

    # overwriting at once: both saw the same partition; only one replaces it
    results = _run_together([_config(log, root, overwrite=True) for log in (*logs, logs[0])], monkeypatch)
    assert results.count("replaced") + results.count("identical") >= 1
    assert results.count("replaced") <= 1, results
    assert all(r in ("replaced", "identical") or "another run published this date" in r for r in results), results


def test_two_identical_runs_at_once_publish_once(spark, tmp_path, write_text, monkeypatch):
    root = tmp_path / "root"
    log = _log(write_text, "a.csv")
    assert sorted(_run_together([_config(log, root), _config(log, root)], monkeypatch)) == ["identical", "published"]
    assert sorted(p.name for p in (root / "data").iterdir()) == [".locks", "dt=2026-02-01"]


def test_the_s3_lock_lets_one_holder_in_at_a_time(s3_bucket):
    uri = f"s3://{s3_bucket}/platform/data/dt=2026-02-01"
    events: list[str] = []

    def hold(name: str, seconds: float):
        with storage.exclusive(uri, timeout_s=60):
            events.append(f"{name} in")
            time.sleep(seconds)
            events.append(f"{name} out")

    first = threading.Thread(target=hold, args=("a", 1.5))
    first.start()
    time.sleep(0.5)
    hold("b", 0)
    first.join()
    assert events == ["a in", "a out", "b in", "b out"]
    assert not storage.exists(f"s3://{s3_bucket}/platform/data/.locks/dt=2026-02-01")  # released


def test_an_s3_lock_left_by_a_dead_run_is_broken_after_it_goes_stale(s3_bucket):
    import boto3

    uri = f"s3://{s3_bucket}/platform/data/dt=2026-02-01"
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="platform/data/.locks/dt=2026-02-01", Body=b"{}")
    with pytest.raises(UserError, match=r"another run has held this lock for \d+s \(waited 1s\)"):
        with storage.exclusive(uri, timeout_s=1):
            pass
    time.sleep(1.1)
    with storage.exclusive(uri, timeout_s=5, stale_after_s=1):
        pass


def test_with_a_scratch_dir_the_tables_are_written_there_and_published_from_it(spark, tmp_path, write_text):
    log, scratch = _log(write_text, "a.csv"), tmp_path / "shared-scratch"
    scratch.mkdir()
    first = run(_config(log, tmp_path / "root", scratch_dir=str(scratch)))
    assert first.outcome == "published" and list(scratch.iterdir()) == []  # nothing left behind
    assert run(_config(log, tmp_path / "root")).outcome == "identical"  # the same partition as without one
