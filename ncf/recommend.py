"""The nightly batch step: the champion's top-K for every known user -> `<root>/recommendations/dt=YYYY-MM-DD/`.

    ncfctl recommend --storage-root runs/demo                       # models:/ncf@champion, today's date, K = 10
    ncfctl recommend --storage-root s3://b/p --tracking-uri http://mlflow:5000 --run-date 2026-03-02
    ncfctl recommend --model-uri runs/demo/models/<run> --output-uri /tmp/recs --recommend-k 20
    ncfctl recommend --storage-root s3://b/p ... --num-shards 8 --shard-index 3     # one pod of eight

Output (contracts.recommendations_uri, schema version 1): Parquet parts `part-<first user>-<end user>.parquet`, one
per chunk of `chunk_users` users, with columns user_id string, rank int32 (1 = best), item_id string, score float32
(the family's score; only the order within a user means anything), K rows per user minus the items the user trained
on (a user with fewer than K unseen items gets fewer rows); `_manifest.json` (model, fingerprint, K, counts); and
`_SUCCESS`, last. Ties between equal scores are broken arbitrarily (torch.topk).

How it runs, memory bounded whatever the number of users: users are scored in chunks (`Scorer.score_all` on at most
~16M scores at once, i.e. 64 MB of float32, the seen items masked to -inf, `torch.topk`), each chunk becomes one
Parquet part; on every core (`ncf.ranking.all_cores`), on CUDA when available (`device`).

Cost: exact scoring is num_users x num_items scores of the family (NeuMF: the MLP tower for every pair; GMF / iALS
one matmul). Large catalogues take the predictor's two-stage path instead (`ncf.retrieval`, the same settings as
`ncfctl serve`: the package's config.json "retrieval", then `--retrieval*` flags): for families with inner-product
vectors, from `threshold` items on (100,000), each user's `candidates` best unseen items come from the package's IVF
index (FAISS, batched over users) and are re-ranked with `score_candidates`, so the rows and scores are the family's
own and the seen items never appear. On CUDA, `auto` stays exact (a GPU scores every item faster than the CPU index
searches). bench/recommend.py measures both paths and the overlap of their top-K.

Resume: the parts go to a staging directory next to the output, keyed by the output and a fingerprint of the model
(sha256 of the package files) and the settings that shape the parts (K, exclude_seen, chunk_users, retrieval):
`<root>/recommendations/_staging/dt=YYYY-MM-DD-<fingerprint>/` (contracts.recommendations_staging_uri). Each part
is written atomically (temp + rename locally, one PUT on S3), so a run killed at any point leaves only whole parts;
the next run with the same model and settings skips them and computes the rest. When every part of the output is
in staging, the run publishes it (storage.publish_dir: `_SUCCESS` last, atomic for readers) under the output's lock
and deletes the staging directory. A rerun after publication sees the published fingerprint and does nothing.

Shards: `--num-shards n --shard-index i` (or `--user-range start:end`) gives a run only its share of the chunks
(contiguous, chunk-aligned: any sharding produces the same parts). All shards write into the same staging
directory; whichever finds every part present when it finishes publishes the whole output (the lock makes that
happen once; shards that finish earlier leave it to a later one). On Kubernetes that is an Indexed Job (or a KFP
ParallelFor) of n pods, each `--shard-index $JOB_COMPLETION_INDEX`; a pod retried after a kill resumes its own
chunks; if the last shard to finish died after writing its parts, rerunning any shard (it has nothing left to
compute) publishes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ncf import contracts, registry, storage
from ncf.config import add_arguments, from_namespace, param
from ncf.errors import UserError, exit_on_user_error
from ncf.retrieval import RetrievalSettings, Retriever, package_settings

# Scores materialised by one score_all call (64 MB of float32), as in ncf.ranking.
SCORES_PER_BATCH = 1 << 24
# Candidates retrieved per batch on the two-stage path (2M: 16 MB of int64 ids). The search's outputs and the
# exclude-seen bookkeeping stay under glibc's 32 MB mmap threshold, so batches reuse memory instead of faulting in
# fresh pages (bench/recommend.py, 1M users: 285 of 971 CPU s in the kernel at 16M per batch with score_candidates'
# unbounded gathers; 32 of 770 with both bounded).
CANDIDATES_PER_BATCH = 1 << 21
PART_PREFIX = "part-"


@dataclasses.dataclass
class RecommendConfig:
    storage_root: str = param("", "storage root: the output goes to <root>/recommendations/dt=<run_date>, and the "
                                  "embedded registry (sqlite:///<root>/mlflow.db) is used when tracking_uri is empty")
    run_date: str = param("", "YYYY-MM-DD of the output (default: today, UTC)")
    output_uri: str = param("", "output directory, local or s3:// (default: <storage_root>/recommendations/dt=<run_date>)")
    model_uri: str = param("", "model package (path or s3://) or models:/<name>@<alias> / models:/<name>/<version> "
                               "(default: models:/<model_name>@champion)")
    tracking_uri: str = param("", "MLflow tracking/registry URI for models:/ (default: $MLFLOW_TRACKING_URI, else "
                                  "sqlite:///<storage_root>/mlflow.db)", pipeline=True)
    model_name: str = param(registry.DEFAULT_MODEL_NAME, "registered model whose champion recommends", pipeline=True)
    recommend_k: int = param(10, "items recommended per user by the nightly batch (top-K, seen items excluded)",
                             pipeline=True)
    exclude_seen: bool = param(True, "leave out each user's training items (the package's seen CSR)")
    retrieval: str = param("", "whole-catalogue ranking, as the predictor serves: auto (two-stage from the package's "
                               "threshold, 100000 items, on CPU), exact (score every item), ann (two-stage); "
                               "default: the package's config.json, else auto", choices=("", "auto", "exact", "ann"))
    retrieval_candidates: int = param(0, "two-stage: items retrieved per user and re-ranked (0: the package's / 500)")
    retrieval_nprobe: int = param(0, "two-stage: IVF lists searched per user (0: the package's / 64)")
    chunk_users: int = param(20_000, "users per Parquet part: the unit of streaming, resume and sharding")
    num_shards: int = param(1, "split the users into this many shards (one run / pod each)")
    shard_index: int = param(0, "which shard this run computes (0 .. num_shards - 1)")
    user_range: str = param("", "start:end user indices instead of shards: the chunks that start in [start, end)")
    device: str = param("auto", "auto (cuda when available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    threads: int = param(0, "torch threads (0: every core this process may use)")
    resume: bool = param(True, "continue from the parts an interrupted run with the same model and settings wrote")
    skip_without_champion: bool = param(False, "when the registry has no champion yet, skip (exit 0) instead of "
                                               "failing (the pipeline sets it: the first gate may reject)")


@dataclasses.dataclass
class RecommendResult:
    output_uri: str
    published: bool  # the output is complete: this run or an earlier one published it
    users: int  # users in the chunks this run covers (its shard / range)
    rows: int  # rows this run wrote
    parts_written: int  # parts this run computed
    parts_resumed: int  # parts of this run's share an interrupted earlier run had written
    parts_total: int  # parts of the whole output
    model: str  # what was loaded: models:/<name>/<version> or the package URI
    fingerprint: str
    seconds: float
    skipped: str = ""  # why nothing ran (no champion yet)


# ---- model --------------------------------------------------------------------------------------------------------


def package_fingerprint(directory: str | Path, settings: dict) -> str:
    """sha256 over the package's files and the settings that shape the output's parts."""
    digest = hashlib.sha256(json.dumps({"schema": contracts.RECOMMENDATIONS_SCHEMA_VERSION, **settings},
                                       sort_keys=True).encode())
    for name in contracts.PACKAGE_FILES:
        with open(Path(directory) / name, "rb") as f:
            digest.update(name.encode() + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


@contextlib.contextmanager
def _local_package(config: RecommendConfig) -> Iterator[tuple[Path, str] | None]:
    """(a local directory holding the package, its label); None when there is no champion and that is allowed."""
    uri = config.model_uri or f"models:/{config.model_name}@{registry.CHAMPION}"
    if not uri.startswith("models:/"):
        storage.require_complete(uri, "model package")
        with storage.local_copy(uri) as local:
            yield local, uri
        return
    # An S3 storage root without a tracking URI: resolve_tracking_uri says it needs one.
    tracking_uri = registry.resolve_tracking_uri(config.tracking_uri, config.storage_root or None)
    name, version, alias = registry.parse_model_uri(uri)
    if alias is not None:
        found = registry.alias_version(tracking_uri, name, alias)
        if found is None:
            if config.skip_without_champion and alias == registry.CHAMPION:
                yield None
                return
            raise UserError(f"{uri}: no version of registered model {name!r} has alias {alias!r} ({tracking_uri}); "
                            f"run the gate first, or pass --model-uri")
        version = str(found.version)
    with tempfile.TemporaryDirectory(prefix="ncf-recommend-") as tmp:
        yield registry.download_package(tracking_uri, name, str(version), tmp), f"models:/{name}/{version}"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda requested but torch sees no CUDA device; use --device auto or cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def _scorer_on(package, device: torch.device):
    """The package's scorer on `device` (the family rebuilds it from the weights moved there)."""
    if device.type == "cpu":
        return package.scorer
    from ncf import families

    weights = {k: v.to(device) for k, v in package.weights.items()}
    return families.get(package.family).load(weights, package.config, package)


def retrieval_settings(config: RecommendConfig, package_config: dict, device: torch.device) -> RetrievalSettings:
    """The retrieval settings of a package (its config.json) under this run's flags; `auto` on CUDA means exact."""
    settings = package_settings(package_config).replace(
        mode=config.retrieval, candidates=config.retrieval_candidates, nprobe=config.retrieval_nprobe)
    return settings.replace(mode="exact") if device.type == "cuda" and settings.mode == "auto" else settings


# ---- chunks -------------------------------------------------------------------------------------------------------


def part_name(lo: int, hi: int) -> str:
    return f"{PART_PREFIX}{lo:010d}-{hi:010d}.parquet"


def chunks_of(num_users: int, chunk_users: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk_users, num_users)) for lo in range(0, num_users, chunk_users)]


def _parse_range(text: str, num_users: int) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    try:
        lo = int(start) if start.strip() else 0
        hi = int(end) if end.strip() else num_users
    except ValueError:
        lo = hi = -1
    if not sep or lo < 0 or hi < lo:
        raise UserError(f"user_range: expected start:end with 0 <= start <= end (user indices), got {text!r}")
    return lo, hi


def share(chunks: list[tuple[int, int]], config: RecommendConfig, num_users: int) -> list[tuple[int, int]]:
    """This run's chunks: those starting in `user_range`, else shard `shard_index` of `num_shards` (contiguous)."""
    if config.user_range:
        lo, hi = _parse_range(config.user_range, num_users)
        return [c for c in chunks if lo <= c[0] < hi]
    n = len(chunks)
    return chunks[config.shard_index * n // config.num_shards:(config.shard_index + 1) * n // config.num_shards]


def _mask_seen(scores: torch.Tensor, package, b_lo: int, b_hi: int) -> None:
    """-inf for the seen items of users b_lo..b_hi-1 (contiguous: their seen items are one slice of the CSR)."""
    indptr, indices = package.seen_indptr, package.seen_indices
    rows = np.repeat(np.arange(b_hi - b_lo), np.diff(indptr[b_lo:b_hi + 1]))
    cols = indices[indptr[b_lo]:indptr[b_hi]].astype(np.int64)
    scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)] = float("-inf")


def top_k_table(scorer, package, lo: int, hi: int, k: int, exclude_seen: bool, user_ids, item_ids, progress=None,
                retriever: Retriever | None = None):
    """The recommendations of users lo..hi-1 as an Arrow table (the output's schema)."""
    import pyarrow as pa

    num_items = scorer.num_items
    scored = num_items if retriever is None else retriever.size  # scores per user
    width = min(k, scored)  # rows per user at most
    batch = max(1, (SCORES_PER_BATCH if retriever is None else CANDIDATES_PER_BATCH) // max(1, scored))
    values_out, items_out = [], []
    for b_lo in range(lo, hi, batch):
        b_hi = min(b_lo + batch, hi)
        users = torch.arange(b_lo, b_hi, device=scorer.device)
        if retriever is None:
            scores = torch.nan_to_num(scorer.score_all(users).float(), nan=float("-inf"))
            if exclude_seen:
                _mask_seen(scores, package, b_lo, b_hi)
            top = torch.topk(scores, width, dim=1)
            values, items = top.values, top.indices
        else:
            seen = [package.seen_items(u) if exclude_seen else None for u in range(b_lo, b_hi)]
            found, valid = retriever.candidates(np.arange(b_lo, b_hi), seen)
            found = torch.as_tensor(found, device=scorer.device)
            scores = torch.nan_to_num(scorer.score_candidates(users, found).float(), nan=float("-inf"))
            scores[~torch.as_tensor(valid, device=scorer.device)] = float("-inf")  # empty slots stay out
            top = torch.topk(scores, width, dim=1)
            values, items = top.values, found.gather(1, top.indices)
        values_out.append(values.cpu().numpy())
        items_out.append(items.cpu().numpy())
        if progress is not None:
            progress.update(b_hi - b_lo)
    values = np.concatenate(values_out) if values_out else np.empty((0, width), np.float32)
    items = np.concatenate(items_out) if items_out else np.empty((0, width), np.int64)
    keep = (values != -np.inf).ravel()  # seen (or NaN) items are never recommended; they sort last
    user_idx = np.repeat(np.arange(lo, hi), width)[keep]
    ranks = np.tile(np.arange(1, width + 1, dtype=np.int32), hi - lo)[keep]
    return pa.table({
        "user_id": user_ids.take(pa.array(user_idx, pa.int64())),
        "rank": pa.array(ranks, pa.int32()),
        "item_id": item_ids.take(pa.array(items.ravel()[keep], pa.int64())),
        "score": pa.array(values.ravel()[keep].astype(np.float32), pa.float32()),
    })


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_manifest(output_uri: str) -> dict | None:
    """The published output's manifest, or None when the output is not complete."""
    if not storage.is_complete(output_uri):
        return None
    manifest = storage.join(output_uri, contracts.RECOMMENDATIONS_MANIFEST)
    return storage.read_json(manifest) if storage.exists(manifest) else {}


# ---- the step -----------------------------------------------------------------------------------------------------


def _validate(config: RecommendConfig) -> str:
    if config.recommend_k < 1:
        raise UserError(f"recommend_k: must be >= 1, got {config.recommend_k}")
    if config.chunk_users < 1:
        raise UserError(f"chunk_users: must be >= 1, got {config.chunk_users}")
    if config.num_shards < 1 or not 0 <= config.shard_index < config.num_shards:
        raise UserError(f"shard_index {config.shard_index} / num_shards {config.num_shards}: need num_shards >= 1 "
                        f"and 0 <= shard_index < num_shards")
    if config.user_range and config.num_shards > 1:
        raise UserError("user_range and num_shards > 1: give one or the other")
    if config.threads < 0:
        raise UserError(f"threads: must be >= 0, got {config.threads}")
    run_date = config.run_date or dt.datetime.now(dt.UTC).date().isoformat()
    try:
        dt.date.fromisoformat(run_date)
    except ValueError:
        raise UserError(f"run_date: expected YYYY-MM-DD, got {config.run_date!r}") from None
    if config.output_uri:
        return config.output_uri
    if not config.storage_root:
        raise UserError("recommend: pass --storage-root (output under <root>/recommendations/) or --output-uri")
    return contracts.recommendations_uri(config.storage_root, run_date)


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    from ncf.ranking import all_cores

    if not threads:
        with all_cores():
            yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(config: RecommendConfig) -> RecommendResult:
    from ncf.package import load_package

    started = time.perf_counter()
    output = _validate(config)
    for name in ("retrieval_candidates", "retrieval_nprobe"):
        if getattr(config, name) < 0:
            raise UserError(f"{name}: must be >= 0 (0: the package's setting), got {getattr(config, name)}")
    with _local_package(config) as found:
        if found is None:
            return RecommendResult(output, False, 0, 0, 0, 0, 0, "", "", time.perf_counter() - started,
                                   skipped=f"no champion of {config.model_name!r} yet: nothing to recommend")
        directory, label = found
        package = load_package(directory)
        device = resolve_device(config.device)
        retrieval = retrieval_settings(config, package.config, device)
        two_stage = retrieval.two_stage(package.scorer.num_items, package.scorer.inner_product)
        ranking = retrieval.to_dict() if two_stage else "exact"  # what shapes the parts: fingerprint and manifest
        fingerprint = package_fingerprint(directory, {
            "k": config.recommend_k, "exclude_seen": config.exclude_seen, "chunk_users": config.chunk_users,
            "retrieval": ranking})
    num_users = len(package.user_ids)
    chunks = chunks_of(num_users, config.chunk_users)
    mine = share(chunks, config, num_users)
    users = sum(hi - lo for lo, hi in mine)

    def result(published: bool, rows: int = 0, written: int = 0, resumed: int = 0) -> RecommendResult:
        return RecommendResult(output, published, users, rows, written, resumed, len(chunks), label, fingerprint,
                               time.perf_counter() - started)

    manifest = read_manifest(output)
    if manifest is not None and manifest.get("fingerprint") == fingerprint:
        return result(True)  # published by an earlier run of the same model and settings
    staging = contracts.recommendations_staging_uri(output, fingerprint)
    if not config.resume:
        storage.remove_tree(staging)
    present = set(storage.list_dir(staging)) if storage.exists(staging) else set()
    todo = [c for c in mine if part_name(*c) not in present]

    rows = 0
    if todo:
        import pyarrow as pa
        from tqdm import tqdm

        scorer = _scorer_on(package, device)
        # The index is searched on CPU (faiss-cpu) with the package's own scorer; `scorer` re-ranks on `device`.
        retriever = Retriever.for_package(package, retrieval) if two_stage else None
        user_ids = pa.array(package.user_ids, pa.string())
        item_ids = pa.array(package.item_ids, pa.string())
        # disable=None: a bar only when stderr is a terminal (pipeline logs get the result line only).
        with _threads(config.threads), tqdm(total=sum(hi - lo for lo, hi in todo), unit="user", unit_scale=True,
                                            desc="recommend", disable=None, file=sys.stderr) as bar:
            for lo, hi in todo:
                table = top_k_table(scorer, package, lo, hi, config.recommend_k, config.exclude_seen, user_ids,
                                    item_ids, bar, retriever)
                storage.write_bytes(storage.join(staging, part_name(lo, hi)), _parquet_bytes(table))
                rows += table.num_rows
    published = _publish_if_complete(output, staging, chunks, fingerprint, {
        "schema_version": contracts.RECOMMENDATIONS_SCHEMA_VERSION, "model": label,
        "model_name": config.model_name, "family": package.family, "fingerprint": fingerprint,
        "recommend_k": config.recommend_k, "exclude_seen": config.exclude_seen, "chunk_users": config.chunk_users,
        "retrieval": ranking,
        "num_users": num_users, "num_items": len(package.item_ids),
        "parts": [part_name(*c) for c in chunks], "columns": list(contracts.RECOMMENDATIONS_COLUMNS),
    })
    return result(published, rows, len(todo), len(mine) - len(todo))


def _publish_if_complete(output: str, staging: str, chunks, fingerprint: str, manifest: dict) -> bool:
    """Publish the staging directory at `output` when it holds every part; True when the output is complete."""
    wanted = {part_name(*c) for c in chunks}
    if not wanted <= set(storage.list_dir(staging) if storage.exists(staging) else ()):
        return False  # other shards still have chunks to write; the last one to finish publishes
    with storage.exclusive(output):
        done = read_manifest(output)
        if done is not None and done.get("fingerprint") == fingerprint:
            return True  # another shard published it while this one waited for the lock
        rows = 0
        with storage.local_copy(staging) as local:
            import pyarrow.parquet as pq

            for name in sorted(wanted):
                rows += pq.read_metadata(Path(local) / name).num_rows
            storage.write_json(Path(local) / contracts.RECOMMENDATIONS_MANIFEST, {
                **manifest, "rows": rows, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
            for stray in set(storage.list_dir(local)) - wanted - {contracts.RECOMMENDATIONS_MANIFEST}:
                (Path(local) / stray).unlink()  # never publish anything but the parts (local_copy of S3: a temp copy)
            storage.publish_dir(local, output)
        storage.remove_tree(staging)
    return True


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ncfctl recommend", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, RecommendConfig)
    result = run(from_namespace(RecommendConfig, parser.parse_args(argv)))
    print(summary_line(result))
    return 0


def summary_line(result: RecommendResult) -> str:
    if result.skipped:
        return f"recommend: skipped: {result.skipped}"
    state = "published" if result.published else "not published yet (other shards still running)"
    resumed = f", {result.parts_resumed} resumed" if result.parts_resumed else ""
    return (f"recommend: {result.users:,} users from {result.model} -> {result.output_uri} ({state}; "
            f"{result.parts_written} of {result.parts_total} parts written by this run{resumed}; "
            f"{result.rows:,} rows; {result.seconds:.1f}s)")


if __name__ == "__main__":
    sys.exit(main())
