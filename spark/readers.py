"""Raw interaction logs -> one validated Spark DataFrame of events.

Formats: MovieLens (`u.data` tab, `ratings.dat` `::`, `ratings.csv` with header; every rating is an implicit
interaction, the rating becomes the weight) and generic event logs in CSV, Parquet or JSON Lines with a column
mapping. Timestamps may be epoch seconds / milliseconds / microseconds / nanoseconds, ISO-8601 text (no offset = UTC) or
timestamp columns.

Malformed rows (wrong number of fields, missing user/item id, unparsable timestamp or weight) are counted and
dropped. More than `max_bad_fraction` of them fails the read with the file and an example row.
Validation and deduplication happen in one pass over the input (it is read exactly once).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ncf.errors import UserError

FORMATS = ("auto", "movielens", "csv", "parquet", "jsonl")
TIMESTAMP_UNITS = ("auto", "s", "ms", "iso")
CORRUPT = "_corrupt_record"
FILTERED = "_filtered"  # status of valid rows that --event-types / --min-weight leave out
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


@dataclasses.dataclass(frozen=True)
class ColumnMapping:
    """Input column names. `event_type` and `weight` are optional: used when the input has them."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "ts"
    event_type: str = "event_type"
    weight: str = "weight"


@dataclasses.dataclass
class ReadResult:
    pairs: Any  # DataFrame[user_id string, item_id string, ts bigint]: one row per (user, item)
    format: str
    files: list[str]
    num_rows: int  # rows read, good and bad
    num_bad_rows: int
    bad_rows_by_reason: dict[str, int]
    num_filtered_rows: int  # valid rows of other event types / lower weights
    num_events: int  # valid rows kept (before deduplication)
    num_pairs: int  # distinct (user, item) pairs


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


def _check_columns(available: list[str], mapping: ColumnMapping, source: str) -> None:
    for role, column in (("user", mapping.user), ("item", mapping.item), ("timestamp", mapping.timestamp)):
        if column not in available:
            raise UserError(
                f"{source}: missing {role} column {column!r} (columns: {', '.join(available)}); "
                f"map it with --{role}-col"
            )


def _csv_frame(spark, path: str, columns: list[str], sep: str, header: bool):
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField(c, T.StringType()) for c in [*columns, CORRUPT]])
    return (
        spark.read.option("sep", sep)
        .option("header", header)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .schema(schema)
        .csv(path)
    )


def _raw_frame(spark, local: Path | None, spark_path: str, fmt: str, mapping: ColumnMapping, csv_delimiter: str, source: str):
    """(DataFrame, effective mapping) for one input; every frame gets a `_corrupt_record` column."""
    from pyspark.sql import functions as F

    if fmt == "movielens":
        ratings = _movielens_file(local) if local is not None else Path(spark_path)
        if ratings is None:
            raise UserError(f"{source}: no MovieLens ratings file found")
        path = str(ratings) if local is not None else spark_path
        name = ratings.name.lower()
        if name.endswith(".csv"):
            frame = _csv_frame(spark, path, ["userId", "movieId", "rating", "timestamp"], ",", True)
            frame = frame.toDF(*_MOVIELENS_COLUMNS, CORRUPT)
        else:
            frame = _csv_frame(spark, path, _MOVIELENS_COLUMNS, "::" if name.endswith(".dat") else "\t", False)
        return frame, ColumnMapping("user", "item", "timestamp", event_type="", weight="rating")

    if fmt == "csv":
        sep = "\t" if csv_delimiter == "," and spark_path.lower().endswith(".tsv") else csv_delimiter
        header_row = spark.read.option("sep", sep).option("header", True).csv(spark_path).columns
        _check_columns(header_row, mapping, source)
        return _csv_frame(spark, spark_path, header_row, sep, True), mapping

    if fmt == "parquet":
        try:
            frame = spark.read.parquet(spark_path)
        except Exception as exc:
            raise UserError(f"{source}: unreadable Parquet ({str(exc).splitlines()[0]})") from exc
        _check_columns(frame.columns, mapping, source)
        return frame.withColumn(CORRUPT, F.lit(None).cast("string")), mapping

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
        _check_columns(sorted(keys), mapping, source)
        wanted = [mapping.user, mapping.item, mapping.timestamp]
        wanted += [c for c in (mapping.event_type, mapping.weight) if c and c in keys]
        schema = T.StructType([T.StructField(c, T.StringType()) for c in [*wanted, CORRUPT]])
        frame = (
            spark.read.option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .schema(schema)
            .json(spark_path)
        )
        return frame, mapping

    raise UserError(f"{source}: unknown input format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _epoch_seconds(column, dtype: str, unit: str):
    """Epoch seconds (bigint) from a numeric, timestamp or text column; NULL when unparsable."""
    from pyspark.sql import functions as F

    if dtype in ("timestamp", "timestamp_ntz", "date"):
        return F.unix_timestamp(column.cast("timestamp"))
    text = column.cast("string")
    numeric = dtype in ("tinyint", "smallint", "int", "bigint", "float", "double") or dtype.startswith("decimal")
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
    path = file_url.removeprefix("file://").removeprefix("file:")
    if local is None:
        return file_url
    root = str(local.resolve())
    if path == root:
        return source
    if path.startswith(root + "/"):
        return source.rstrip("/") + path[len(root) :]
    return path


def read_interactions(
    spark,
    local_path: str | Path | None,
    output: str,
    *,
    source: str,
    input_format: str = "auto",
    mapping: ColumnMapping | None = None,
    timestamp_unit: str = "auto",
    csv_delimiter: str = ",",
    event_types: list[str] | tuple[str, ...] = (),
    min_weight: float | None = None,
    max_bad_fraction: float = 0.01,
    spark_path: str | None = None,
) -> ReadResult:
    """Read, validate and deduplicate one input in a single pass over it.

    Valid rows of the wanted event types / weights become one row per (user_id, item_id) with ts = the first
    time the user met the item, written as Parquet to `output` (together with one summary row per kind of
    bad row). `local_path` is a local file/directory (None when Spark reads `spark_path` itself, e.g.
    `s3a://`); `source` is the URI the user gave, used in messages.
    """
    from pyspark.sql import functions as F

    mapping = mapping or ColumnMapping()
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise UserError(f"--timestamp-unit {timestamp_unit!r}: choose one of {', '.join(TIMESTAMP_UNITS)}")
    if not 0 <= max_bad_fraction <= 1:
        raise UserError(f"--max-bad-fraction {max_bad_fraction}: must be between 0 and 1")
    local = Path(local_path) if local_path is not None else None
    if local is not None:
        if not local.exists():
            raise UserError(f"{source}: no such file or directory")
        fmt = detect_format(local, input_format, source)
        files = [str(f) for f in _data_files(local)] if fmt != "movielens" else [str(_movielens_file(local))]
        spark_path = str(local)
    else:
        if spark_path is None:
            raise UserError(f"{source}: nothing to read")
        fmt = input_format if input_format != "auto" else _EXTENSION_FORMATS.get(_extension(Path(spark_path)), "")
        if not fmt:
            raise UserError(f"{source}: cannot tell the input format; pass --input-format ({', '.join(FORMATS[1:])})")
        files = [spark_path]

    frame, mapping = _raw_frame(spark, local, spark_path, fmt, mapping, csv_delimiter, source)
    dtypes = dict(frame.dtypes)
    has_event = bool(mapping.event_type) and mapping.event_type in dtypes
    has_weight = bool(mapping.weight) and mapping.weight in dtypes
    if event_types and not has_event:
        raise UserError(f"{source}: --event-types given but the input has no event type column {mapping.event_type!r}")
    if min_weight is not None and not has_weight:
        raise UserError(f"{source}: --min-weight given but the input has no weight column {mapping.weight!r}")

    def text(name):
        if dtypes[name] in ("tinyint", "smallint", "int", "bigint"):  # integer ids: no blanks to trim
            return F.col(f"`{name}`").cast("string")
        value = F.trim(F.col(f"`{name}`").cast("string"))
        return F.when(value != "", value)

    user, item = text(mapping.user), text(mapping.item)
    ts = _epoch_seconds(F.col(f"`{mapping.timestamp}`"), dtypes[mapping.timestamp], timestamp_unit)
    weight = F.col(f"`{mapping.weight}`").cast("string").try_cast("double") if has_weight else None
    reason = (
        F.when(F.col(CORRUPT).isNotNull(), F.lit("wrong number of fields"))
        .when(user.isNull(), F.lit(f"missing user id ({mapping.user})"))
        .when(item.isNull(), F.lit(f"missing item id ({mapping.item})"))
        .when(ts.isNull(), F.lit(f"unparsable timestamp ({mapping.timestamp})"))
    )
    if weight is not None:
        reason = reason.when(F.col(f"`{mapping.weight}`").isNotNull() & weight.isNull(), F.lit(f"non-numeric weight ({mapping.weight})"))
    wanted = F.lit(True)
    if event_types:
        wanted = wanted & text(mapping.event_type).isin(list(event_types))
    if min_weight is not None:
        wanted = wanted & (weight >= min_weight)
    status = F.coalesce(reason, F.when(~F.coalesce(wanted, F.lit(False)), F.lit(FILTERED)))
    sep = "\t" if fmt == "movielens" and not spark_path.endswith((".csv", ".dat")) else ","
    # Only fixed-width aggregates here: Spark's fast hash aggregation; bad-row examples are fetched on failure.
    grouped = (
        frame.select(
            F.when(status.isNull(), user).alias("user_id"),
            F.when(status.isNull(), item).alias("item_id"),
            status.alias("status"),
            ts.alias("ts"),
        )
        .groupBy("user_id", "item_id", "status")
        .agg(F.min("ts").alias("ts"), F.count(F.lit(1)).alias("rows"))
    )
    grouped.write.mode("overwrite").parquet(output)
    written = spark.read.parquet(output)
    summary = written.groupBy("status").agg(F.sum("rows").alias("rows"), F.count(F.lit(1)).alias("groups"))
    by_status = {row["status"]: row for row in summary.collect()}
    num_rows = sum(row["rows"] for row in by_status.values())
    bad = {status: row["rows"] for status, row in by_status.items() if status not in (None, FILTERED)}
    num_bad = sum(bad.values())
    if num_rows == 0:
        raise UserError(f"{source}: no rows to read (empty input)")
    if num_bad and num_bad / num_rows > max_bad_fraction:
        worst = max(bad, key=bad.get)
        example = (
            frame.where(status == worst)
            .select(F.col("_metadata.file_path").alias("file"), _row_text(frame, fmt, sep).alias("row"))
            .first()
        )
        raise UserError(
            f"{_display_file(example['file'], local, source)}: {num_bad} of {num_rows} rows are malformed "
            f"({num_bad / num_rows:.2%} > --max-bad-fraction {max_bad_fraction:g}); most common: {worst}, "
            f"e.g. row {example['row']!r}"
        )
    if num_bad == num_rows:
        raise UserError(f"{source}: no valid rows ({num_bad} malformed)")
    kept = by_status.get(None)
    if kept is None:
        raise UserError(f"{source}: no interactions left after --event-types / --min-weight")
    pairs = written.where(F.col("status").isNull()).select("user_id", "item_id", "ts")
    return ReadResult(
        pairs=pairs,
        format=fmt,
        files=files,
        num_rows=num_rows,
        num_bad_rows=num_bad,
        bad_rows_by_reason=bad,
        num_filtered_rows=by_status[FILTERED]["rows"] if FILTERED in by_status else 0,
        num_events=kept["rows"],
        num_pairs=kept["groups"],
    )
