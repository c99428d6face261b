"""Raw interaction logs -> one validated Spark DataFrame of interactions.

Formats: MovieLens (`u.data` tab, `ratings.dat` `::`, `ratings.csv` with header; every rating is an implicit
interaction, the rating becomes the weight) and generic event logs in CSV, Parquet or JSON Lines mapped by an
input schema (spark/input_schema.py). Timestamps may be epoch seconds / milliseconds / microseconds / nanoseconds,
ISO-8601 text (no offset = UTC), text in a given pattern, or timestamp columns.

Every row is counted once, under the first of these it meets, in this order:
  malformed   missing / extra fields, invalid JSON, bad encoding, missing item id, unparsable timestamp,
              non-numeric weight or quantity (per reason; more than `max_bad_fraction` of the rows fails the read)
  anonymous   no user id, e.g. guest checkouts (more than `max_anonymous_fraction` fails the read)
  cancelled   the order id matches the cancellation rule
  returned    a negative quantity
  filtered    an event type not listed, a filter rule, a weight below the minimum (per rule)
  kept        the rest: collapsed to one row per (user, item) with the first time, the number of rows (`count`)
              and their weight (sum or max)
Validation and deduplication happen in one pass over the input (it is read exactly once); a failing read makes
one more pass to name the worst files and an example row.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from pathlib import Path
from typing import Any

from ncf.errors import UserError
from spark.input_schema import FORMATS, ColumnMapping, InputSchema

CORRUPT = "_corrupt_record"
ANONYMOUS = "anonymous"
CANCELLED = "cancelled"
RETURNED = "returned"
BAD = "bad: "  # status prefixes of malformed and filtered rows (the reason / rule follows)
FILTERED = "filtered: "
# Weights are summed as integer micro-units: exact, so an interaction's weight does not depend on the order
# Spark adds its rows in (and the partition's fingerprint does not depend on the partitioning).
WEIGHT_SCALE = 1_000_000
WORST_FILES_SHOWN = 3
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".deflate", ".zst", ".lz4", ".snappy")
_EXTENSION_FORMATS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".data": "movielens",
    ".dat": "movielens",
}
MOVIELENS_FILES = ("u.data", "ratings.dat", "ratings.csv")
_MOVIELENS_COLUMNS = ["user", "item", "rating", "timestamp"]
# Epoch numbers in auto mode: below 1e11 seconds (1e11 s is the year 5138), then milliseconds (1e11 ms is
# 1973), microseconds from 1e14, nanoseconds from 1e17 (pandas writes those).
_EPOCH_DIVISORS = ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3))
_INTEGER_TYPES = ("tinyint", "smallint", "int", "bigint")
_SPARK_CHARSETS = ("iso-8859-1", "us-ascii", "utf-16", "utf-16be", "utf-16le", "utf-32", "utf-8")


@dataclasses.dataclass
class ReadResult:
    # DataFrame[user_id string, item_id string, ts bigint, count bigint, weight double]: one row per (user, item)
    pairs: Any
    format: str
    files: list[str]
    num_rows: int  # rows read, whatever became of them
    num_bad_rows: int
    bad_rows_by_reason: dict[str, int]
    num_anonymous_rows: int
    num_cancelled_rows: int
    num_returned_rows: int
    filtered_rows_by_rule: dict[str, int]
    num_events: int  # rows kept (before deduplication)
    num_pairs: int  # distinct (user, item) pairs

    @property
    def num_filtered_rows(self) -> int:
        return sum(self.filtered_rows_by_rule.values())

    @property
    def num_repeat_events(self) -> int:
        """Kept rows that repeat an earlier (user, item): collapsed into its interaction."""
        return self.num_events - self.num_pairs


def _data_files(path: Path) -> list[Path]:
    """Files Spark reads under a directory (hidden files, `_SUCCESS` and checksums are not data)."""
    if path.is_file():
        return [path]
    return sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith(("_", ".")) and not p.name.endswith(".crc")
    )


def _extension(path: Path) -> str:
    name = path.name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Path(name).suffix


def _movielens_file(path: Path) -> Path | None:
    """The ratings file of a MovieLens download (the file itself, or found inside its folder)."""
    if path.is_file():
        return path
    for name in MOVIELENS_FILES:
        if (path / name).is_file():
            return path / name
    return None


def _first_line(path: Path) -> str:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.readline().rstrip("\r\n")


def detect_format(path: Path, requested: str, source: str) -> str:
    """Resolve `auto` from file names / extensions; check an explicit format fits the files."""
    if requested not in FORMATS:
        raise UserError(f"{source}: unknown input format {requested!r}; choose one of {', '.join(FORMATS)}")
    if requested == "movielens":
        if _movielens_file(path) is None:
            raise UserError(f"{source}: no MovieLens ratings file ({', '.join(MOVIELENS_FILES)}) found")
        return requested
    if requested != "auto":
        return requested
    if path.is_dir() and _movielens_file(path) is not None:
        return "movielens"
    files = _data_files(path)
    if not files:
        raise UserError(f"{source}: no data files found")
    formats = {_EXTENSION_FORMATS.get(_extension(f)) for f in files}
    if None in formats or len(formats) != 1:
        names = sorted({f.name for f in files})[:5]
        raise UserError(
            f"{source}: cannot tell the input format from the file names {names}; "
            f"pass --input-format ({', '.join(FORMATS[1:])})"
        )
    fmt = formats.pop()
    if fmt == "csv" and files[0].name.lower().startswith("ratings"):
        header = _first_line(files[0]).replace('"', "").split(",")
        if "userId" in header and "movieId" in header:
            return "movielens"
    return fmt


def _check_columns(available: list[str], mapping: ColumnMapping, schema: InputSchema, source: str, fmt: str) -> None:
    listed = ", ".join(available)
    for role in ("user", "item", "timestamp"):
        column = getattr(mapping, role)
        if column not in available:
            raise UserError(
                f"{source}: missing {role} column {column!r} (columns: {listed}); map it with {schema.label(role + '_col')}"
            )
    if fmt == "movielens":  # its own fixed columns
        return
    for role in ("event_type", "weight", "order", "quantity"):
        column, field = getattr(mapping, role), f"{role}_col"
        if column and column not in available and field in schema.explicit:
            raise UserError(
                f"{source}: missing {role.replace('_', ' ')} column {column!r} (columns: {listed}); "
                f"map it with {schema.label(field)}, or leave it empty"
            )
    for rule in schema.filters:
        if rule.column not in available:
            raise UserError(
                f"{source}: filter '{rule.label}' in {schema.uri} names column {rule.column!r}, which the input "
                f"does not have (columns: {listed})"
            )


def _check_jvm_settings(spark, schema: InputSchema) -> InputSchema:
    """Encoding names and regular expressions as Spark's JVM reads them, refused before any job runs; returns
    the schema with the encoding's canonical name."""
    from py4j.protocol import Py4JJavaError

    jvm = spark.sparkContext._jvm
    try:
        encoding = str(jvm.java.nio.charset.Charset.forName(schema.encoding).name()).lower()
    except Py4JJavaError:  # unknown or illegal name
        raise UserError(
            f"{schema.label('csv_encoding')} {schema.encoding!r}: unknown character encoding "
            "(e.g. utf-8, latin1, windows-1252)"
        ) from None
    if encoding not in _SPARK_CHARSETS:  # Spark 4 reads only a few charsets unless told to use the JDK's
        spark.conf.set("spark.sql.legacy.javaCharsets", "true")
    patterns = [(schema.label("cancelled_orders"), schema.cancelled_orders)]
    patterns += [(f"filter '{r.label}' in {schema.uri}", r.value) for r in schema.filters if r.op.endswith("matches")]
    for label, pattern in patterns:
        if not pattern:
            continue
        try:
            jvm.java.util.regex.Pattern.compile(pattern)
        except Py4JJavaError as exc:
            detail = str(exc.java_exception.getMessage()).splitlines()[0]
            raise UserError(f"{label}: invalid regular expression {pattern!r} ({detail})") from exc
    return dataclasses.replace(schema, encoding=encoding)


def _csv_frame(spark, path: str, columns: list[str], sep: str, header: bool, encoding: str = "utf-8"):
    from pyspark.sql import types as T

    # With column pruning Spark tokenizes only the columns a query uses, so a row with missing or extra fields
    # is valid for one query and malformed for the next (the count and its example disagreed). Check every field.
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    schema = T.StructType([T.StructField(c, T.StringType()) for c in [*columns, CORRUPT]])
    return (
        spark.read.option("sep", sep)
        .option("header", header)
        .option("encoding", encoding)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .schema(schema)
        .csv(path)
    )


def _raw_frame(spark, local: Path | None, spark_path: str, fmt: str, schema: InputSchema, source: str):
    """(DataFrame, effective mapping, fields per line, delimiter) for one input; every frame gets a
    `_corrupt_record` column."""
    from pyspark.sql import functions as F

    mapping = schema.columns
    if fmt == "movielens":
        ratings = _movielens_file(local) if local is not None else Path(spark_path)
        if ratings is None:
            raise UserError(f"{source}: no MovieLens ratings file found")
        path = str(ratings) if local is not None else spark_path
        name = ratings.name.lower()
        movielens = ColumnMapping("user", "item", "timestamp", event_type="", weight="rating")
        if name.endswith(".csv"):
            frame = _csv_frame(spark, path, ["userId", "movieId", "rating", "timestamp"], ",", True)
            return frame.toDF(*_MOVIELENS_COLUMNS, CORRUPT), movielens, 4, ","
        sep = "::" if name.endswith(".dat") else "\t"
        return _csv_frame(spark, path, _MOVIELENS_COLUMNS, sep, False), movielens, 4, sep

    if fmt == "csv":
        sep = "\t" if schema.delimiter == "," and spark_path.lower().endswith(".tsv") else schema.delimiter
        header_row = (
            spark.read.option("sep", sep).option("header", True).option("encoding", schema.encoding).csv(spark_path).columns
        )
        if not any(header_row):
            raise UserError(f"{source}: no rows to read (empty input: no header row)")
        _check_columns(header_row, mapping, schema, source, fmt)
        return _csv_frame(spark, spark_path, header_row, sep, True, schema.encoding), mapping, len(header_row), sep

    if fmt == "parquet":
        try:
            frame = spark.read.parquet(spark_path)
        except Exception as exc:
            raise UserError(f"{source}: unreadable Parquet ({str(exc).splitlines()[0]})") from exc
        _check_columns(frame.columns, mapping, schema, source, fmt)
        return frame.withColumn(CORRUPT, F.lit(None).cast("string")), mapping, len(frame.columns), ","

    if fmt == "jsonl":
        from pyspark.sql import types as T

        # Read every mapped field as text (numbers keep their digits) so one rule parses them all.
        sample = spark.read.text(spark_path).limit(200).collect()
        keys: set[str] = set()
        for row in sample:
            try:
                value = json.loads(row[0])
            except ValueError:
                continue
            if isinstance(value, dict):
                keys.update(value)
        _check_columns(sorted(keys), mapping, schema, source, fmt)
        roles = [mapping.user, mapping.item, mapping.timestamp, mapping.event_type, mapping.weight, mapping.order,
                 mapping.quantity, *(r.column for r in schema.filters)]
        wanted = list(dict.fromkeys(c for c in roles if c and c in keys))
        json_schema = T.StructType([T.StructField(c, T.StringType()) for c in [*wanted, CORRUPT]])
        frame = (
            spark.read.option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .schema(json_schema)
            .json(spark_path)
        )
        return frame, mapping, len(wanted), ","

    raise UserError(f"{source}: unknown input format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _epoch_seconds(column, dtype: str, unit: str, pattern: str = ""):
    """Epoch seconds (bigint) from a numeric, timestamp or text column; NULL when unparsable."""
    from pyspark.sql import functions as F

    if dtype in ("timestamp", "timestamp_ntz", "date"):
        return F.unix_timestamp(column.cast("timestamp"))
    text = column.cast("string")
    if pattern:
        return F.unix_timestamp(F.try_to_timestamp(F.trim(text), F.lit(pattern)))
    numeric = dtype in (*_INTEGER_TYPES, "float", "double") or dtype.startswith("decimal")
    number = column.cast("double") if numeric else text.try_cast("double")
    iso = F.unix_timestamp(text.try_cast("timestamp"))
    if unit == "s":
        return number.cast("bigint")
    if unit == "ms":
        return F.floor(number / 1000).cast("bigint")
    if unit == "iso":
        return iso
    scaled = number
    for threshold, divisor in reversed(_EPOCH_DIVISORS):
        scaled = F.when(F.abs(number) >= threshold, number / divisor).otherwise(scaled)
    from_number = F.floor(scaled)
    if numeric:
        return from_number.cast("bigint")
    return F.coalesce(from_number.cast("bigint"), iso)


def _weight_units(weight):
    """A weight as integer micro-units; NULL when it is not a finite number of sane size."""
    from pyspark.sql import functions as F

    return F.when(~F.isnan(weight), F.round(weight * WEIGHT_SCALE).try_cast("long"))


def _corrupt_reason(fmt: str, num_fields: int, sep: str):
    """Why the parser rejected a line: for delimited text, too few or too many fields (quoted fields may hold
    the delimiter, so they are set aside before counting)."""
    from pyspark.sql import functions as F

    if fmt == "jsonl":
        return F.lit("invalid JSON")
    unquoted = F.regexp_replace(F.col(CORRUPT), '"[^"]*"', "")
    fields = F.size(F.split(unquoted, "\\Q" + sep + "\\E"))
    return (
        F.when(fields < num_fields, F.lit("missing fields"))
        .when(fields > num_fields, F.lit("extra fields"))
        .otherwise(F.lit("malformed line"))
    )


def _classify(frame, fmt: str, mapping: ColumnMapping, schema: InputSchema, num_fields: int, sep: str, source: str):
    """(status, user, item, ts, weight units) column expressions; status is NULL for kept rows (see the module
    docstring for the order of the rules)."""
    from pyspark.sql import functions as F

    dtypes = dict(frame.dtypes)

    def present(name: str) -> bool:
        return bool(name) and name in dtypes

    def col(name: str):
        return F.col(f"`{name}`")

    def text(name: str):
        if dtypes[name] in _INTEGER_TYPES:  # integer ids: no blanks to trim
            return col(name).cast("string")
        value = F.trim(col(name).cast("string"))
        return F.when(value != "", value)

    def number(name: str):
        return col(name).cast("string").try_cast("double")

    has_event, has_weight = present(mapping.event_type), present(mapping.weight)
    has_order, has_quantity = present(mapping.order), present(mapping.quantity)
    if schema.event_weights and not has_event:
        raise UserError(
            f"{source}: {schema.label('event_types')} given but the input has no event type column "
            f"{mapping.event_type!r}"
        )
    if schema.min_weight is not None and not has_weight:
        raise UserError(f"{source}: {schema.label('min_weight')} given but the input has no weight column {mapping.weight!r}")
    if schema.cancelled_orders and not has_order:
        raise UserError(f"{source}: {schema.label('cancelled_orders')} given but the input has no order column {mapping.order!r}")

    user, item = text(mapping.user), text(mapping.item)
    ts = _epoch_seconds(col(mapping.timestamp), dtypes[mapping.timestamp], schema.timestamp_unit, schema.timestamp_format)
    weight = number(mapping.weight) if has_weight else F.lit(1.0)
    checks = [(F.col(CORRUPT).isNotNull(), _corrupt_reason(fmt, num_fields, sep))]
    ids = (mapping.user, mapping.item, mapping.event_type, mapping.order)
    for name in dict.fromkeys(c for c in ids if present(c) and dtypes[c] == "string"):
        checks.append((col(name).contains("\ufffd"), F.lit(f"bad encoding ({name})")))
    checks += [
        (item.isNull(), F.lit(f"missing item id ({mapping.item})")),
        (ts.isNull(), F.lit(f"unparsable timestamp ({mapping.timestamp})")),
    ]
    if has_weight:
        checks.append((_weight_units(weight).isNull(), F.lit(f"non-numeric weight ({mapping.weight})")))
    quantity = number(mapping.quantity) if has_quantity else None
    if quantity is not None and mapping.quantity != mapping.weight:
        checks.append((quantity.isNull() | F.isnan(quantity), F.lit(f"non-numeric quantity ({mapping.quantity})")))
    statuses = [(condition, F.concat(F.lit(BAD), reason)) for condition, reason in checks]
    statuses.append((user.isNull(), F.lit(ANONYMOUS)))
    if schema.cancelled_orders:
        statuses.append((F.coalesce(text(mapping.order).rlike(schema.cancelled_orders), F.lit(False)), F.lit(CANCELLED)))
    if quantity is not None:
        statuses.append((quantity < 0, F.lit(RETURNED)))
    event_weight = F.lit(1.0)
    if schema.event_weights:
        lookup = F.create_map(*[F.lit(v) for pair in schema.event_weights for v in pair])
        event_weight = lookup[text(mapping.event_type)]
        listed = ", ".join(name for name, _ in schema.event_weights)
        statuses.append((event_weight.isNull(), F.lit(f"{FILTERED}{mapping.event_type} not in [{listed}]")))
    for rule in schema.filters:
        statuses.append((~_passes(rule, text(rule.column), number(rule.column)), F.lit(FILTERED + rule.label)))
    row_weight = weight * event_weight
    if schema.min_weight is not None:
        statuses.append((row_weight < schema.min_weight, F.lit(f"{FILTERED}weight below {schema.min_weight:g}")))
    status = F.when(*statuses[0])
    for condition, label in statuses[1:]:
        status = status.when(condition, label)
    return status, user, item, ts, _weight_units(row_weight)


def _passes(rule, text, number):
    """Whether a row passes one filter rule (a missing value fails `in` / `matches` / `min` / `max`)."""
    from pyspark.sql import functions as F

    false = F.lit(False)
    if rule.op == "in":
        return F.coalesce(text.isin(list(rule.value)), false)
    if rule.op == "not_in":
        return ~F.coalesce(text.isin(list(rule.value)), false)
    if rule.op == "matches":
        return F.coalesce(text.rlike(rule.value), false)
    if rule.op == "not_matches":
        return ~F.coalesce(text.rlike(rule.value), false)
    if rule.op == "min":
        return F.coalesce(number >= rule.value, false)
    return F.coalesce(number <= rule.value, false)


def _row_text(frame, fmt: str, sep: str):
    """How a bad row is shown to the user: the raw line when the parser kept it, else the parsed fields."""
    from pyspark.sql import functions as F

    fields = [c for c in frame.columns if c != CORRUPT]
    if fmt in ("parquet", "jsonl"):
        parsed = F.to_json(F.struct(*[F.col(f"`{c}`") for c in fields]))
    else:
        parsed = F.concat_ws(sep, *[F.coalesce(F.col(f"`{c}`").cast("string"), F.lit("")) for c in fields])
    return F.coalesce(F.col(CORRUPT), parsed)


def _display_file(file_url: str, local: Path | None, source: str) -> str:
    """The file a bad row came from, as the user named it (not the local staging copy of an S3 input)."""
    path = urllib.parse.unquote(file_url.removeprefix("file://").removeprefix("file:"))
    if local is None:
        return file_url
    root = str(local.resolve())
    if path == root:
        return source
    if path.startswith(root + "/"):
        return source.rstrip("/") + path[len(root) :]
    return path



def _short(file_url: str, local: Path | None, source: str) -> str:
    """A file inside the input folder by its name there (the message already names the folder)."""
    shown = _display_file(file_url, local, source)
    prefix = source.rstrip("/") + "/"
    return shown[len(prefix):] if shown.startswith(prefix) else shown


def _too_many(frame, condition, example_condition, *, what: str, count: int, total: int, setting: str,
              threshold: float, detail: str, fmt: str, sep: str, local: Path | None, source: str,
              num_inputs: int) -> UserError:
    """The error for a share of rows over its limit: the file when there is one, else the count over all files
    with the worst ones, and an example row. Costs one more pass over the input (only on this failure path)."""
    from pyspark.sql import functions as F

    file_path = F.col("_metadata.file_path")
    example = frame.where(example_condition).select(file_path.alias("file"), _row_text(frame, fmt, sep).alias("row")).first()
    per_file: list[tuple[str, int, int]] = []
    if num_inputs != 1:
        rows = (
            frame.groupBy(file_path.alias("file"))
            .agg(F.count(F.lit(1)).alias("rows"), F.sum(F.when(condition, 1).otherwise(0)).alias("hits"))
            .collect()
        )
        per_file = sorted(((r["file"], int(r["hits"]), int(r["rows"])) for r in rows), key=lambda t: (-t[1], t[0]))
    share = f"({count / total:.2%} > {setting} {threshold:g})"
    if len(per_file) <= 1:
        where = _display_file(per_file[0][0], local, source) if per_file else (
            _display_file(example["file"], local, source) if example is not None else source
        )
        message = f"{where}: {count:,} of {total:,} rows {what} {share}; {detail}"
        return UserError(message + (f", e.g. row {example['row']!r}" if example is not None else ""))
    worst = [f for f in per_file if f[1]]
    shown = ", ".join(f"{_short(f, local, source)} ({hits:,} of {rows:,})" for f, hits, rows in worst[:WORST_FILES_SHOWN])
    more = len(worst) - WORST_FILES_SHOWN
    message = (
        f"{source}: {count:,} of {total:,} rows in {len(per_file):,} files {what} {share}; {detail}; "
        f"worst files: {shown}" + (f" and {more:,} more" if more > 0 else "")
    )
    if example is not None:
        message += f"; e.g. row {example['row']!r} in {_short(example['file'], local, source)}"
    return UserError(message)


def read_interactions(
    spark,
    local_path: str | Path | None,
    output: str,
    *,
    source: str,
    schema: InputSchema | None = None,
    spark_path: str | None = None,
) -> ReadResult:
    """Read, validate and deduplicate one input in a single pass over it.

    Kept rows become one row per (user_id, item_id) -- ts = the first time the user met the item, count = its
    rows, weight = their summed (or largest) weight -- written as Parquet to `output` together with one summary
    row per status of the other rows. `local_path` is a local file/directory (None when Spark reads
    `spark_path` itself, e.g. `s3a://`); `source` is the URI the user gave, used in messages.
    """
    from pyspark.sql import functions as F

    schema = schema or InputSchema()
    local = Path(local_path) if local_path is not None else None
    if local is not None:
        if not local.exists():
            raise UserError(f"{source}: no such file or directory")
        fmt = detect_format(local, schema.format, source)
        files = [str(f) for f in _data_files(local)] if fmt != "movielens" else [str(_movielens_file(local))]
        spark_path = str(local)
    else:
        if spark_path is None:
            raise UserError(f"{source}: nothing to read")
        fmt = schema.format if schema.format != "auto" else _EXTENSION_FORMATS.get(_extension(Path(spark_path)), "")
        if not fmt:
            raise UserError(f"{source}: cannot tell the input format; pass --input-format ({', '.join(FORMATS[1:])})")
        files = [spark_path]
    schema = _check_jvm_settings(spark, schema)

    frame, mapping, num_fields, sep = _raw_frame(spark, local, spark_path, fmt, schema, source)
    status, user, item, ts, units = _classify(frame, fmt, mapping, schema, num_fields, sep, source)
    kept = status.isNull()
    # Only fixed-width aggregates here: Spark's fast hash aggregation; bad-row examples are fetched on failure.
    grouped = (
        frame.select(
            F.when(kept, user).alias("user_id"),
            F.when(kept, item).alias("item_id"),
            status.alias("status"),
            ts.alias("ts"),
            F.when(kept, units).alias("units"),
        )
        .groupBy("user_id", "item_id", "status")
        .agg(
            F.min("ts").alias("ts"),
            F.count(F.lit(1)).alias("rows"),
            (F.try_sum("units") if schema.repeat_weight == "sum" else F.max("units")).alias("units"),
        )
    )
    grouped.write.mode("overwrite").parquet(output)
    written = spark.read.parquet(output)
    summary = written.groupBy("status").agg(F.sum("rows").alias("rows"), F.count(F.lit(1)).alias("groups"))
    by_status = {row["status"]: row for row in summary.collect()}
    num_rows = sum(row["rows"] for row in by_status.values())
    rows_of = {status: row["rows"] for status, row in by_status.items()}
    bad = {s[len(BAD):]: n for s, n in rows_of.items() if s and s.startswith(BAD)}
    filtered = {s[len(FILTERED):]: n for s, n in rows_of.items() if s and s.startswith(FILTERED)}
    num_bad, num_anonymous = sum(bad.values()), rows_of.get(ANONYMOUS, 0)
    if num_rows == 0:
        raise UserError(f"{source}: no rows to read (empty input)")
    limits = dict(fmt=fmt, sep=sep, local=local, source=source, num_inputs=len(files) if local is not None else 0)
    if num_bad and num_bad / num_rows > schema.max_bad_fraction:
        worst = max(bad, key=bad.get)
        detail = f"most common: {worst}"
        if worst.startswith("bad encoding"):
            detail += f" (is the log in another encoding? set {schema.label('csv_encoding')}, e.g. latin1)"
        raise _too_many(
            frame, status.startswith(BAD), status == BAD + worst, what="are malformed", count=num_bad, total=num_rows,
            setting=schema.label("max_bad_fraction"), threshold=schema.max_bad_fraction, detail=detail, **limits,
        )
    if num_anonymous and num_anonymous / num_rows > schema.max_anonymous_fraction:
        raise _too_many(
            frame, status == ANONYMOUS, status == ANONYMOUS, what=f"have no user id ({mapping.user})",
            count=num_anonymous, total=num_rows, setting=schema.label("max_anonymous_fraction"),
            threshold=schema.max_anonymous_fraction,
            detail=f"check that {schema.label('user_col')} names the user column (rows without one, e.g. guest "
                   "checkouts, are dropped as anonymous)", **limits,
        )
    if num_bad == num_rows:
        raise UserError(f"{source}: no valid rows ({num_bad:,} malformed)")
    if None not in by_status:
        removed = [f"{num_bad:,} malformed", f"{num_anonymous:,} anonymous",
                   f"{rows_of.get(CANCELLED, 0):,} cancelled", f"{rows_of.get(RETURNED, 0):,} returned",
                   *(f"{n:,} filtered ({rule})" for rule, n in sorted(filtered.items(), key=lambda kv: -kv[1]))]
        raise UserError(f"{source}: no interactions left of {num_rows:,} rows: {', '.join(removed)}")
    pairs = written.where(F.col("status").isNull()).select(
        "user_id", "item_id", "ts", F.col("rows").alias("count"), (F.col("units") / WEIGHT_SCALE).alias("weight")
    )
    return ReadResult(
        pairs=pairs,
        format=fmt,
        files=files,
        num_rows=num_rows,
        num_bad_rows=num_bad,
        bad_rows_by_reason=bad,
        num_anonymous_rows=num_anonymous,
        num_cancelled_rows=rows_of.get(CANCELLED, 0),
        num_returned_rows=rows_of.get(RETURNED, 0),
        filtered_rows_by_rule=filtered,
        num_events=by_status[None]["rows"],
        num_pairs=by_status[None]["groups"],
    )
