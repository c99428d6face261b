"""Synthetic generator: deterministic, structured (tastes, power-law popularity), written by Spark or, one file
of events, in process: the same rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ncf.errors import UserError
from spark.generate import (
    EVENT_TYPES,
    EventModel,
    GenerateConfig,
    RetailQuirks,
    _engine,
    order_lines,
    resolve_sizes,
    run,
)


def _events(num_events=200_000, seed=7, **sizes):
    world = resolve_sizes(GenerateConfig(output_uri="unused", num_events=num_events, seed=seed, **sizes))
    return world, pd.DataFrame(EventModel(world).events(np.arange(num_events)))


def test_event_is_a_pure_function_of_seed_and_id():
    world, events = _events(50_000)
    model = EventModel(world)
    again = pd.DataFrame(model.events(np.arange(50_000)[::-1].copy())).iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(events, again)
    _, other_seed = _events(50_000, seed=8)
    assert not events.equals(other_seed)


def test_shape_of_the_log():
    world, events = _events(200_000)
    assert (world.num_users, world.num_items) == (3333, 1333)
    assert set(events.event_type) == set(EVENT_TYPES)
    shares = events.event_type.value_counts(normalize=True)
    assert shares["view"] > shares["cart"] > shares["purchase"] > 0.01
    span = events.ts.max() - events.ts.min()
    assert 29 * 86_400 < span <= 30 * 86_400
    assert events.user_id.between(0, world.num_users - 1).all() and events.item_id.between(0, world.num_items - 1).all()


def test_power_law_popularity():
    _, events = _events(200_000)
    counts = events.item_id.value_counts().to_numpy()
    top_1_percent = counts[: len(counts) // 100].sum() / counts.sum()
    assert top_1_percent > 0.10  # uniform would be 0.01


def test_users_have_tastes_a_model_can_learn():
    # most of a user's events fall in three topics; a taste-less world would give about 3 / num_topics
    world, events = _events(200_000)
    events["topic"] = EventModel(world).topic_of_item[events.item_id]
    top3_share = events.groupby("user_id").topic.apply(lambda t: t.value_counts().iloc[:3].sum() / len(t)).mean()
    assert world.num_topics >= 8 and top3_share > 0.75


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="--num-events 0: must be positive"):
        resolve_sizes(GenerateConfig(output_uri="x", num_events=0))
    with pytest.raises(UserError, match="--start-date"):
        resolve_sizes(GenerateConfig(output_uri="x", start_date="01/02/2026"))


@pytest.mark.spark
def test_run_writes_the_same_log_whatever_the_partitioning(spark, tmp_path):
    first = run(GenerateConfig(output_uri=str(tmp_path / "a"), num_events=20_000, num_files=1, engine="spark"))
    run(GenerateConfig(output_uri=str(tmp_path / "b"), num_events=20_000, num_files=3))
    assert (tmp_path / "a" / "_SUCCESS").exists() and len(list((tmp_path / "b").glob("*.parquet"))) == 3
    a = pd.read_parquet(tmp_path / "a").sort_values(["ts", "user_id", "item_id"]).reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "b").sort_values(["ts", "user_id", "item_id"]).reset_index(drop=True)
    assert len(a) == 20_000 == first.num_events
    assert list(a.columns) == ["user_id", "item_id", "event_type", "ts"]
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.spark
def test_the_local_engine_writes_the_rows_spark_writes_in_the_same_order(spark, tmp_path):
    sizes = {"num_events": 30_000, "num_users": 700, "num_items": 900, "seed": 3}
    on_spark = run(GenerateConfig(output_uri=str(tmp_path / "spark"), engine="spark", **sizes))
    local = run(GenerateConfig(output_uri=str(tmp_path / "local"), **sizes))  # auto: one file, no master
    assert [p.name for p in sorted((tmp_path / "local").iterdir())] == ["_SUCCESS", "part-00000.snappy.parquet"]
    assert (local.num_rows, local.num_users, local.num_items) == (on_spark.num_rows, 700, 900)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local"), pd.read_parquet(tmp_path / "spark"))


@pytest.mark.parametrize("flags, needs", [
    ({"style": "retail"}, "--style retail"),
    ({"output_format": "csv"}, "--output-format csv"),
    ({"num_files": 2}, "2 files"),
    ({"num_events": 2_000_001}, "2 files"),
])
def test_the_local_engine_refuses_what_only_spark_writes(tmp_path, flags, needs):
    config = GenerateConfig(output_uri=str(tmp_path / "out"), engine="local", **{"num_events": 1000, **flags})
    with pytest.raises(UserError, match=f"--engine local writes one Parquet file of events .*{needs}"):
        run(config)
    assert not (tmp_path / "out").exists()


def test_auto_generates_locally_only_a_one_file_events_log_without_a_master():
    def engine(**flags):
        config = GenerateConfig(output_uri="unused", **{"num_events": 1000, **flags})
        return _engine(config, config.output_format if config.output_format != "auto" else "parquet",
                       config.num_files or 1)

    assert engine() == "local" and engine(engine="spark") == "spark"
    assert engine(master="spark://127.0.0.1:7077") == "spark" and engine(output_format="jsonl") == "spark"
    assert engine(num_files=3) == "spark"


@pytest.mark.spark
def test_run_writes_jsonl(spark, tmp_path):
    run(GenerateConfig(output_uri=str(tmp_path / "j"), num_events=1000, output_format="jsonl"))
    files = list((tmp_path / "j").glob("*.jsonl"))
    assert files and sum(len(pd.read_json(f, lines=True)) for f in files) == 1000


# --- the retail order-line log --------------------------------------------------------------------------------

QUIRKS = RetailQuirks(guest_fraction=0.25, cancel_fraction=0.02, return_fraction=0.01)


def _order_lines(num_events=100_000, seed=7):
    world = resolve_sizes(GenerateConfig(output_uri="unused", num_events=num_events, seed=seed))
    return world, pd.DataFrame(order_lines(EventModel(world), np.arange(num_events), QUIRKS))


def test_order_lines_are_a_pure_function_of_seed_and_event():
    world, lines = _order_lines(20_000)
    shuffled = np.random.default_rng(0).permutation(20_000)
    again = pd.DataFrame(order_lines(EventModel(world), shuffled, QUIRKS))
    key = ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate"]
    pd.testing.assert_frame_equal(lines.sort_values(key).reset_index(drop=True),
                                  again.sort_values(key).reset_index(drop=True))


def test_order_lines_carry_the_retail_quirks():
    world, lines = _order_lines()
    cancelled = lines.InvoiceNo.str.startswith("C")
    returns = (lines.Quantity < 0) & ~cancelled
    postage = lines.StockCode == "POST"
    assert (lines.Quantity[cancelled] < 0).all() and (lines.Quantity[~cancelled & ~returns] > 0).all()
    assert 0.015 < cancelled.mean() < 0.025 and 0.006 < returns.mean() < 0.014 and 0.04 < postage.mean() < 0.06
    orders = lines[~cancelled].groupby("InvoiceNo").CustomerID.agg(lambda c: c.isna().all() or c.notna().all())
    assert orders.all()  # a guest checkout is a whole order without a CustomerID
    guest_orders = lines[~cancelled].groupby("InvoiceNo").CustomerID.first().isna().mean()
    assert 0.2 < guest_orders < 0.3
    bought = lines[~cancelled & ~returns & ~postage & lines.CustomerID.notna()]
    repeats = bought.groupby(["CustomerID", "StockCode"]).size()
    assert (repeats > 1).mean() > 0.1  # repeat purchases of an item
    assert bought.duplicated(["InvoiceNo", "StockCode"]).any()  # the same item twice on one order
    assert lines.Description[~postage].str.contains(",").all()  # descriptions need CSV quoting
    days = pd.to_datetime(lines.InvoiceDate)
    assert (days.dt.strftime("%Y-%m-%d") == lines.day).all()
    assert days.max() < pd.Timestamp("2026-01-01") + pd.Timedelta(days=30)


@pytest.mark.spark
def test_run_writes_a_retail_log_in_daily_csv_files(spark, tmp_path):
    result = run(GenerateConfig(output_uri=str(tmp_path / "retail"), num_events=5_000, days=5, style="retail"))
    files = sorted(p.name for p in (tmp_path / "retail").iterdir())
    assert files == ["2026-01-01.csv", "2026-01-02.csv", "2026-01-03.csv", "2026-01-04.csv", "2026-01-05.csv",
                     "_SUCCESS"]
    frames = {name: pd.read_csv(tmp_path / "retail" / name, dtype={"CustomerID": "string"}) for name in files[:-1]}
    assert list(frames["2026-01-01.csv"].columns) == [
        "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
    for name, frame in frames.items():
        assert frame.InvoiceDate.str.startswith(name[:10]).all() and frame.InvoiceDate.is_monotonic_increasing
    assert sum(len(f) for f in frames.values()) == result.num_rows > result.num_events == 5_000
    assert pd.concat(frames.values()).CustomerID.isna().any()  # guests: an empty field, not a quoted ""
