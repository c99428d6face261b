"""Input readers: every format, timestamp flavours, bad-row accounting and the messages a user sees."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ncf.errors import UserError
from spark.input_schema import ColumnMapping, InputSchema, RowFilter
from spark.readers import detect_format, read_interactions

pytestmark = pytest.mark.spark

JAN_2 = 1704164645  # 2024-01-02T03:04:05Z


def read(spark, tmp_path, path, **schema):
    """(ReadResult, sorted (user, item, ts) rows) of reading `path` with an InputSchema of these fields."""
    result = read_interactions(spark, path, str(tmp_path / "pairs"), source=str(path), schema=InputSchema(**schema))
    rows = sorted((r.user_id, r.item_id, r.ts) for r in result.pairs.collect())
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
    result, rows = read(spark, tmp_path, path, columns=mapping)
    assert result.format == "csv"
    assert rows == [("a", "x", JAN_2), ("a", "y", JAN_2), ("b", "x", JAN_2), ("b", "y", JAN_2)]


def test_duplicates_collapse_to_the_first_interaction(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts\nu,i,300\nu,i,100\nu,i,200\nu,j,50\n")
    result, rows = read(spark, tmp_path, path)
    assert rows == [("u", "i", 100), ("u", "j", 50)]
    assert (result.num_events, result.num_pairs) == (4, 2)


def test_event_type_filter(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts,event_type\nu,i,1,view\nu,j,2,purchase\nv,i,3,cart\n")
    result, rows = read(spark, tmp_path, path, event_weights=(("cart", 1.0), ("purchase", 1.0)))
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


def _bad_csv(write_text, good: int, bad_lines: list[str], header: str = "user_id,item_id,ts", extra: str = ""):
    rows = [f"u{i % 7},i{i},{1700000000 + i}{extra}" for i in range(good)]
    return write_text("logs/events.csv", header + "\n" + "\n".join(rows + bad_lines) + "\n")


def test_bad_rows_below_threshold_are_counted_per_reason_and_dropped(spark, tmp_path, write_text):
    bad = ["u1,i1", "u2,i2,1700000000,surplus", "u3,i3,yesterday", "u4,,1700000000", ",i5,1700000000"]
    path = _bad_csv(write_text, 400, bad)
    result, rows = read(spark, tmp_path, path)
    assert len(rows) == 400
    assert (result.num_rows, result.num_bad_rows, result.num_anonymous_rows) == (405, 4, 1)
    assert result.bad_rows_by_reason == {
        "missing fields": 1,
        "extra fields": 1,
        "unparsable timestamp (ts)": 1,
        "missing item id (item_id)": 1,
    }


def test_bad_rows_over_threshold_name_the_file_and_show_a_row(spark, tmp_path, write_text):
    path = _bad_csv(write_text, 100, ["u1,i1,notatime", "u2,i2,alsonot"])
    with pytest.raises(UserError) as err:
        read(spark, tmp_path, path)
    message = str(err.value)
    assert message.startswith(f"{path}: 2 of 102 rows are malformed (1.96% > --max-bad-fraction 0.01); most common: ")
    assert "unparsable timestamp (ts)" in message and ("'u1,i1,notatime'" in message or "'u2,i2,alsonot'" in message)


def test_threshold_is_configurable(spark, tmp_path, write_text):
    path = _bad_csv(write_text, 100, ["u1,i1,notatime", "u2,i2,alsonot"])
    result, rows = read(spark, tmp_path, path, max_bad_fraction=0.05)
    assert len(rows) == 100 and result.num_bad_rows == 2


def test_extra_fields_show_the_raw_line(spark, tmp_path, write_text):
    path = _bad_csv(write_text, 10, ["u1,i1,1700000000,surplus"])
    with pytest.raises(UserError, match=r"most common: extra fields, e\.g\. row 'u1,i1,1700000000,surplus'$"):
        read(spark, tmp_path, path)


# --- issue #13: each of these failed on main ----------------------------------------------------------------
# A column the job does not use (here `note`) let Spark skip tokenizing it: rows with a field missing or extra
# passed as valid, or were counted in one query and not found in the next (a TypeError traceback).


def test_rows_missing_a_field_over_the_limit_give_the_documented_error(spark, tmp_path, write_text):
    missing = [f"u{k},i{k},view" for k in range(10)]  # no timestamp
    good = [f"u{i % 7},i{i},view,{1700000000 + i}" for i in range(200)]
    path = write_text("events.csv", "user_id,item_id,event_type,ts\n" + "\n".join(good + missing) + "\n")
    with pytest.raises(UserError) as err:
        read(spark, tmp_path, path)
    assert str(err.value) == (
        f"{path}: 10 of 210 rows are malformed (4.76% > --max-bad-fraction 0.01); most common: missing fields, "
        "e.g. row 'u0,i0,view'"
    )


def test_rows_with_extra_fields_are_counted_as_malformed(spark, tmp_path, write_text):
    path = _bad_csv(write_text, 200, ["u1,i1,1700000000,note,surplus"], header="user_id,item_id,ts,note", extra=",n")
    result, rows = read(spark, tmp_path, path)
    assert result.bad_rows_by_reason == {"extra fields": 1} and len(rows) == 200


def test_non_utf8_ids_are_malformed_rows_not_phantom_users(spark, tmp_path):
    path = tmp_path / "latin.csv"
    good = "".join(f"u{k},i{k},{1700000000 + k}\n" for k in range(200))
    path.write_bytes(b"user_id,item_id,ts\n" + good.encode() + "ren\xe9,i1,1700000000\n".encode("latin-1"))
    result, rows = read(spark, tmp_path, path)
    assert result.bad_rows_by_reason == {"bad encoding (user_id)": 1} and len(rows) == 200
    assert not any("\ufffd" in user for user, _, _ in rows)
    with pytest.raises(UserError, match=r"bad encoding \(user_id\) \(is the log in another encoding\? set --csv-encoding"):
        read(spark, tmp_path, path, max_bad_fraction=0.0)
    result, rows = read(spark, tmp_path, path, encoding="latin1")  # read in its own encoding: a real user
    assert result.num_bad_rows == 0 and ("ren\u00e9", "i1", 1700000000) in rows


def test_an_empty_file_says_so(spark, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("")
    with pytest.raises(UserError, match=r": no rows to read \(empty input: no header row\)$"):
        read(spark, tmp_path, path)


# --- retail quirks ------------------------------------------------------------------------------------------

RETAIL = ColumnMapping(user="CustomerID", item="StockCode", timestamp="InvoiceDate", event_type="", weight="Quantity",
                       order="InvoiceNo", quantity="Quantity")
RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,CustomerID"


def _order_lines(customers: int = 40, items: int = 5) -> list[str]:
    """Each customer buys each item once, item 0 twice more (repeat purchases: 3 lines, quantities 2+2+2)."""
    lines = []
    for c in range(customers):
        for i in range(items):
            lines.append(f"{1000 + c},S{i},\"THING {i}, BLUE\",1,2026-01-0{1 + i % 3} 10:00:00,{17000 + c}")
        lines += [f"{2000 + c},S0,THING 0,2,2026-01-05 10:00:00,{17000 + c}"] * 2
    return lines


def test_retail_quirks_are_counted_and_dropped(spark, tmp_path, write_text):
    quirks = [
        "3000,S1,THING 1,1,2026-01-02 11:00:00,",  # guest checkout: anonymous
        "3001,S2,THING 2,4,2026-01-02 11:00:00,",
        "C3002,S1,THING 1,-1,2026-01-03 09:00:00,17001",  # cancelled order
        "3003,S3,THING 3,-2,2026-01-03 09:00:00,17002",  # return
        "3004,POST,POSTAGE,1,2026-01-03 09:00:00,17003",  # not a product: filtered
        "3005,S4,THING 4,0,2026-01-03 09:00:00,17004",  # below the minimum weight
    ]
    path = write_text("retail/orders.csv", RETAIL_HEADER + "\n" + "\n".join(_order_lines() + quirks) + "\n")
    result, rows = read(
        spark, tmp_path, path, columns=RETAIL, cancelled_orders="^C", min_weight=1.0,
        filters=(RowFilter("StockCode", "not_in", ("POST", "DOT")),),
    )
    assert result.num_rows == 40 * 7 + 6 and result.num_bad_rows == 0
    assert (result.num_anonymous_rows, result.num_cancelled_rows, result.num_returned_rows) == (2, 1, 1)
    assert result.filtered_rows_by_rule == {"StockCode not_in [POST, DOT]": 1, "weight below 1": 1}
    assert (result.num_events, result.num_pairs, result.num_repeat_events) == (280, 200, 80)
    pairs = {(r.user_id, r.item_id): (r["count"], r.weight, r.ts) for r in result.pairs.collect()}
    assert pairs[("17000", "S0")] == (3, 5.0, 1767261600)  # 1 + 2 + 2 units, first seen 2026-01-01 10:00 UTC
    assert pairs[("17000", "S1")] == (1, 1.0, 1767348000)
    maxed = read_interactions(spark, path, str(tmp_path / "max"), source=str(path),
                              schema=InputSchema(columns=RETAIL, repeat_weight="max"))
    assert {r.weight for r in maxed.pairs.where("user_id = '17000' and item_id = 'S0'").collect()} == {2.0}


def test_anonymous_rows_have_their_own_threshold(spark, tmp_path, write_text):
    guests = [f"{4000 + k},S{k % 5},THING,1,2026-01-02 11:00:00," for k in range(120)]
    path = write_text("retail/orders.csv", RETAIL_HEADER + "\n" + "\n".join(_order_lines() + guests) + "\n")
    result, _ = read(spark, tmp_path, path, columns=RETAIL, max_anonymous_fraction=0.5)
    assert result.num_anonymous_rows == 120 and result.num_bad_rows == 0  # 30% guests: not malformed
    with pytest.raises(UserError) as err:
        read(spark, tmp_path, path, columns=RETAIL, max_anonymous_fraction=0.25)
    assert str(err.value).startswith(
        f"{path}: 120 of 400 rows have no user id (CustomerID) (30.00% > --max-anonymous-fraction 0.25); "
        "check that --user-col names the user column (rows without one, e.g. guest checkouts, are dropped as "
        "anonymous), e.g. row '4000,S0,THING,1,2026-01-02 11:00:00,'"
    )


def test_a_count_over_many_files_says_so_and_names_the_worst_files(spark, tmp_path, write_text):
    folder = tmp_path / "daily"
    good = _order_lines()
    for day in range(1, 6):
        bad = {3: ["1,S1,x,notanumber,2026-01-03 10:00:00,17000"] * 6, 4: ["1,S1,x"] * 3}.get(day, [])
        write_text(f"daily/2026-01-0{day}.csv", RETAIL_HEADER + "\n" + "\n".join(good[(day - 1) * 50:day * 50] + bad) + "\n")
    with pytest.raises(UserError) as err:
        read(spark, tmp_path, folder, columns=RETAIL)
    message = str(err.value)
    assert message.startswith(
        f"{folder}: 9 of 259 rows in 5 files are malformed (3.47% > --max-bad-fraction 0.01); most common: "
        "non-numeric weight (Quantity); worst files: 2026-01-03.csv (6 of 56), 2026-01-04.csv (3 of 53); e.g. row "
    ), message
    assert message.endswith(" in 2026-01-03.csv")


def test_event_types_with_weights(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts,event_type\nu,i,1,view\nu,i,2,purchase\nu,j,3,view\nv,i,4,click\n")
    result, rows = read(spark, tmp_path, path, event_weights=(("view", 1.0), ("purchase", 4.0)))
    assert rows == [("u", "i", 1), ("u", "j", 3)]
    assert result.filtered_rows_by_rule == {"event_type not in [view, purchase]": 1}
    assert {(r.item_id, r["count"], r.weight) for r in result.pairs.collect()} == {("i", 2, 5.0), ("j", 1, 1.0)}


def test_filter_rules_and_a_timestamp_pattern(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts,country\n"
                               "u,i1,12/1/2010 8:26,UK\nu,i2,12/1/2010 8:27,FR\nu,gift_1,12/1/2010 9:00,UK\n")
    rules = (RowFilter("country", "in", ("UK",)), RowFilter("item_id", "not_matches", "^gift_"))
    result, rows = read(spark, tmp_path, path, filters=rules, timestamp_format="M/d/yyyy H:mm")
    assert rows == [("u", "i1", 1291191960)]  # 2010-12-01T08:26:00Z
    assert result.filtered_rows_by_rule == {"country in [UK]": 1, "item_id not_matches '^gift_'": 1}


def test_an_explicitly_mapped_optional_column_must_exist(spark, tmp_path, write_text):
    path = write_text("e.csv", "user_id,item_id,ts\nu,i,1\n")
    with pytest.raises(UserError, match=r"missing quantity column 'qty' \(columns: user_id, item_id, ts\); map it with --quantity-col"):
        read(spark, tmp_path, path, columns=ColumnMapping(quantity="qty"), explicit=frozenset({"quantity_col"}))


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
