"""Synthetic e-commerce interaction logs: the platform's default data, so a demo needs no download.

The world has topics. Each item belongs to one topic and has a power-law popularity; each user has three
favourite topics (weights 0.55 / 0.25 / 0.10) and explores the whole catalogue the remaining 10% of the time.
User activity is power-law too. Every event is a (user, item) draw from that model, typed view / cart /
purchase (on-taste items convert more often), stamped uniformly over `days` days. A recommender that learns
the users' tastes beats popularity clearly; one that learns nothing does not.

`--style retail` writes the same world as a retailer's order-line log instead: daily CSV files
`YYYY-MM-DD.csv` with the columns InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice,
CustomerID, Country, and the quirks of real ones: guest checkouts (no CustomerID), cancelled order lines (a
later invoice `C<number>` with the negative quantity), partial returns (a negative quantity on the same invoice),
postage lines (StockCode POST), and repeat purchases (the same item on several invoices, or twice on one).

Generation runs inside Spark: `spark.range(num_events)` split over partitions, each batch of event ids turned
into events by vectorized numpy. Event `e` is a pure function of (seed, e), so output is identical for a seed
whatever the partitioning or cluster. A log that is one Parquet file (up to 2M events) is generated in this
process by the same numpy code, without starting a JVM (~20 s for a demo's 20k events, against well under one);
`--engine spark` forces Spark.

    ncfctl generate --output-uri runs/raw/events --num-events 300000
    ncfctl generate --output-uri runs/raw/retail --num-events 100000 --style retail
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `spark-submit spark/generate.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from ncf import storage
from ncf.config import add_arguments, from_namespace, param
from ncf.errors import UserError, exit_on_user_error
from spark.hashing import hash_uniform

OUTPUT_FORMATS = ("parquet", "csv", "jsonl")
ENGINES = ("auto", "spark", "local")
STYLES = ("events", "retail")
EVENT_TYPES = ("view", "cart", "purchase")
TASTE_WEIGHTS = (0.55, 0.25, 0.10)  # favourite topics; the rest of the probability mass explores
USER_ACTIVITY_EXPONENT = 0.5
ITEM_POPULARITY_EXPONENT = 0.8
# P(cart), P(purchase) for on-taste vs exploratory interactions
ON_TASTE_CONVERSION = (0.17, 0.08)
EXPLORE_CONVERSION = (0.08, 0.02)
EVENTS_PER_PARTITION = 2_000_000
# Retail order lines: one order (invoice) per customer and day; shares of the lines that get an extra line
POSTAGE_FRACTION = 0.05  # a postage line (StockCode POST) on the same invoice
DUPLICATE_FRACTION = 0.03  # the same item entered twice on one invoice
COUNTRIES = ("United Kingdom",) * 8 + ("Germany", "France", "EIRE", "Spain")
COLOURS = ("RED", "BLUE", "WHITE", "PINK", "GREEN")


@dataclasses.dataclass
class GenerateConfig:
    output_uri: str = param(help="where to write the event log (local path or s3://); replaced atomically")
    num_events: int = param(300_000, "number of events to generate (10k .. 100M+)", pipeline=True)
    num_users: int = param(0, "number of users; 0 = num_events / 60")
    num_items: int = param(0, "number of items; 0 = num_events / 150")
    num_topics: int = param(0, "number of taste topics; 0 = num_items / 100, within [8, 200]")
    days: int = param(30, "time span of the events in days")
    start_date: str = param("2026-01-01", "first day of the events (UTC, YYYY-MM-DD)")
    seed: int = param(42, "random seed: same seed, same events")
    style: str = param("events", "events: view/cart/purchase events (user_id, item_id, event_type, ts); retail: a "
                       "retailer's order lines in daily files, with guests, cancellations, returns, repeats", choices=STYLES)
    output_format: str = param("auto", "file format of the log; auto: parquet for events, csv for retail",
                               choices=("auto", *OUTPUT_FORMATS))
    num_files: int = param(0, "events: number of output files; 0 = one per 2M events (retail: one file per day)")
    guest_fraction: float = param(0.25, "retail: share of orders placed by guests (no CustomerID)")
    cancel_fraction: float = param(0.02, "retail: share of order lines cancelled later (invoice C<number>, negative quantity)")
    return_fraction: float = param(0.01, "retail: share of order lines partly returned (negative quantity, same invoice)")
    master: str = param("", "Spark master URL; default: spark-submit's --master, else local[*]")
    engine: str = param("auto", "spark: generate on Spark (--master); local: in this process (numpy + pyarrow, "
                        "one Parquet file of events, no JVM to start); auto: local for a one-file Parquet events log "
                        "when no --master is given, else spark. The same events either way", choices=ENGINES)


@dataclasses.dataclass
class GenerateResult:
    output_uri: str
    num_events: int
    num_rows: int  # rows written: the events, or the order lines made of them (retail)
    num_users: int
    num_items: int
    num_topics: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class World:
    """Everything an event draw depends on besides its id; rebuilt identically on every worker."""

    seed: int
    num_users: int
    num_items: int
    num_topics: int
    start_ts: int
    span_seconds: int


def resolve_sizes(config: GenerateConfig) -> World:
    if config.num_events < 1:
        raise UserError(f"--num-events {config.num_events}: must be positive")
    users = config.num_users or max(50, config.num_events // 60)
    items = config.num_items or max(50, config.num_events // 150)
    topics = config.num_topics or min(200, max(8, items // 100))
    for flag, value in (("--num-users", users), ("--num-items", items), ("--num-topics", topics), ("--days", config.days)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be positive")
    if topics > items:
        raise UserError(f"--num-topics {topics}: cannot exceed --num-items {items}")
    try:
        start = dt.datetime.strptime(config.start_date, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise UserError(f"--start-date {config.start_date!r}: expected YYYY-MM-DD") from exc
    return World(config.seed, users, items, topics, int(start.timestamp()), config.days * 86_400)


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


class EventModel:
    """Samplers built from the world once per Spark task (a few ms for a million items)."""

    def __init__(self, world: World):
        self.world = world
        rng = np.random.default_rng(world.seed)
        # popularity rank -> id, so ids carry no information about activity or popularity
        self.user_by_rank = rng.permutation(world.num_users)
        self.item_by_rank = rng.permutation(world.num_items)
        self.user_cdf = _cdf(np.arange(1, world.num_users + 1, dtype=np.float64) ** -USER_ACTIVITY_EXPONENT)
        item_weight = np.arange(1, world.num_items + 1, dtype=np.float64) ** -ITEM_POPULARITY_EXPONENT
        self.item_cdf = _cdf(item_weight)
        topics = (hash_uniform(world.seed, self.item_by_rank, 1) * world.num_topics).astype(np.int64)
        self.topic_of_item = np.empty(world.num_items, dtype=np.int64)
        self.topic_of_item[self.item_by_rank] = topics
        # items grouped by topic (popularity order inside): one cumulative array serves every topic
        order = np.lexsort((np.arange(world.num_items), topics))
        self.topic_items = self.item_by_rank[order]
        topic_cum = np.cumsum(item_weight[order])
        counts = np.bincount(topics, minlength=world.num_topics)
        ends = np.cumsum(counts)
        starts = ends - counts
        self.topic_cum = topic_cum
        self.topic_lo = np.where(counts > 0, topic_cum[np.maximum(starts - 1, 0)] * (starts > 0), 0.0)
        self.topic_hi = np.where(counts > 0, topic_cum[np.maximum(ends - 1, 0)], 0.0)
        self.topic_last = np.maximum(ends - 1, 0)
        self.topic_empty = counts == 0

    def events(self, event_ids: np.ndarray) -> dict[str, np.ndarray]:
        w, seed = self.world, self.world.seed
        u = [hash_uniform(seed, event_ids, stream) for stream in range(10, 17)]
        users = self.user_by_rank[np.searchsorted(self.user_cdf, u[0], side="right").clip(max=w.num_users - 1)]
        # favourite topics of each user: a pure function of (seed, user)
        favourites = np.stack(
            [(hash_uniform(seed, users, 100 + k) * w.num_topics).astype(np.int64) for k in range(len(TASTE_WEIGHTS))]
        )
        bounds = np.cumsum(TASTE_WEIGHTS)
        choice = np.searchsorted(bounds, u[1], side="right")  # 0..2 favourite, 3 explore
        on_taste = choice < len(TASTE_WEIGHTS)
        topic = favourites[np.minimum(choice, len(TASTE_WEIGHTS) - 1), np.arange(len(users))]
        on_taste &= ~self.topic_empty[topic]
        lo, hi = self.topic_lo[topic], self.topic_hi[topic]
        pos = np.searchsorted(self.topic_cum, lo + u[2] * (hi - lo), side="right")
        taste_items = self.topic_items[np.minimum(pos, self.topic_last[topic])]
        explore_items = self.item_by_rank[np.searchsorted(self.item_cdf, u[3], side="right").clip(max=w.num_items - 1)]
        items = np.where(on_taste, taste_items, explore_items)
        cart_p = np.where(on_taste, ON_TASTE_CONVERSION[0], EXPLORE_CONVERSION[0])
        purchase_p = np.where(on_taste, ON_TASTE_CONVERSION[1], EXPLORE_CONVERSION[1])
        kind = np.where(u[4] < purchase_p, 2, np.where(u[4] < purchase_p + cart_p, 1, 0))
        ts = w.start_ts + (u[5] * w.span_seconds).astype(np.int64)
        return {
            "user_id": users.astype(np.int64),
            "item_id": items.astype(np.int64),
            "event_type": np.asarray(EVENT_TYPES, dtype=object)[kind],
            "ts": ts,
        }


SCHEMA = "user_id long, item_id long, event_type string, ts long"


def events_frame(spark, world: World, num_events: int, num_partitions: int):
    """A DataFrame of `num_events` synthetic events, computed lazily on the executors."""

    def to_events(batches):
        import pandas as pd

        model = EventModel(world)
        for batch in batches:
            yield pd.DataFrame(model.events(batch["id"].to_numpy()))

    return spark.range(0, num_events, 1, num_partitions).mapInPandas(to_events, SCHEMA)


RETAIL_SCHEMA = (
    "InvoiceNo string, StockCode string, Description string, Quantity long, InvoiceDate string, UnitPrice double, "
    "CustomerID string, Country string, day string"
)


@dataclasses.dataclass(frozen=True)
class RetailQuirks:
    guest_fraction: float
    cancel_fraction: float
    return_fraction: float


def order_lines(model: EventModel, event_ids: np.ndarray, quirks: RetailQuirks) -> dict[str, np.ndarray]:
    """The order lines of a batch of events (each event a purchase), with their quirks: a pure function of
    (seed, event id) like the events themselves."""
    import pandas as pd

    w, seed = model.world, model.world.seed
    events = model.events(event_ids)
    users, items, ts = events["user_id"], events["item_id"], events["ts"]
    u = [hash_uniform(seed, event_ids, stream) for stream in range(30, 36)]
    day = (ts - w.start_ts) // 86_400
    invoice = 500_000 + day * w.num_users + users  # one order per customer and day
    guest = hash_uniform(seed, invoice, 40) < quirks.guest_fraction  # the whole order: no CustomerID
    customer = np.where(guest, None, (12_346 + users).astype(str).astype(object))
    quantity = np.minimum(1 + np.floor(-np.log1p(-u[0]) * 2.5), 48).astype(np.int64)
    price = np.round(0.5 + hash_uniform(seed, items, 41) * 9.5, 2)
    country = np.asarray(COUNTRIES, dtype=object)[(hash_uniform(seed, users, 42) * len(COUNTRIES)).astype(np.int64)]
    code = (20_000 + items).astype(str)
    description = np.char.add(np.char.add("PRODUCT ", code), np.char.add(", ", np.asarray(COLOURS)[items % len(COLOURS)]))
    lines = [(invoice.astype(str), code, description, quantity, ts, price, customer, country)]
    end = w.start_ts + w.span_seconds - 1

    def extra(mask, invoice_no, stock, text, qty, when):
        lines.append(tuple(np.asarray(column)[mask] if np.ndim(column) else np.full(mask.sum(), column)
                           for column in (invoice_no, stock, text, qty, when, price, customer, country)))

    returned = np.maximum(1, np.floor(u[2] * quantity)).astype(np.int64)
    later = np.minimum(ts + 3_600 * (1 + (u[3] * 72).astype(np.int64)), end)
    extra(u[1] < quirks.cancel_fraction, np.char.add("C", invoice.astype(str)), code, description, -quantity, later)
    extra((u[1] >= quirks.cancel_fraction) & (u[1] < quirks.cancel_fraction + quirks.return_fraction),
          invoice.astype(str), code, description, -returned, later)
    extra(u[4] < POSTAGE_FRACTION, invoice.astype(str), "POST", "POSTAGE", 1, ts)
    extra(u[5] < DUPLICATE_FRACTION, invoice.astype(str), code, description, quantity, ts)
    columns = [np.concatenate([line[k] for line in lines]) for k in range(8)]
    stamp = pd.to_datetime(columns[4], unit="s")
    names = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
    out = dict(zip(names, columns, strict=True))
    out["InvoiceDate"] = stamp.strftime("%Y-%m-%d %H:%M:%S").to_numpy()
    out["day"] = stamp.strftime("%Y-%m-%d").to_numpy()
    return out


def retail_frame(spark, world: World, quirks: RetailQuirks, num_events: int, num_partitions: int):
    """A DataFrame of the order lines of `num_events` purchases, with a `day` column (UTC) to split files by."""

    def to_lines(batches):
        import pandas as pd

        model = EventModel(world)
        for batch in batches:
            yield pd.DataFrame(order_lines(model, batch["id"].to_numpy(), quirks))

    return spark.range(0, num_events, 1, num_partitions).mapInPandas(to_lines, RETAIL_SCHEMA)


def _write(frame, path: Path, output_format: str, partition_by: str = "") -> None:
    writer = frame.write.mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    if output_format == "parquet":
        writer.parquet(str(path))
    elif output_format == "csv":
        writer.option("header", True).csv(str(path))
    else:
        writer.json(str(path))
    for checksum in path.rglob(".*.crc"):
        checksum.unlink()


def _suffix(output_format: str) -> str:
    return {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}[output_format]


LOCAL_FILE = "part-00000.snappy.parquet"


def _engine(config: GenerateConfig, output_format: str, partitions: int) -> str:
    """The engine `config.engine` resolves to; a local run of what only Spark writes is a user error."""
    if config.engine not in ENGINES:
        raise UserError(f"--engine {config.engine!r}: choose one of {', '.join(ENGINES)}")
    fits_local = config.style == "events" and output_format == "parquet" and partitions == 1
    if config.engine == "local" and not fits_local:
        raise UserError(f"--engine local writes one Parquet file of events (at most {EVENTS_PER_PARTITION:,}, "
                        f"--num-files 1); this log needs Spark (--style {config.style}, --output-format "
                        f"{output_format}, {partitions} files): use --engine spark or auto")
    if config.engine == "auto":
        return "local" if fits_local and not config.master else "spark"
    return config.engine


def _write_local(world: World, num_events: int, path: Path) -> None:
    """The events Spark's one-partition run writes (the same rows, in the same order), as one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    events = EventModel(world).events(np.arange(num_events, dtype=np.int64))
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("event_type", pa.string()),
                        ("ts", pa.int64())])
    pq.write_table(pa.table(events, schema=schema), path, compression="snappy")


def run(config: GenerateConfig) -> GenerateResult:
    from spark.session import get_spark

    if config.output_format not in ("auto", *OUTPUT_FORMATS):
        raise UserError(f"--output-format {config.output_format!r}: choose one of auto, {', '.join(OUTPUT_FORMATS)}")
    if config.style not in STYLES:
        raise UserError(f"--style {config.style!r}: choose one of {', '.join(STYLES)}")
    quirks = RetailQuirks(config.guest_fraction, config.cancel_fraction, config.return_fraction)
    for flag, value in (("--guest-fraction", quirks.guest_fraction), ("--cancel-fraction", quirks.cancel_fraction),
                        ("--return-fraction", quirks.return_fraction)):
        if not 0 <= value <= 1:
            raise UserError(f"{flag} {value:g}: must be between 0 and 1")
    if quirks.cancel_fraction + quirks.return_fraction > 1:
        raise UserError("--cancel-fraction + --return-fraction: must not exceed 1")
    retail = config.style == "retail"
    output_format = config.output_format if config.output_format != "auto" else ("csv" if retail else "parquet")
    world = resolve_sizes(config)
    partitions = max(1, -(-config.num_events // EVENTS_PER_PARTITION)) if retail else (
        config.num_files or max(1, -(-config.num_events // EVENTS_PER_PARTITION))
    )
    started = time.perf_counter()
    if _engine(config, output_format, partitions) == "local":
        with storage.staged_output(config.output_uri) as staging:
            _write_local(world, config.num_events, staging / LOCAL_FILE)
        return GenerateResult(config.output_uri, config.num_events, config.num_events, world.num_users,
                              world.num_items, world.num_topics, round(time.perf_counter() - started, 2))
    spark = get_spark(config.master, app_name="ncf-generate")
    with storage.staged_output(config.output_uri) as staging:
        written = staging / "events"
        if retail:
            # one task per day, so each day is one file: <day>.csv, lines in time order
            frame = retail_frame(spark, world, quirks, config.num_events, partitions)
            frame = frame.repartition("day").sortWithinPartitions("day", "InvoiceDate", "InvoiceNo")
            _write(frame, written, output_format, partition_by="day")
            for folder in sorted(written.glob("day=*")):
                for part in folder.iterdir():  # exactly one part file per day
                    part.rename(staging / f"{folder.name[4:]}{_suffix(output_format)}")
        else:
            _write(events_frame(spark, world, config.num_events, partitions), written, output_format)
            for part in written.glob("part-*"):
                part.rename(staging / (part.name if output_format != "jsonl" else part.with_suffix(".jsonl").name))
        shutil.rmtree(written)
        num_rows = config.num_events
        if retail:
            num_rows = spark.read.option("header", True).csv(str(staging)).count() if output_format == "csv" else (
                spark.read.format(output_format.replace("jsonl", "json")).load(str(staging)).count()
            )
    return GenerateResult(
        config.output_uri, config.num_events, num_rows, world.num_users, world.num_items, world.num_topics,
        round(time.perf_counter() - started, 2),
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ncfctl generate", description=__doc__.split("\n\n")[0])
    add_arguments(parser, GenerateConfig)
    config = from_namespace(GenerateConfig, parser.parse_args(argv))
    result = run(config)
    made = f"{result.num_rows:,} order lines of {result.num_events:,} purchases" if config.style == "retail" else (
        f"{result.num_events:,} events"
    )
    print(
        f"wrote {made} ({result.num_users:,} users, {result.num_items:,} items, "
        f"{result.num_topics} topics) to {result.output_uri} in {result.seconds:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
