"""Raw interaction logs -> one versioned training partition `<storage_root>/data/dt=<run_date>/`.

validate -> deduplicate -> minimum interactions per user/item -> contiguous indices -> leave-one-out split ->
test negatives -> write atomically (the partition contract in docs/ARCHITECTURE.md, `_SUCCESS` last).

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

from ncf import storage
from ncf.config import add_arguments, from_namespace, param
from ncf.errors import UserError, exit_on_user_error
from spark.readers import FORMATS, TIMESTAMP_UNITS, ColumnMapping, detect_format, read_interactions

SCHEMA_VERSION = 1
# Passes of the iterative minimum-interaction filter before giving up on an exact fixed point.
MAX_FILTER_PASSES = 20


@dataclasses.dataclass
class PreprocessConfig:
    input_uri: str = param(help="raw interaction log: file or directory, local or s3:// (s3a:// with S3A)", pipeline=True)
    storage_root: str = param("runs", "root of the platform's storage; the partition goes to <root>/data/dt=<run_date>", pipeline=True)
    run_date: str = param("", "partition date YYYY-MM-DD; default: today (UTC)", pipeline=True)
    input_format: str = param("auto", "input format; auto = from the file names", choices=FORMATS)
    user_col: str = param("user_id", "user id column (generic formats)")
    item_col: str = param("item_id", "item id column (generic formats)")
    timestamp_col: str = param("ts", "timestamp column: epoch s / ms or ISO-8601 (generic formats)")
    event_type_col: str = param("event_type", "optional event type column, used when present")
    weight_col: str = param("weight", "optional numeric weight column, used when present (MovieLens: rating)")
    timestamp_unit: str = param("auto", "how to read timestamps; auto: numbers >= 1e11 are ms, text is ISO-8601", choices=TIMESTAMP_UNITS)
    csv_delimiter: str = param(",", "CSV field delimiter (generic CSV)")
    event_types: str = param("", "comma-separated event types that count as interactions; empty: all")
    min_weight: float | None = param(None, "drop interactions whose weight is below this (e.g. 4 for 'liked' ratings)")
    min_user_interactions: int = param(5, "drop users with fewer interactions (applied with the item rule until both hold); <=1: off")
    min_item_interactions: int = param(5, "drop items with fewer interactions; <=1: off")
    num_test_negatives: int = param(99, "sampled negatives per test user")
    seed: int = param(42, "seed of the negative sampling")
    max_bad_fraction: float = param(0.01, "fail when more than this fraction of input rows is malformed")
    master: str = param("", "Spark master URL; default: spark-submit's --master, else local[*]")
    scratch_dir: str = param("", "where Spark writes intermediates; default: a local temp dir (use shared storage on a cluster)")


@dataclasses.dataclass
class PreprocessResult:
    partition_uri: str
    stats: dict[str, Any]


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


def run(config: PreprocessConfig) -> PreprocessResult:
    from spark.negatives import test_negatives
    from spark.session import get_spark

    run_date = _validate(config)
    partition_uri = storage.partition_uri(config.storage_root, run_date)
    stage = _Stages()
    started = time.perf_counter()
    mapping = ColumnMapping(config.user_col, config.item_col, config.timestamp_col, config.event_type_col, config.weight_col)
    event_types = [t.strip() for t in config.event_types.split(",") if t.strip()]
    direct = config.input_uri.startswith("s3a://")

    with contextlib.ExitStack() as stack:
        with stage("stage_input"):
            local_input = None if direct else stack.enter_context(storage.local_copy(config.input_uri))
        if local_input is not None:  # fail on a bad format before paying for a Spark start
            detect_format(local_input, config.input_format, config.input_uri)
        with stage("spark_start"):
            spark = get_spark(config.master, app_name="ncf-preprocess")
        scratch = stack.enter_context(_scratch(config.scratch_dir))
        staging = stack.enter_context(storage.staged_output(partition_uri))
        # Spark writes the tables where every executor can: the staging dir in local mode, else shared scratch
        out = str(staging) if _is_local(scratch) else f"{scratch}/partition"
        with stage("read_deduplicate"):
            read = read_interactions(
                spark,
                local_input,
                f"{scratch}/pairs",
                source=config.input_uri,
                input_format=config.input_format,
                mapping=mapping,
                timestamp_unit=config.timestamp_unit,
                csv_delimiter=config.csv_delimiter,
                event_types=event_types,
                min_weight=config.min_weight,
                max_bad_fraction=config.max_bad_fraction,
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
                pairs.join(user_map, "user_id").join(item_map, "item_id").select("user_idx", "item_idx", "ts"),
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
        if not _is_local(scratch):
            storage.download(out, staging)
        for checksum in staging.rglob(".*.crc"):
            checksum.unlink()
        stats = {
            "schema_version": SCHEMA_VERSION,
            "run_date": run_date,
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
                }
            ],
            "num_events": read.num_events,
            "num_events_filtered_out": read.num_filtered_rows,
            "num_unique_interactions": read.num_pairs,
            "filter": {
                "min_user_interactions": config.min_user_interactions,
                "min_item_interactions": config.min_item_interactions,
                "passes": passes,
                "interactions_removed": read.num_pairs - num_kept,
            },
            "users_without_test": num_users - num_test,
            "event_types": event_types or "all",
            "min_weight": config.min_weight,
            "spark_master": spark.sparkContext.master,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with stage("publish"):
            stats["stage_seconds"] = stage.seconds
            stats["seconds"] = round(time.perf_counter() - started, 3)
            storage.write_json(staging / "stats.json", stats)
            stack.close()  # publish the staged partition (then drop the scratch dir)
    stats["stage_seconds"] = stage.seconds
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return PreprocessResult(partition_uri, stats)


def _summary(result: PreprocessResult) -> str:
    s = result.stats
    return (
        f"wrote {result.partition_uri}: {s['num_users']:,} users, {s['num_items']:,} items, "
        f"{s['num_train']:,} train / {s['num_test']:,} test interactions, sparsity {s['sparsity']:.4f}, "
        f"{s['inputs'][0]['bad_rows']:,} malformed rows dropped, {s['seconds']:.1f}s"
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
