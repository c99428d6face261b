"""Raw interaction logs -> one versioned training partition `<storage_root>/data/dt=<run_date>/`.

validate -> deduplicate -> minimum interactions per user/item -> contiguous indices -> leave-one-out split ->
test negatives -> fingerprint -> publish atomically (the partition contract in docs/ARCHITECTURE.md, `_SUCCESS`
last). The input schema (spark/input_schema.py; a YAML file or flags) says how to read the raw log.

A run date's partition is immutable: re-running a date that holds other content is refused without
`--overwrite`; identical content (same fingerprint) is left as is.

    ncfctl preprocess --input-uri ../shared/datasets/ml-100k/u.data --storage-root runs --run-date 2026-01-01
    spark-submit --master k8s://... spark/preprocess.py --input-uri s3a://bucket/logs/ --storage-root s3a://bucket/ncf

Every stage is a Spark job over DataFrames: nothing is collected to the driver except counts and tiny
per-partition offsets. Intermediates are written to a scratch directory and read back (a cut in the lineage,
so plans stay small and nothing is recomputed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `spark-submit spark/preprocess.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncf import contracts, storage
from ncf.config import add_arguments, from_namespace, param
from ncf.errors import UserError, exit_on_user_error
from spark.input_schema import FORMATS, REPEAT_WEIGHTS, TIMESTAMP_UNITS
from spark.input_schema import resolve as resolve_schema
from spark.readers import detect_format, read_interactions

# Passes of the iterative minimum-interaction filter before giving up on an exact fixed point.
MAX_FILTER_PASSES = 20


@dataclasses.dataclass
class PreprocessConfig:
    input_uri: str = param(help="raw interaction log: file or directory, local or s3:// (s3a:// with S3A)", pipeline=True)
    storage_root: str = param("runs", "root of the platform's storage; the partition goes to <root>/data/dt=<run_date>", pipeline=True)
    run_date: str = param("", "partition date YYYY-MM-DD; default: today (UTC)", pipeline=True)
    input_schema_uri: str = param(
        "", "input schema YAML (columns, format, events, filters, returns, tolerances; docs/preprocessing.md): a path "
        "or s3:// URI; flags set to non-default values win over it", pipeline=True)
    overwrite: bool = param(
        False, "replace the run date's partition when it exists with different content (default: refuse; identical "
        "content is always left as is)", pipeline=True)
    input_format: str = param("auto", "input format; auto = from the file names", choices=FORMATS)
    user_col: str = param("user_id", "user id column (generic formats); rows without one are anonymous")
    item_col: str = param("item_id", "item id column (generic formats)")
    timestamp_col: str = param("ts", "timestamp column: epoch s / ms or ISO-8601 (generic formats)")
    event_type_col: str = param("event_type", "optional event type column, used when present")
    weight_col: str = param("weight", "optional numeric weight column, used when present (MovieLens: rating)")
    order_col: str = param("", "optional order id column, read by --cancelled-orders")
    quantity_col: str = param("", "optional quantity column: rows with a negative quantity are returns, dropped")
    timestamp_unit: str = param("auto", "how to read timestamps; auto: numbers >= 1e11 are ms, text is ISO-8601", choices=TIMESTAMP_UNITS)
    timestamp_format: str = param("", "pattern of text timestamps (Spark datetime pattern, e.g. 'M/d/yyyy H:mm'); empty: ISO-8601")
    csv_delimiter: str = param(",", "CSV field delimiter (generic CSV)")
    csv_encoding: str = param("utf-8", "character encoding of CSV files (e.g. latin1, windows-1252)")
    event_types: str = param("", "event types that count, with optional weights: 'purchase,cart' or 'view=1,cart=2,purchase=4'; empty: all, weight 1")
    min_weight: float | None = param(None, "drop rows whose weight (weight column x event weight) is below this (e.g. 4 for 'liked' ratings)")
    cancelled_orders: str = param("", "regex: rows whose order id matches are cancellations, dropped (e.g. '^C')")
    repeat_weight: str = param("sum", "weight of an interaction collapsed from repeated rows: sum or max of theirs", choices=REPEAT_WEIGHTS)
    min_user_interactions: int = param(5, "drop users with fewer interactions (applied with the item rule until both hold); <=1: off")
    min_item_interactions: int = param(5, "drop items with fewer interactions; <=1: off")
    num_test_negatives: int = param(99, "sampled negatives per test user")
    seed: int = param(42, "seed of the negative sampling")
    max_bad_fraction: float = param(0.01, "fail when more than this fraction of input rows is malformed")
    max_anonymous_fraction: float = param(0.5, "fail when more than this fraction of input rows has no user id")
    master: str = param("", "Spark master URL; default: spark-submit's --master, else local[*]")
    scratch_dir: str = param(
        "", "where Spark writes intermediates and the finished tables; default: a local temp dir (on a cluster: storage "
        "every executor sees, e.g. s3a:// or a shared mount)")


@dataclasses.dataclass
class PreprocessResult:
    partition_uri: str
    stats: dict[str, Any]  # the published partition's stats.json
    outcome: str = "published"  # published | replaced (--overwrite) | identical (the date already held this content)


class _Stages:
    """Wall-clock seconds per stage, reported in stats.json and by the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)


def _validate(config: PreprocessConfig) -> str:
    run_date = config.run_date or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    try:
        dt.datetime.strptime(run_date, "%Y-%m-%d")
    except ValueError as exc:
        raise UserError(f"--run-date {run_date!r}: expected YYYY-MM-DD") from exc
    if config.num_test_negatives < 1:
        raise UserError(f"--num-test-negatives {config.num_test_negatives}: must be at least 1")
    if not config.input_uri:
        raise UserError("--input-uri is required")
    if storage.is_s3(config.storage_root) and config.storage_root.startswith("s3a://"):
        raise UserError(
            f"--storage-root {config.storage_root}: write partitions to s3:// (staged and published atomically); "
            "s3a:// is for inputs read by Spark directly"
        )
    return run_date


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file:")


@contextlib.contextmanager
def _scratch(base: str) -> Iterator[str]:
    if not _is_local(base):
        if not storage.is_s3(base):
            raise UserError(f"--scratch-dir {base}: use a local path or s3a:// (shared storage for a cluster)")
        yield f"{base.rstrip('/')}/ncf-preprocess-{uuid.uuid4().hex[:12]}"  # expire with a lifecycle rule
        return
    local = Path(tempfile.mkdtemp(prefix="ncf-preprocess-", dir=base or None))
    try:
        yield str(local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _checkpoint(frame, path: str):
    """Write a DataFrame and read it back: later stages start from files, not from a growing plan."""
    frame.write.mode("overwrite").parquet(path)
    return frame.sparkSession.read.parquet(path)


def id_counts(pairs):
    """DataFrame[kind int (0 user, 1 item), id string, n long]: interactions per user and per item."""
    from pyspark.sql import functions as F

    # two single-key aggregations beat one over exploded (kind, id) rows by ~30% (measured)
    per = [
        pairs.groupBy(F.col(column).alias("id")).agg(F.count(F.lit(1)).alias("n")).select(F.lit(kind).alias("kind"), "id", "n")
        for kind, column in ((0, "user_id"), (1, "item_id"))
    ]
    return per[0].union(per[1])


def filter_min_interactions(pairs, num_pairs: int, min_user: int, min_item: int, scratch: str) -> tuple[Any, Any, int, int]:
    """Drop users / items with too few interactions until both rules hold.

    Returns (pairs, id counts of those pairs, filtering passes, number of pairs). Each pass that removes
    something is written out and read back, so the plan never grows with the number of passes.
    """
    from pyspark.sql import functions as F

    too_few = ((F.col("kind") == 0) & (F.col("n") < min_user)) | ((F.col("kind") == 1) & (F.col("n") < min_item))
    for passes in range(MAX_FILTER_PASSES + 1):
        counts = _checkpoint(id_counts(pairs), f"{scratch}/counts-{passes}")
        if counts.where(too_few).isEmpty():
            return pairs, counts, passes, num_pairs
        kept = counts.where(~too_few)
        pairs = _checkpoint(
            pairs.join(kept.where(F.col("kind") == 0).select(F.col("id").alias("user_id")), "user_id", "left_semi")
            .join(kept.where(F.col("kind") == 1).select(F.col("id").alias("item_id")), "item_id", "left_semi"),
            f"{scratch}/filtered-{passes}",
        )
        num_pairs = pairs.count()
        if num_pairs == 0:
            return pairs, counts.limit(0), passes + 1, 0
    raise UserError(
        f"minimum-interaction filter did not converge in {MAX_FILTER_PASSES} passes; lower "
        "--min-user-interactions / --min-item-interactions"
    )


def index_ids(counts, scratch: str, user_output: str, item_output: str) -> tuple[Any, int, Any, int]:
    """Contiguous indices from 0 for the users and items in `counts` (see `id_counts`), written as the
    `user_map` / `item_map` tables. Returns (user_map, num_users, item_map, num_items).

    Ids are ordered by (length, id), so numeric ids keep their natural order. One distributed sort over
    users-then-items gives every Spark partition a contiguous range of that order; a row's global position is
    its partition's offset plus its position inside it (only one count per partition reaches the driver).
    """
    from pyspark.sql import functions as F

    spark = counts.sparkSession
    ordered = counts.orderBy("kind", F.length("id"), "id").select(
        "kind", "id", F.spark_partition_id().alias("part"), F.monotonically_increasing_id().alias("mid")
    )
    located = _checkpoint(ordered, f"{scratch}/ids-located")
    sizes = located.groupBy("part", "kind").agg(F.count(F.lit(1)).alias("n")).collect()
    per_part: dict[int, int] = {}
    for row in sizes:
        per_part[row["part"]] = per_part.get(row["part"], 0) + row["n"]
    num_users = sum(row["n"] for row in sizes if row["kind"] == 0)
    num_items = sum(row["n"] for row in sizes if row["kind"] == 1)
    offsets, total = [], 0
    for part in sorted(per_part):
        offsets.append((part, total))
        total += per_part[part]
    offset_frame = spark.createDataFrame(offsets, "part int, offset long")
    position = F.col("mid") - F.shiftleft(F.col("part").cast("long"), 33)  # mid = part << 33 | position
    # users occupy global positions [0, num_users), items the rest
    index = (F.col("offset") + position - F.col("kind") * num_users).cast("int")
    indexed = located.join(F.broadcast(offset_frame), "part").select("kind", "id", index.alias("idx"))
    maps = []
    for kind, name, output in ((0, "user", user_output), (1, "item", item_output)):
        table = indexed.where(F.col("kind") == kind).select(F.col("id").alias(f"{name}_id"), F.col("idx").alias(f"{name}_idx"))
        maps.append(_checkpoint(table.coalesce(1), output))
    return maps[0], num_users, maps[1], num_items


def split_leave_one_out(interactions, num_items: int, num_negatives: int):
    """(train, test): each user's latest interaction is the test item (ties: the larger item index).

    Only users with at least two interactions and at least `num_negatives` unseen items get a test row;
    the others keep all their interactions in train.
    """
    from pyspark.sql import functions as F

    per_user = interactions.groupBy("user_idx").agg(
        F.max(F.struct("ts", "item_idx")).alias("latest"), F.count(F.lit(1)).alias("n")
    )
    test = per_user.where((F.col("n") >= 2) & (F.lit(num_items) - F.col("n") >= num_negatives)).select(
        "user_idx", F.col("latest.item_idx").alias("item_idx")
    )
    train = interactions.join(test, ["user_idx", "item_idx"], "left_anti")
    return train, test


FINGERPRINT_TABLES = ("train", "test", "test_negatives", "user_map", "item_map")


def partition_fingerprint(spark, root: str) -> tuple[str, dict[str, Any]]:
    """(fingerprint, per-table stats) of the tables under `root`: for each table its row count and the sum of
    xxhash64 over its rows (columns in name order), hashed together with sha256.

    Independent of row order, file layout and Spark partitioning, so the same content gives the same fingerprint
    on any master. One Spark job; five rows reach the driver.
    """
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    parts, columns = [], {}
    for name in FINGERPRINT_TABLES:
        table = spark.read.parquet(f"{root}/{name}")
        columns[name] = sorted(table.columns)
        parts.append(
            table.agg(
                F.count(F.lit(1)).alias("rows"),
                F.sum(F.xxhash64(*columns[name]).cast("decimal(20,0)")).alias("hash_sum"),
            ).select(F.lit(name).alias("table"), "rows", "hash_sum")
        )
    tables = {
        row["table"]: {"rows": row["rows"], "xxhash64_sum": str(row["hash_sum"] or 0), "columns": columns[row["table"]]}
        for row in functools.reduce(DataFrame.union, parts).collect()
    }
    content = json.dumps({"schema_version": contracts.PARTITION_SCHEMA_VERSION, "tables": tables}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest(), tables


def _published(partition_uri: str) -> dict[str, Any] | None:
    """stats.json of the complete partition at `partition_uri`, None when there is none."""
    if not storage.is_complete(partition_uri):
        return None
    return storage.read_json(storage.join(partition_uri, contracts.PARTITION_STATS))


def _publish(tables: Path, partition_uri: str, stats: dict[str, Any], before: dict[str, Any] | None,
             overwrite: bool) -> tuple[str, dict[str, Any]]:
    """Publish the finished partition unless the date holds other content; returns (outcome, published stats).

    Under the partition's lock (runs of one date publish one at a time): identical content is left as is; other
    content is replaced only with `overwrite`, and only if it is still what this run saw when it started, so of
    two overlapping runs at most one publishes and the other fails naming the fingerprints.
    """
    ours = stats["fingerprint"]
    with storage.exclusive(partition_uri):
        current = _published(partition_uri)
        if current is not None:
            theirs = current.get("fingerprint", "")
            if theirs == ours:
                return "identical", current
            described = f"fingerprint {theirs[:12]}" if theirs else "no fingerprint: written by an older version"
            if before is None or before.get("fingerprint", "") != theirs:
                raise UserError(
                    f"{partition_uri}: another run published this date while this one ran ({described}; this run's "
                    f"{ours[:12]}); nothing written. Re-run to compare again"
                )
            if not overwrite:
                raise UserError(
                    f"{partition_uri}: the partition exists with different content ({described}; this run's "
                    f"{ours[:12]}); models trained on it would be scored on data they never saw. Pass --overwrite true "
                    "(pipeline parameter overwrite=true) to replace it, or choose another --run-date"
                )
        storage.publish_dir(tables, partition_uri)
    return ("replaced" if current is not None else "published"), stats


def run(config: PreprocessConfig) -> PreprocessResult:
    from pyspark.sql import functions as F

    from spark.negatives import test_negatives
    from spark.session import get_spark

    run_date = _validate(config)
    schema = resolve_schema(config)
    partition_uri = contracts.partition_uri(config.storage_root, run_date)
    stage = _Stages()
    started = time.perf_counter()
    direct = config.input_uri.startswith("s3a://")
    before = _published(partition_uri)  # what the date holds as this run starts

    with contextlib.ExitStack() as stack:
        with stage("stage_input"):
            local_input = None if direct else stack.enter_context(storage.local_copy(config.input_uri))
        if local_input is not None:  # fail on a bad format before paying for a Spark start
            detect_format(local_input, schema.format, config.input_uri)
        with stage("spark_start"):
            spark = get_spark(config.master, app_name="ncf-preprocess")
        scratch = stack.enter_context(_scratch(config.scratch_dir))
        staging = stack.enter_context(storage.staging_dir(partition_uri))
        # With --scratch-dir (a cluster's shared storage) Spark writes the tables there, where every executor can;
        # by default straight into the staging directory next to the destination.
        out = f"{scratch}/partition" if config.scratch_dir else str(staging)
        with stage("read_deduplicate"):
            read = read_interactions(
                spark,
                local_input,
                f"{scratch}/pairs",
                source=config.input_uri,
                schema=schema,
                spark_path=config.input_uri if direct else None,
            )
        with stage("filter"):
            pairs, counts, passes, num_kept = filter_min_interactions(
                read.pairs, read.num_pairs, config.min_user_interactions, config.min_item_interactions, scratch
            )
        if num_kept == 0:
            raise UserError(
                f"{config.input_uri}: no interactions left after the minimum-interaction filter "
                f"(users >= {config.min_user_interactions}, items >= {config.min_item_interactions})"
            )
        with stage("index"):
            user_map, num_users, item_map, num_items = index_ids(counts, scratch, f"{out}/user_map", f"{out}/item_map")
            interactions = _checkpoint(
                pairs.join(user_map, "user_id").join(item_map, "item_id").select(
                    "user_idx", "item_idx", "ts", F.col("count").cast("int").alias("count"),
                    F.col("weight").cast("float").alias("weight"),
                ),
                f"{scratch}/interactions",
            )
        with stage("split"):
            train, test = split_leave_one_out(interactions, num_items, config.num_test_negatives)
            test = _checkpoint(test, f"{out}/test")
            train.write.parquet(f"{out}/train")
            num_test = test.count()
        with stage("negatives"):
            test_negatives(interactions, test, num_items, config.num_test_negatives, config.seed).write.parquet(
                f"{out}/test_negatives"
            )
        with stage("fingerprint"):
            fingerprint, fingerprint_tables = partition_fingerprint(spark, out)
        if not config.scratch_dir:
            tables = staging
        elif _is_local(scratch):
            tables = Path(scratch.removeprefix("file:")) / "partition"
        else:
            tables = storage.download(out, staging)
        for checksum in tables.rglob(".*.crc"):
            checksum.unlink()
        stats = {
            "schema_version": contracts.PARTITION_SCHEMA_VERSION,
            "run_date": run_date,
            "fingerprint": fingerprint,
            "fingerprint_tables": fingerprint_tables,
            "num_users": num_users,
            "num_items": num_items,
            "num_train": num_kept - num_test,
            "num_test": num_test,
            "num_test_negatives": config.num_test_negatives,
            "sparsity": 1.0 - num_kept / (num_users * num_items),
            "seed": config.seed,
            "inputs": [
                {
                    "uri": config.input_uri,
                    "format": read.format,
                    "files": len(read.files),
                    "rows": read.num_rows,
                    "bad_rows": read.num_bad_rows,
                    "bad_rows_by_reason": read.bad_rows_by_reason,
                    "anonymous_rows": read.num_anonymous_rows,
                    "cancelled_rows": read.num_cancelled_rows,
                    "returned_rows": read.num_returned_rows,
                    "filtered_rows": read.num_filtered_rows,
                    "filtered_rows_by_rule": read.filtered_rows_by_rule,
                    "kept_rows": read.num_events,
                }
            ],
            "input_schema": {"uri": schema.uri, **schema.as_file()},
            "num_events": read.num_events,
            "num_events_filtered_out": read.num_filtered_rows,
            "num_repeat_events": read.num_repeat_events,
            "num_unique_interactions": read.num_pairs,
            "filter": {
                "min_user_interactions": config.min_user_interactions,
                "min_item_interactions": config.min_item_interactions,
                "passes": passes,
                "interactions_removed": read.num_pairs - num_kept,
            },
            "users_without_test": num_users - num_test,
            "event_types": dict(schema.event_weights) or "all",
            "min_weight": schema.min_weight,
            "spark_master": spark.sparkContext.master,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with stage("publish"):
            stats["stage_seconds"] = stage.seconds
            stats["seconds"] = round(time.perf_counter() - started, 3)
            storage.write_json(tables / contracts.PARTITION_STATS, stats)
            outcome, published = _publish(tables, partition_uri, stats, before, config.overwrite)
    if outcome != "identical":
        published["stage_seconds"] = stage.seconds
        published["seconds"] = round(time.perf_counter() - started, 3)
    return PreprocessResult(partition_uri, published, outcome)


def _summary(result: PreprocessResult) -> str:
    s = result.stats
    if result.outcome == "identical":
        return (
            f"{result.partition_uri} already holds this content (fingerprint {s['fingerprint'][:12]}, written "
            f"{s.get('created_at', '?')}): left as is"
        )
    read = s["inputs"][0]
    replaced = " (replaced the previous content)" if result.outcome == "replaced" else ""
    return (
        f"wrote {result.partition_uri}{replaced}: {s['num_users']:,} users, {s['num_items']:,} items, "
        f"{s['num_train']:,} train / {s['num_test']:,} test interactions, sparsity {s['sparsity']:.4f}, "
        f"{read['bad_rows']:,} malformed rows dropped, {s['seconds']:.1f}s\n"
        f"  {read['rows']:,} input rows: {read['kept_rows']:,} kept, {read['anonymous_rows']:,} anonymous (no user id), "
        f"{read['cancelled_rows']:,} cancelled, {read['returned_rows']:,} returned, {read['filtered_rows']:,} filtered, "
        f"{read['bad_rows']:,} malformed; {s['num_repeat_events']:,} repeats collapsed into "
        f"{s['num_unique_interactions']:,} interactions; fingerprint {s['fingerprint'][:12]}"
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ncfctl preprocess", description=__doc__.split("\n\n")[0])
    add_arguments(parser, PreprocessConfig)
    result = run(from_namespace(PreprocessConfig, parser.parse_args(argv)))
    print(_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
