"""Input readers: every format, timestamp flavours, bad-row accounting and the messages a user sees."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ncf.errors import UserError
from spark.readers import ColumnMapping, detect_format, read_interactions

pytestmark = pytest.mark.spark

JAN_2 = 1704164645  # 2024-01-02T03:04:05Z


def read(spark, tmp_path, path, **kwargs):
    result = read_interactions(spark, path, str(tmp_path / "pairs"), source=str(path), **kwargs)
    rows = sorted(tuple(r) for r in result.pairs.collect())
    return result, rows


def test_movielens_u_data(spark, tmp_path, write_text):
    path = write_text("ml/u.data", "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n")
    result, rows = read(spark, tmp_path, path)
    assert result.format == "movielens"
    assert rows == [("1", "10", 881250949), ("1", "20", 881250950), ("2", "10", 881250951)]
    assert (result.num_rows, result.num_bad_rows, result.num_pairs) == (3, 0, 3)


def test_movielens_ratings_dat_found_inside_its_folder(spark, tmp_path, write_text):
    write_text("ml-1m/ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    result, rows = read(spark, tmp_path, tmp_path / "ml-1m")
    assert result.format == "movielens"
    assert rows == [("1", "1193", 978300760), ("1", "661", 978302109)]


def test_movielens_ratings_csv_with_header(spark, tmp_path, write_text):
    path = write_text("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n")
    result, rows = read(spark, tmp_path, path)
    assert result.format == "movielens"
    assert rows == [("1", "1", 964982703), ("1", "3", 964981247)]


def test_min_weight_keeps_liked_ratings_only(spark, tmp_path, write_text):
    path = write_text("u.data", "1\t10\t5\t100\n1\t20\t2\t101\n2\t10\t4\t102\n")
    result, rows = read(spark, tmp_path, path, min_weight=4)
    assert rows == [("1", "10", 100), ("2", "10", 102)]
    assert result.num_filtered_rows == 1 and result.num_bad_rows == 0


def test_generic_csv_with_mapping_and_mixed_timestamps(spark, tmp_path, write_text):
    path = write_text(
        "logs.csv",
        "customer,sku,when,kind\n"
        "a,x,1704164645,view\n"  # epoch seconds
        "a,y,1704164645000,cart\n"  # epoch millis
        "b,x,2024-01-02T03:04:05Z,view\n"  # ISO-8601 UTC
        "b,y,2024-01-02 04:04:05+01:00,purchase\n",  # ISO-8601 with offset
    )
    mapping = ColumnMapping(user="customer", item="sku", timestamp="when", event_type="kind")
    result, rows = read(spark, tmp_path, path, mapping=mapping)
    assert result.format == "csv"
    assert rows == [("a", "x", JAN_2), ("a", "y", JAN_2), ("b", "x", JAN_2), ("b", "y", JAN_2)]


def test_duplicates_collapse_to_the_first_interaction(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts\nu,i,300\nu,i,100\nu,i,200\nu,j,50\n")
    result, rows = read(spark, tmp_path, path)
    assert rows == [("u", "i", 100), ("u", "j", 50)]
    assert (result.num_events, result.num_pairs) == (4, 2)


def test_event_type_filter(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts,event_type\nu,i,1,view\nu,j,2,purchase\nv,i,3,cart\n")
    result, rows = read(spark, tmp_path, path, event_types=["cart", "purchase"])
    assert rows == [("u", "j", 2), ("v", "i", 3)]
    assert result.num_filtered_rows == 1


def test_parquet_directory_with_typed_columns(spark, tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    pd.DataFrame({"user_id": [1, 2], "item_id": [7, 8], "ts": [1704164645000, 1704164645]}).to_parquet(folder / "part-0.parquet")
    pd.DataFrame({"user_id": [3], "item_id": [7], "ts": pd.to_datetime(["2024-01-02T03:04:05Z"])}).astype(
        {"ts": "int64"}
    ).assign(ts=lambda d: d.ts // 10**9).to_parquet(folder / "part-1.parquet")
    (folder / "_SUCCESS").touch()
    result, rows = read(spark, tmp_path, folder)
    assert result.format == "parquet" and len(result.files) == 2
    assert rows == [("1", "7", JAN_2), ("2", "8", JAN_2), ("3", "7", JAN_2)]


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_parquet_timestamp_column(spark, tmp_path, unit):
    path = tmp_path / "e.parquet"
    frame = pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "ts": pd.to_datetime(["2024-01-02T03:04:05"])})
    frame.to_parquet(path, coerce_timestamps=unit if unit != "ns" else None, allow_truncated_timestamps=True)
    _, rows = read(spark, tmp_path, path)
    assert rows == [("u", "i", JAN_2)]


def test_jsonl_numbers_and_strings(spark, tmp_path, write_text):
    lines = [
        {"user_id": 1, "item_id": "a", "ts": 1704164645},
        {"user_id": "2", "item_id": "b", "ts": "2024-01-02T03:04:05Z", "extra": True},
    ]
    path = write_text("e.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    result, rows = read(spark, tmp_path, path)
    assert result.format == "jsonl"
    assert rows == [("1", "a", JAN_2), ("2", "b", JAN_2)]


def test_explicit_timestamp_unit(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts\nu,i,1704164645000\n")
    _, rows = read(spark, tmp_path, path, timestamp_unit="ms")
    assert rows == [("u", "i", JAN_2)]


def _bad_csv(write_text, good: int, bad_lines: list[str]):
    rows = [f"u{i % 7},i{i},{1700000000 + i}" for i in range(good)]
    return write_text("logs/events.csv", "user_id,item_id,ts\n" + "\n".join(rows + bad_lines) + "\n")


def test_bad_rows_below_threshold_are_counted_and_dropped(spark, tmp_path, write_text):
    path = _bad_csv(write_text, 400, ["u1,i1", ",i2,1700000000", "u3,i3,yesterday"])
    result, rows = read(spark, tmp_path, path)
    assert len(rows) == 400
    assert result.num_bad_rows == 3 and result.num_rows == 403
    assert result.bad_rows_by_reason == {
        "wrong number of fields": 1,
        "missing user id (user_id)": 1,
        "unparsable timestamp (ts)": 1,
    }


def test_bad_rows_over_threshold_name_the_file_and_show_a_row(spark, tmp_path, write_text):
    path = _bad_csv(write_text, 100, ["u1,i1,notatime", "u2,i2,alsonot"])
    with pytest.raises(UserError) as err:
        read(spark, tmp_path, path)
    message = str(err.value)
    assert message.startswith(f"{path}: 2 of 102 rows are malformed")
    assert "unparsable timestamp (ts)" in message and "'u1,i1,notatime'" in message or "'u2,i2,alsonot'" in message


def test_threshold_is_configurable(spark, tmp_path, write_text):
    path = _bad_csv(write_text, 100, ["u1,i1,notatime", "u2,i2,alsonot"])
    result, rows = read(spark, tmp_path, path, max_bad_fraction=0.05)
    assert len(rows) == 100 and result.num_bad_rows == 2


def test_wrong_arity_shows_the_raw_line(spark, tmp_path, write_text):
    path = _bad_csv(write_text, 10, ["u1,i1,1700000000,surplus"])
    with pytest.raises(UserError, match=r"wrong number of fields, e\.g\. row 'u1,i1,1700000000,surplus'"):
        read(spark, tmp_path, path)


def test_zero_valid_rows(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts\nu,i,never\n")
    with pytest.raises(UserError, match="malformed"):
        read(spark, tmp_path, path, max_bad_fraction=1.0)


def test_empty_input(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts\n")
    with pytest.raises(UserError, match="no rows to read"):
        read(spark, tmp_path, path)


def test_missing_column_names_it_and_the_flag(spark, tmp_path, write_text):
    path = write_text("e.csv", "user,item_id,ts\nu,i,1\n")
    with pytest.raises(UserError, match=r"missing user column 'user_id' \(columns: user, item_id, ts\); map it with --user-col"):
        read(spark, tmp_path, path)


def test_missing_file(spark, tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        read(spark, tmp_path, tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "name, requested, expected",
    [("x.parquet", "auto", "parquet"), ("x.jsonl.gz", "auto", "jsonl"), ("x.tsv", "auto", "csv"), ("u.data", "auto", "movielens")],
)
def test_detect_format(tmp_path, name, requested, expected):
    path = tmp_path / name
    path.write_text("")
    assert detect_format(path, requested, str(path)) == expected


def test_unknown_format(tmp_path):
    path = tmp_path / "events.xlsx"
    path.write_text("")
    with pytest.raises(UserError, match=r"cannot tell the input format .*pass --input-format"):
        detect_format(path, "auto", str(path))
    with pytest.raises(UserError, match="unknown input format 'avro'"):
        detect_format(path, "avro", str(path))
