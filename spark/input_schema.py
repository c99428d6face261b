"""The input schema: how the preprocess step reads a raw log, as one YAML file or as flags.

A schema file (pipeline parameter `input_schema_uri`, e.g. config/input-schema.yaml; a path or s3:// URI) names the
log's columns and format and the rules that clean it; every key is optional and unknown keys are refused:

    format: csv                     # auto | movielens | csv | parquet | jsonl
    csv: {delimiter: ",", encoding: utf-8}
    columns: {user: CustomerID, item: StockCode, timestamp: InvoiceDate, weight: Quantity,
              order: InvoiceNo, quantity: Quantity}      # also event_type
    timestamp: {unit: auto, format: ""}                  # format: a Spark datetime pattern, e.g. M/d/yyyy H:mm
    events: {purchase: 1}           # event types that count and their weights (or a list: weight 1 each)
    min_weight: 1                   # rows whose weight is below this are filtered out
    filters:                        # rows failing any rule are filtered out (counted per rule)
      - {column: StockCode, not_in: [POST, DOT, M]}      # also in, matches, not_matches (Java regex), min, max
    returns: {cancelled_orders: "^C"}                    # order ids matching this regex are cancellations
    repeats: {weight: sum}          # weight of an interaction collapsed from repeats: sum | max
    tolerance: {max_bad_fraction: 0.01, max_anonymous_fraction: 0.5}

Each key is also a preprocess flag (`columns.user` is `--user-col`, `tolerance.max_bad_fraction` is
`--max-bad-fraction`); a flag set to a value other than its default wins over the file. `filters` exist only in the
file. Messages name where a setting came from (`--max-bad-fraction` or `tolerance.max_bad_fraction in <file>`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from ncf import storage
from ncf.errors import UserError

FORMATS = ("auto", "movielens", "csv", "parquet", "jsonl")
TIMESTAMP_UNITS = ("auto", "s", "ms", "iso")
REPEAT_WEIGHTS = ("sum", "max")
FILTER_OPS = ("in", "not_in", "matches", "not_matches", "min", "max")

# schema file key (dotted) -> the PreprocessConfig field it sets
FILE_SETTINGS = {
    "format": "input_format",
    "csv.delimiter": "csv_delimiter",
    "csv.encoding": "csv_encoding",
    "columns.user": "user_col",
    "columns.item": "item_col",
    "columns.timestamp": "timestamp_col",
    "columns.event_type": "event_type_col",
    "columns.weight": "weight_col",
    "columns.order": "order_col",
    "columns.quantity": "quantity_col",
    "timestamp.unit": "timestamp_unit",
    "timestamp.format": "timestamp_format",
    "events": "event_types",
    "min_weight": "min_weight",
    "returns.cancelled_orders": "cancelled_orders",
    "repeats.weight": "repeat_weight",
    "tolerance.max_bad_fraction": "max_bad_fraction",
    "tolerance.max_anonymous_fraction": "max_anonymous_fraction",
}
_SECTIONS = {key.split(".")[0] for key in FILE_SETTINGS} | {"filters"}
_NUMBERS = {"min_weight", "max_bad_fraction", "max_anonymous_fraction"}


@dataclasses.dataclass(frozen=True)
class ColumnMapping:
    """Input column names. `event_type` and `weight` are used when the input has them; `order` and `quantity`
    (empty: none) feed the cancellation and return rules."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "ts"
    event_type: str = "event_type"
    weight: str = "weight"
    order: str = ""
    quantity: str = ""


@dataclasses.dataclass(frozen=True)
class RowFilter:
    column: str
    op: str  # one of FILTER_OPS
    value: Any  # tuple of strings (in / not_in), a regex (matches / not_matches) or a number (min / max)

    @property
    def label(self) -> str:
        if isinstance(self.value, tuple):
            shown = ", ".join(self.value[:5]) + (f", ... ({len(self.value)} values)" if len(self.value) > 5 else "")
            return f"{self.column} {self.op} [{shown}]"
        return f"{self.column} {self.op} {self.value!r}" if isinstance(self.value, str) else f"{self.column} {self.op} {self.value:g}"


@dataclasses.dataclass(frozen=True)
class InputSchema:
    """Everything the reader needs to know about a log (see the module docstring)."""

    format: str = "auto"
    columns: ColumnMapping = ColumnMapping()
    delimiter: str = ","
    encoding: str = "utf-8"
    timestamp_unit: str = "auto"
    timestamp_format: str = ""
    event_weights: tuple[tuple[str, float], ...] = ()  # empty: every event type counts, weight 1
    min_weight: float | None = None
    filters: tuple[RowFilter, ...] = ()
    cancelled_orders: str = ""
    repeat_weight: str = "sum"
    max_bad_fraction: float = 0.01
    max_anonymous_fraction: float = 0.5
    uri: str = ""  # the schema file, when one was given
    # config field -> how the user set it (`--user-col`, `columns.user in <file>`), for messages
    labels: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)
    # optional columns the user named explicitly: they must exist (an unnamed default is used when present)
    explicit: frozenset[str] = frozenset()

    def label(self, field: str) -> str:
        return self.labels.get(field, "--" + field.replace("_", "-"))

    def as_file(self) -> dict[str, Any]:
        """The effective schema in the file's layout (recorded in stats.json; valid as a schema file)."""
        values = {
            "input_format": self.format, "csv_delimiter": self.delimiter, "csv_encoding": self.encoding,
            "user_col": self.columns.user, "item_col": self.columns.item, "timestamp_col": self.columns.timestamp,
            "event_type_col": self.columns.event_type, "weight_col": self.columns.weight,
            "order_col": self.columns.order, "quantity_col": self.columns.quantity,
            "timestamp_unit": self.timestamp_unit, "timestamp_format": self.timestamp_format,
            "event_types": dict(self.event_weights), "min_weight": self.min_weight,
            "cancelled_orders": self.cancelled_orders, "repeat_weight": self.repeat_weight,
            "max_bad_fraction": self.max_bad_fraction, "max_anonymous_fraction": self.max_anonymous_fraction,
        }
        out: dict[str, Any] = {}
        for key, field in FILE_SETTINGS.items():
            section, _, name = key.partition(".")
            if name:
                out.setdefault(section, {})[name] = values[field]
            else:
                out[section] = values[field]
        out["filters"] = [{"column": f.column, f.op: list(f.value) if isinstance(f.value, tuple) else f.value}
                          for f in self.filters]
        return out


def parse_event_weights(text: str, label: str) -> tuple[tuple[str, float], ...]:
    """`purchase,cart` (weight 1 each) or `view=1,cart=2,purchase=4`."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = (s.strip() for s in part.partition("="))
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise UserError(f"{label} {text!r}: weight of {name!r} must be a number, got {value!r}") from None
        if not name or weight <= 0:
            raise UserError(f"{label} {text!r}: expected TYPE or TYPE=WEIGHT (weight > 0) per event type")
        weights[name] = weight
    return tuple(weights.items())


def _flatten(data: dict[str, Any], uri: str) -> dict[str, Any]:
    """Nested file sections -> {dotted key: value}; refuses unknown keys, naming the file and the known ones."""
    unknown = sorted(set(data) - _SECTIONS)
    if unknown:
        raise UserError(f"{uri}: unknown key(s) {unknown}; known: {sorted(_SECTIONS)}")
    flat: dict[str, Any] = {}
    for section, value in data.items():
        if section in FILE_SETTINGS or section == "filters":
            flat[section] = value
            continue
        if not isinstance(value, dict):
            raise UserError(f"{uri}: {section} must be a mapping, got {value!r}")
        known = sorted(k.split(".", 1)[1] for k in FILE_SETTINGS if k.startswith(section + "."))
        for name, inner in value.items():
            if name not in known:
                raise UserError(f"{uri}: unknown key '{section}.{name}'; known under {section}: {known}")
            flat[f"{section}.{name}"] = inner
    return flat


def _file_value(key: str, field: str, value: Any, uri: str) -> Any:
    where = f"{uri}: {key}"
    if field == "event_types":
        if isinstance(value, dict):
            return ",".join(f"{name}={weight}" for name, weight in value.items())
        if isinstance(value, list):
            return ",".join(str(name) for name in value)
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        raise UserError(f"{where} must map event types to weights (or list them), got {value!r}")
    if field == "min_weight" and value is None:
        return None
    if field in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        return float(value)
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise UserError(f"{where} must be a text value, got {value!r}")
    return str(value)


def _filters(value: Any, uri: str) -> tuple[RowFilter, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UserError(f"{uri}: filters must be a list of rules like {{column: StockCode, not_in: [POST]}}")
    rules: list[RowFilter] = []
    for number, rule in enumerate(value, 1):
        where = f"{uri}: filters[{number}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("column"), str) or not rule["column"]:
            raise UserError(f"{where}: expected a mapping with a column and a rule, got {rule!r}")
        ops = {k: v for k, v in rule.items() if k != "column"}
        unknown = sorted(set(ops) - set(FILTER_OPS))
        if unknown or not ops:
            raise UserError(f"{where}: rules are {', '.join(FILTER_OPS)}; got {sorted(ops) or 'none'}")
        for op, operand in ops.items():
            if op in ("in", "not_in"):
                values = operand if isinstance(operand, list) else [operand]
                if not values or any(isinstance(v, (dict, list)) or v is None for v in values):
                    raise UserError(f"{where}: {op} takes a list of values, got {operand!r}")
                rules.append(RowFilter(rule["column"], op, tuple(str(v) for v in values)))
            elif op in ("matches", "not_matches"):
                if not isinstance(operand, str) or not operand:
                    raise UserError(f"{where}: {op} takes a regular expression, got {operand!r}")
                rules.append(RowFilter(rule["column"], op, operand))
            else:
                if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                    raise UserError(f"{where}: {op} takes a number, got {operand!r}")
                rules.append(RowFilter(rule["column"], op, float(operand)))
    return tuple(rules)


def load_file(uri: str) -> tuple[dict[str, tuple[str, Any]], tuple[RowFilter, ...]]:
    """({config field: (file key, value)}, filters) from a schema file (local path or s3://)."""
    try:
        data = yaml.safe_load(storage.read_bytes(uri)) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{uri}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{uri}: expected a mapping (format, columns, events, filters, ...), got {type(data).__name__}")
    flat = _flatten(data, uri)
    values = {FILE_SETTINGS[k]: (k, _file_value(k, FILE_SETTINGS[k], v, uri)) for k, v in flat.items() if k != "filters"}
    return values, _filters(flat.get("filters"), uri)


def _check(schema: InputSchema) -> None:
    def choice(field: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise UserError(f"{schema.label(field)} {value!r}: choose one of {', '.join(choices)}")

    choice("input_format", schema.format, FORMATS)
    choice("timestamp_unit", schema.timestamp_unit, TIMESTAMP_UNITS)
    choice("repeat_weight", schema.repeat_weight, REPEAT_WEIGHTS)
    for field in ("max_bad_fraction", "max_anonymous_fraction"):
        value = getattr(schema, field)
        if not 0 <= value <= 1:
            raise UserError(f"{schema.label(field)} {value:g}: must be between 0 and 1")
    if not schema.delimiter:
        raise UserError(f"{schema.label('csv_delimiter')}: the delimiter cannot be empty")
    for role in ("user", "item", "timestamp"):
        if not getattr(schema.columns, role):
            raise UserError(f"{schema.label(role + '_col')}: the {role} column cannot be empty")
    if schema.cancelled_orders and not schema.columns.order:
        raise UserError(
            f"{schema.label('cancelled_orders')} {schema.cancelled_orders!r} needs the order id column: "
            f"set {schema.label('order_col')}"
        )


def resolve(config: Any) -> InputSchema:
    """The reader's schema from a PreprocessConfig: its flags, overlaid by `input_schema_uri` where a flag is
    still at its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    values = {field: getattr(config, field) for field in FILE_SETTINGS.values()}
    labels: dict[str, str] = {}
    explicit = {field for field in values if values[field] != defaults[field]}
    filters: tuple[RowFilter, ...] = ()
    uri = config.input_schema_uri
    if uri:
        from_file, filters = load_file(uri)
        for field, (key, value) in from_file.items():
            if values[field] == defaults[field]:
                values[field] = value
                labels[field] = f"{key} in {uri}"
                explicit.add(field)
    columns = ColumnMapping(
        values["user_col"], values["item_col"], values["timestamp_col"], values["event_type_col"],
        values["weight_col"], values["order_col"], values["quantity_col"],
    )
    schema = InputSchema(
        format=values["input_format"], columns=columns, delimiter=values["csv_delimiter"],
        encoding=values["csv_encoding"], timestamp_unit=values["timestamp_unit"],
        timestamp_format=values["timestamp_format"],
        event_weights=parse_event_weights(values["event_types"], labels.get("event_types", "--event-types")),
        min_weight=values["min_weight"], filters=filters, cancelled_orders=values["cancelled_orders"],
        repeat_weight=values["repeat_weight"], max_bad_fraction=values["max_bad_fraction"],
        max_anonymous_fraction=values["max_anonymous_fraction"], uri=uri, labels=labels,
        explicit=frozenset(explicit),
    )
    _check(schema)
    return schema
