"""The preprocessing job: id mapping, split and filter rules, the partition contract, atomic re-runs, S3, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ncf import contracts
from ncf.data import load_partition
from ncf.errors import UserError
from spark import generate
from spark.preprocess import (
    PreprocessConfig,
    filter_min_interactions,
    id_counts,
    index_ids,
    main,
    run,
    split_leave_one_out,
)

pytestmark = pytest.mark.spark
REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable


def _config(input_uri, root, run_date="2026-01-01", **overrides) -> PreprocessConfig:
    return PreprocessConfig(input_uri=str(input_uri), storage_root=str(root), run_date=run_date, **overrides)


def _check_partition(partition, num_negatives=99):
    """Every rule of the partition contract that holds for any input."""
    train = set(zip(partition.train_users.tolist(), partition.train_items.tolist(), strict=True))
    assert len(train) == len(partition.train_users), "duplicate train interactions"
    assert set(np.unique(partition.train_users)) | set(partition.test_users.tolist()) == set(range(partition.num_users))
    assert np.all(np.diff(partition.test_users) > 0), "one test row per user"
    history: dict[int, set[int]] = {}
    for u, i in train:
        history.setdefault(u, set()).add(i)
    for u, i, negatives in zip(partition.test_users, partition.test_items, partition.test_negatives, strict=True):
        assert (u, i) not in train, "test interaction in train"
        seen = history.get(int(u), set()) | {int(i)}
        assert len(set(negatives.tolist())) == num_negatives and not seen & set(negatives.tolist())


@pytest.fixture(scope="module")
def events_dir(spark, tmp_path_factory):
    """A small synthetic log (Parquet, the generator's default layout)."""
    path = tmp_path_factory.mktemp("raw") / "events"
    generate.run(generate.GenerateConfig(output_uri=str(path), num_events=20_000, num_users=400, num_items=300))
    return path


# --- rules on tiny frames -------------------------------------------------------------------------------


def test_index_ids_are_contiguous_in_natural_order(spark, tmp_path):
    ids = ["10", "2", "b", "1", "a", "10", "003"]
    rows = [(u, f"i{k % 3}", 0) for k, u in enumerate(ids)]
    pairs = spark.createDataFrame(rows, "user_id string, item_id string, ts long").repartition(3)
    users, num_users, items, num_items = index_ids(id_counts(pairs), str(tmp_path), str(tmp_path / "u"), str(tmp_path / "i"))
    assert (num_users, num_items) == (6, 3)
    assert sorted((r.user_idx, r.user_id) for r in users.collect()) == [(0, "1"), (1, "2"), (2, "a"), (3, "b"), (4, "10"), (5, "003")]
    assert sorted((r.item_idx, r.item_id) for r in items.collect()) == [(0, "i0"), (1, "i1"), (2, "i2")]


def test_leave_one_out_latest_is_test_ties_break_to_larger_item(spark):
    rows = [
        (0, 5, 100), (0, 7, 300), (0, 9, 200),  # latest: item 7
        (1, 3, 500), (1, 8, 500), (1, 4, 100),  # tie at ts 500: item 8
        (2, 6, 100),  # a single interaction: no test row, stays in train
    ]
    interactions = spark.createDataFrame(rows, "user_idx int, item_idx int, ts long")
    train, test = split_leave_one_out(interactions, num_items=200, num_negatives=99)
    assert sorted(map(tuple, test.collect())) == [(0, 7), (1, 8)]
    assert sorted(map(tuple, train.collect())) == [(0, 5, 100), (0, 9, 200), (1, 3, 500), (1, 4, 100), (2, 6, 100)]


def test_users_without_enough_unseen_items_keep_everything_in_train(spark):
    interactions = spark.createDataFrame([(0, i, i) for i in range(5)] + [(1, 0, 0), (1, 1, 1)], "user_idx int, item_idx int, ts long")
    train, test = split_leave_one_out(interactions, num_items=8, num_negatives=4)
    assert [tuple(r) for r in test.collect()] == [(1, 1)]
    assert train.count() == 6


def test_min_interaction_filter_iterates_to_a_fixed_point(spark, tmp_path):
    # u3 has 1 interaction -> dropped; then item c falls to 1 -> dropped; then u2 falls to 1 -> dropped.
    rows = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u3", "c"), ("u4", "a"), ("u4", "b")]
    pairs = spark.createDataFrame([(u, i, 0) for u, i in rows], "user_id string, item_id string, ts long")
    kept, counts, passes, count = filter_min_interactions(pairs, len(rows), 2, 2, str(tmp_path))
    assert sorted((r.user_id, r.item_id) for r in kept.collect()) == [("u1", "a"), ("u1", "b"), ("u4", "a"), ("u4", "b")]
    assert count == 4 and passes >= 2
    assert sorted(map(tuple, counts.collect())) == [(0, "u1", 2), (0, "u4", 2), (1, "a", 2), (1, "b", 2)]
    _, counts_off, passes_off, count_off = filter_min_interactions(pairs, len(rows), 1, 0, str(tmp_path))
    assert (passes_off, count_off, counts_off.count()) == (0, len(rows), 4 + 3)


# --- the job end to end ----------------------------------------------------------------------------------


def test_partition_contract_on_synthetic_logs(spark, events_dir, tmp_path):
    result = run(_config(events_dir, tmp_path / "root", num_test_negatives=50))
    uri = result.partition_uri
    assert uri == str(tmp_path / "root" / "data" / "dt=2026-01-01")
    assert sorted(os.listdir(uri)) == ["_SUCCESS", "item_map", "stats.json", "test", "test_negatives", "train", "user_map"]
    schemas = {name: pd.read_parquet(Path(uri) / name).dtypes.astype(str).to_dict() for name in ("train", "test", "user_map")}
    assert schemas == {
        "train": {"user_idx": "int32", "item_idx": "int32", "ts": "int64", "count": "int32", "weight": "float32"},
        "test": {"user_idx": "int32", "item_idx": "int32"},
        "user_map": {"user_id": "object", "user_idx": "int32"},
    }
    partition = load_partition(uri)
    _check_partition(partition, num_negatives=50)
    stats = json.loads((Path(uri) / "stats.json").read_text())
    assert stats["schema_version"] == 1 and stats["seed"] == 42 and stats["num_test_negatives"] == 50
    assert stats["num_users"] == partition.num_users and stats["num_items"] == partition.num_items
    assert stats["num_train"] == len(partition.train_users) and stats["num_test"] == len(partition.test_users)
    assert stats["inputs"][0]["rows"] == 20_000 and stats["inputs"][0]["format"] == "parquet"
    assert stats["num_unique_interactions"] < 20_000  # repeated views of the same item collapse
    assert set(stats["stage_seconds"]) >= {"read_deduplicate", "filter", "index", "split", "negatives"}


def test_failed_runs_change_nothing_and_a_rerun_replaces_atomically(spark, events_dir, tmp_path, monkeypatch, write_text):
    root = tmp_path / "root"
    run(_config(events_dir, root, "2026-01-01", num_test_negatives=20))
    run(_config(events_dir, root, "2026-01-02", num_test_negatives=20))

    def snapshot(date=None):
        base = root / "data" / f"dt={date}" if date else root
        return {p.relative_to(base): p.read_bytes() for p in base.rglob("*") if p.is_file()}

    before = snapshot()

    from spark import negatives

    def crash(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(negatives, "test_negatives", crash)  # fails after train/test were written
    with pytest.raises(RuntimeError, match="worker lost"):
        run(_config(events_dir, root, "2026-01-02", num_test_negatives=30))
    monkeypatch.undo()
    bad = write_text("bad.csv", "user_id,item_id,ts\nu,i,never\n")
    with pytest.raises(UserError):
        run(_config(bad, root, "2026-01-02"))
    assert snapshot() == before

    day_one = snapshot("2026-01-01")
    run(_config(events_dir, root, "2026-01-02", num_test_negatives=30, overwrite=True))
    assert contracts.complete_partitions(root) == ["2026-01-01", "2026-01-02"]
    assert load_partition(contracts.partition_uri(root, "2026-01-02")).test_negatives.shape[1] == 30
    assert snapshot("2026-01-01") == day_one  # other dates untouched
    assert sorted(os.listdir(root / "data")) == [".locks", "dt=2026-01-01", "dt=2026-01-02"]  # no staging leftovers


def test_s3_input_and_output_through_moto(spark, s3_bucket, tmp_path, write_text):
    import boto3

    rng = np.random.default_rng(0)
    lines = [f"{u}\t{i}\t3\t{880000000 + k}" for k, (u, i) in enumerate({(int(u), int(i)) for u, i in rng.integers(1, 60, (2000, 2))})]
    local = write_text("u.data", "\n".join(lines) + "\n")
    boto3.client("s3").upload_file(str(local), s3_bucket, "raw/ml/u.data")
    root = f"s3://{s3_bucket}/platform"
    result = run(_config(f"s3://{s3_bucket}/raw/ml/u.data", root, num_test_negatives=10, min_item_interactions=0))
    assert result.partition_uri == f"{root}/data/dt=2026-01-01"
    assert contracts.complete_partitions(root) == ["2026-01-01"]
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="platform/")["Contents"]}
    assert "platform/data/dt=2026-01-01/_SUCCESS" in keys and "platform/data/dt=2026-01-01/stats.json" in keys
    partition = load_partition(result.partition_uri)
    _check_partition(partition, num_negatives=10)
    assert partition.stats["inputs"][0]["uri"] == f"s3://{s3_bucket}/raw/ml/u.data"
    assert len(partition.train_users) + len(partition.test_users) == len(lines)


# --- MovieLens-100K: the numbers the issue fixes ------------------------------------------------------


@pytest.mark.slow
def test_ml100k_integration(spark, ml100k_path, tmp_path):
    config = _config(ml100k_path, tmp_path / "a", min_user_interactions=0, min_item_interactions=0, seed=7)
    partition = load_partition(run(config).partition_uri)
    assert (partition.num_users, partition.num_items) == (943, 1682)
    assert len(partition.train_users) == 99_057 and len(partition.test_users) == 943
    assert partition.test_negatives.shape == (943, 99)
    assert np.array_equal(partition.test_users, np.arange(943))
    assert set(np.unique(partition.train_items)) | set(partition.test_items.tolist()) == set(range(1682))
    # natural id order: raw id "1" is index 0
    assert partition.user_ids[0] == "1" and partition.item_ids[-1] == "1682"
    _check_partition(partition)
    raw = pd.read_csv(ml100k_path, sep="\t", names=["u", "i", "r", "ts"])
    latest = raw.sort_values(["ts", "i"]).groupby("u").tail(1).set_index("u")["i"]
    assert [int(partition.item_ids[i]) for i in partition.test_items] == [latest[int(u)] for u in partition.user_ids]

    again = load_partition(run(_config(ml100k_path, tmp_path / "b", min_user_interactions=0, min_item_interactions=0, seed=7)).partition_uri)
    for name in ("train_users", "train_items", "train_ts", "test_users", "test_items", "test_negatives", "user_ids", "item_ids"):
        ours, theirs = getattr(partition, name), getattr(again, name)
        if name.startswith("train"):  # Parquet row order is not part of the contract
            order, other = np.lexsort((partition.train_items, partition.train_users)), np.lexsort((again.train_items, again.train_users))
            ours, theirs = ours[order], theirs[other]
        assert np.array_equal(ours, theirs), name


# --- what a user sees on the command line -------------------------------------------------------------


def _cli(*args, timeout=240):
    env = {**os.environ, "PYSPARK_PYTHON": PYTHON}
    return subprocess.run(
        [PYTHON, "-m", "ncfctl", "preprocess", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input-uri", "/nonexistent/u.data"], "error: /nonexistent/u.data: no such file or directory"),
        (["--input-uri", "{tmp}/events.xlsx"], "error: {tmp}/events.xlsx: cannot tell the input format from the file names ['events.xlsx']; pass --input-format"),
        (["--input-uri", "{tmp}/events.xlsx", "--run-date", "2026-13-01"], "error: --run-date '2026-13-01': expected YYYY-MM-DD"),
    ],
)
def test_cli_bad_input_fails_fast_with_one_line(tmp_path, args, message):
    (tmp_path / "events.xlsx").write_text("x")
    result = _cli(*[a.format(tmp=tmp_path) for a in args], "--storage-root", str(tmp_path / "root"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message.format(tmp=tmp_path))
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "root").exists()


def test_cli_malformed_rows_message(tmp_path):
    rows = "\n".join(f"u{k},i{k},1700000000" for k in range(50))
    bad = tmp_path / "events.csv"
    bad.write_text(f"user_id,item_id,ts\n{rows}\nu9,i9,2024-13-45\n")
    result = _cli("--input-uri", str(bad), "--storage-root", str(tmp_path / "root"), "--run-date", "2026-01-01")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error == [
        f"error: {bad}: 1 of 51 rows are malformed (1.96% > --max-bad-fraction 0.01); most common: "
        "unparsable timestamp (ts), e.g. row 'u9,i9,2024-13-45'"
    ]
    assert not (tmp_path / "root" / "data" / "dt=2026-01-01").exists()


def test_main_prints_a_summary(spark, events_dir, tmp_path, capsys):
    assert main(["--input-uri", str(events_dir), "--storage-root", str(tmp_path), "--run-date", "2026-02-03", "--num-test-negatives", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path}/data/dt=2026-02-03: ") and "users" in out


@pytest.mark.slow
def test_spark_submit_runs_the_same_job(events_dir, tmp_path):
    submit = Path(PYTHON).parent / "spark-submit"
    if not submit.exists():
        pytest.skip("spark-submit not installed next to the interpreter")
    env = {**os.environ, "PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON}
    result = subprocess.run(
        [str(submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false", "spark/preprocess.py",
         "--input-uri", str(events_dir), "--storage-root", str(tmp_path), "--run-date", "2026-03-04", "--num-test-negatives", "10"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    partition = load_partition(contracts.partition_uri(tmp_path, "2026-03-04"))
    assert partition.stats["spark_master"] == "local[1]"
    _check_partition(partition, num_negatives=10)


# --- a retailer's log, read through an input schema file -------------------------------------------------------

RETAIL_SCHEMA = REPO / "docs" / "examples" / "retail" / "input-schema.yaml"


@pytest.fixture(scope="module")
def retail_dir(spark, tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "retail"
    generate.run(generate.GenerateConfig(output_uri=str(path), num_events=12_000, num_users=300, num_items=150,
                                         days=10, style="retail"))
    return path


def _expected_retail_counts(folder: Path) -> dict[str, int]:
    """What the example schema must count, computed from the raw files with pandas (not with the job's code)."""
    lines = pd.concat([pd.read_csv(f, dtype=str) for f in sorted(folder.glob("*.csv"))])
    quantity = lines.Quantity.astype(int)
    guest = lines.CustomerID.isna()
    cancelled = ~guest & lines.InvoiceNo.str.startswith("C")
    returned = ~guest & ~cancelled & (quantity < 0)
    postage = ~guest & ~cancelled & ~returned & (lines.StockCode == "POST")
    kept = lines[~(guest | cancelled | returned | postage)]
    return {"rows": len(lines), "anonymous_rows": int(guest.sum()), "cancelled_rows": int(cancelled.sum()),
            "returned_rows": int(returned.sum()), "filtered_rows": int(postage.sum()), "kept_rows": len(kept),
            "pairs": len(kept.drop_duplicates(["CustomerID", "StockCode"]))}


def test_a_retail_log_through_the_schema_file_counts_each_quirk(spark, retail_dir, tmp_path, capsys):
    assert main(["--input-uri", str(retail_dir), "--storage-root", str(tmp_path), "--run-date", "2026-01-11",
                 "--input-schema-uri", str(RETAIL_SCHEMA), "--num-test-negatives", "20"]) == 0
    summary = capsys.readouterr().out
    stats = json.loads((tmp_path / "data" / "dt=2026-01-11" / "stats.json").read_text())
    read, expected = stats["inputs"][0], _expected_retail_counts(retail_dir)
    assert read["files"] == 10 and read["bad_rows"] == 0
    assert {k: read[k] for k in expected if k != "pairs"} == {k: v for k, v in expected.items() if k != "pairs"}
    assert min(read["anonymous_rows"], read["cancelled_rows"], read["returned_rows"], read["filtered_rows"]) > 0
    assert read["filtered_rows_by_rule"] == {
        "StockCode not_in [POST, DOT, M, D, C2, ... (11 values)]": expected["filtered_rows"]}
    assert stats["num_unique_interactions"] == expected["pairs"]
    assert stats["num_repeat_events"] == expected["kept_rows"] - expected["pairs"] > 0
    assert stats["input_schema"]["uri"] == str(RETAIL_SCHEMA) and stats["input_schema"]["columns"]["user"] == "CustomerID"
    assert (f"{read['anonymous_rows']:,} anonymous (no user id), {read['cancelled_rows']:,} cancelled, "
            f"{read['returned_rows']:,} returned, {read['filtered_rows']:,} filtered, 0 malformed; "
            f"{stats['num_repeat_events']:,} repeats collapsed into {expected['pairs']:,} interactions") in summary
    partition = load_partition(tmp_path / "data" / "dt=2026-01-11")
    assert all(user.isdigit() for user in partition.user_ids) and "POST" not in set(partition.item_ids)
    train = pd.read_parquet(tmp_path / "data" / "dt=2026-01-11" / "train")
    assert (train["count"] >= 1).all() and (train["weight"] >= train["count"]).all()  # units bought, >= 1 a line
    assert (train["count"] > 1).any()


def test_the_anonymous_limit_names_the_file_setting_or_the_flag(spark, retail_dir, tmp_path):
    schema = tmp_path / "strict.yaml"
    schema.write_text(RETAIL_SCHEMA.read_text().replace("max_anonymous_fraction: 0.4", "max_anonymous_fraction: 0.05"))
    with pytest.raises(UserError) as err:
        run(_config(retail_dir, tmp_path / "a", input_schema_uri=str(schema)))
    assert "have no user id (CustomerID) (" in str(err.value)
    assert f"> tolerance.max_anonymous_fraction in {schema} 0.05); check that columns.user in {schema} names" in str(err.value)
    assert "worst files: 2026-01-" in str(err.value)  # a count over ten daily files
    with pytest.raises(UserError, match=r"> --max-anonymous-fraction 0.01\)"):
        run(_config(retail_dir, tmp_path / "b", input_schema_uri=str(RETAIL_SCHEMA), max_anonymous_fraction=0.01))
    assert not (tmp_path / "a" / "data" / "dt=2026-01-01").exists()
