"""The input schema file: its keys, their checks, and how flags and the file combine (no Spark needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ncf.errors import UserError
from spark.input_schema import ColumnMapping, InputSchema, RowFilter, parse_event_weights, resolve
from spark.preprocess import PreprocessConfig

REPO = Path(__file__).resolve().parents[2]
RETAIL_SCHEMA = REPO / "docs" / "examples" / "retail" / "input-schema.yaml"


def _schema(tmp_path, text: str, **flags) -> InputSchema:
    path = tmp_path / "schema.yaml"
    path.write_text(text)
    return resolve(PreprocessConfig(input_uri="x", input_schema_uri=str(path), **flags))


def test_the_retail_example_maps_every_column_and_rule():
    schema = resolve(PreprocessConfig(input_uri="x", input_schema_uri=str(RETAIL_SCHEMA)))
    assert schema.format == "csv"
    assert schema.columns == ColumnMapping(user="CustomerID", item="StockCode", timestamp="InvoiceDate",
                                           event_type="event_type", weight="Quantity", order="InvoiceNo",
                                           quantity="Quantity")
    assert (schema.cancelled_orders, schema.min_weight, schema.max_anonymous_fraction) == ("^C", 1.0, 0.4)
    assert [f.op for f in schema.filters] == ["not_in", "not_matches"] and "POST" in schema.filters[0].value
    assert schema.label("user_col") == f"columns.user in {RETAIL_SCHEMA}"
    assert schema.label("max_bad_fraction") == f"tolerance.max_bad_fraction in {RETAIL_SCHEMA}"


def test_the_ci_schema_reads_the_synthetic_log_as_the_defaults_do():
    ci = resolve(PreprocessConfig(input_uri="x", input_schema_uri=str(REPO / "config" / "input-schema.yaml")))
    default = resolve(PreprocessConfig(input_uri="x"))
    assert ci.as_file() == {**default.as_file(), "columns": {**default.as_file()["columns"], "weight": ""}}


def test_a_flag_set_away_from_its_default_wins_over_the_file(tmp_path):
    schema = _schema(tmp_path, "columns: {user: CustomerID}\ntolerance: {max_bad_fraction: 0.2}\n",
                     max_bad_fraction=0.05, item_col="sku")
    assert (schema.columns.user, schema.columns.item, schema.max_bad_fraction) == ("CustomerID", "sku", 0.05)
    assert schema.label("max_bad_fraction") == "--max-bad-fraction" and schema.label("item_col") == "--item-col"


def test_events_are_weights_or_a_list():
    assert parse_event_weights("view=1,cart=2.5, purchase", "--event-types") == (
        ("view", 1.0), ("cart", 2.5), ("purchase", 1.0))
    with pytest.raises(UserError, match=r"--event-types 'view=lots': weight of 'view' must be a number"):
        parse_event_weights("view=lots", "--event-types")
    with pytest.raises(UserError, match="weight > 0"):
        parse_event_weights("view=0", "--event-types")


def test_events_in_the_file(tmp_path):
    assert _schema(tmp_path, "events: {view: 1, purchase: 4}\n").event_weights == (("view", 1.0), ("purchase", 4.0))
    assert _schema(tmp_path, "events: [purchase, cart]\n").event_weights == (("purchase", 1.0), ("cart", 1.0))


@pytest.mark.parametrize(
    "text, message",
    [
        ("colums: {user: a}\n", r"schema.yaml: unknown key\(s\) \['colums'\]; known: "),
        ("columns: {usr: a}\n", r"schema.yaml: unknown key 'columns.usr'; known under columns: \['event_type', "),
        ("columns: CustomerID\n", r"schema.yaml: columns must be a mapping"),
        ("tolerance: {max_bad_fraction: lots}\n", r"schema.yaml: tolerance.max_bad_fraction must be a number"),
        ("tolerance: {max_bad_fraction: 2}\n", r"tolerance.max_bad_fraction in .*schema.yaml 2: must be between 0 and 1"),
        ("format: xlsx\n", r"format in .*schema.yaml 'xlsx': choose one of auto, movielens"),
        ("repeats: {weight: mean}\n", r"repeats.weight in .*schema.yaml 'mean': choose one of sum, max"),
        ("returns: {cancelled_orders: '^C'}\n", r"returns.cancelled_orders in .*schema.yaml '\^C' needs the order id "
                                                r"column: set --order-col"),
        ("filters: {column: a}\n", r"filters must be a list of rules"),
        ("filters: [{column: a, like: b}]\n", r"filters\[1\]: rules are in, not_in, matches, not_matches, min, max; "
                                              r"got \['like'\]"),
        ("filters: [{column: a, min: low}]\n", r"filters\[1\]: min takes a number"),
        ("filters: [{in: [a]}]\n", r"filters\[1\]: expected a mapping with a column and a rule"),
        ("- a\n- b\n", r"schema.yaml: expected a mapping \(format, columns"),
        ("columns: {user: [a\n", r"schema.yaml: invalid YAML"),
    ],
)
def test_mistakes_in_the_file_name_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        _schema(tmp_path, text)


def test_a_missing_schema_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"nope.yaml: cannot read"):
        resolve(PreprocessConfig(input_uri="x", input_schema_uri=str(tmp_path / "nope.yaml")))


def test_the_effective_schema_is_itself_a_valid_schema_file(tmp_path):
    schema = resolve(PreprocessConfig(input_uri="x", input_schema_uri=str(RETAIL_SCHEMA)))
    again = _schema(tmp_path, yaml.safe_dump(schema.as_file()))
    assert again.as_file() == schema.as_file() and again.filters == schema.filters
    assert again.columns == schema.columns and again.event_weights == schema.event_weights


def test_filter_labels_stay_short():
    many = RowFilter("StockCode", "not_in", tuple(f"c{k}" for k in range(8)))
    assert many.label == "StockCode not_in [c0, c1, c2, c3, c4, ... (8 values)]"
    assert RowFilter("price", "min", 0.5).label == "price min 0.5"


def test_the_example_pipeline_parameters_are_valid_and_name_the_example_schema():
    from pipelines import params

    values = params.load_file(REPO / "docs" / "examples" / "retail" / "pipeline-params.yaml")
    assert (REPO / values["input_schema_uri"]).resolve() == RETAIL_SCHEMA.resolve()
    ci = params.load_file(params.DEFAULT_PARAMS_FILE)
    assert (REPO / ci["input_schema_uri"]).is_file()  # the image runs in the repository's copy: relative is fine
