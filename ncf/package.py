"""The model package: the one artifact every step after training consumes (gate, registry, serving).

Layout (schema version 1, `ncf.contracts`, docs/ARCHITECTURE.md):
  weights.safetensors  the family's tensors          config.json   family + its architecture, hyperparameters, lineage
  user_ids.json        idx -> raw user id            item_ids.json idx -> raw item id
  seen.npz             CSR of each user's training items (indptr int64 [num_users + 1], indices int32)
  popularity.npy       float32 [num_items] training interaction counts (cold-start fallback)
  metrics.json         evaluation metrics             _SUCCESS      written last
  retrieval.faiss      optional: the IVF retrieval index over the item vectors (ncf/retrieval.py), written when the
                       package's retrieval settings (config.json "retrieval") choose two-stage for its catalogue
`config.json` names the model `family` (`ncf.families`); a package without one was written before families existed
and is an NCF package. Loading memory-maps the weights (an s3:// package is downloaded to a temporary directory
first) and hands them to the family, whose scorer scores bit-identically to the exported model's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncf import contracts, families, storage
from ncf.errors import UserError
from ncf.families.base import ExportedModel, Scorer


@dataclasses.dataclass
class ModelPackage:
    uri: str
    family: str
    weights: dict[str, torch.Tensor]  # memory-mapped, read-only use
    config: dict[str, Any]
    user_ids: list[str]
    item_ids: list[str]
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    popularity: np.ndarray
    metrics: dict[str, Any]
    scorer: Scorer = dataclasses.field(init=False, repr=False)  # the family's, set by `load_package`
    ann_index: Any = dataclasses.field(default=None, repr=False)  # the saved retrieval index (faiss), if any
    user_index: dict[str, int] = dataclasses.field(init=False, repr=False)
    item_index: dict[str, int] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {v: i for i, v in enumerate(self.item_ids)}

    def seen_items(self, user_idx: int) -> np.ndarray:
        return self.seen_indices[self.seen_indptr[user_idx]:self.seen_indptr[user_idx + 1]]


def write_package(directory: str | Path, model: ExportedModel, *, user_ids, item_ids, seen_indptr: np.ndarray,
                  seen_indices: np.ndarray, popularity: np.ndarray, metrics: dict[str, Any],
                  hyperparameters: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                  retrieval=None) -> Path:
    """Write the package files (no `_SUCCESS`) into an existing local directory; see `save_package`.

    `retrieval` (an `ncf.retrieval.RetrievalSettings` or its dict) is recorded in config.json as the package's
    serving settings; when they choose two-stage serving for this catalogue (by default: from 100,000 items, for a
    family with inner-product vectors) the retrieval index is built and written too."""
    from safetensors.torch import save_file

    directory = Path(directory)
    num_users, num_items = model.config["num_users"], model.config["num_items"]
    if len(user_ids) != num_users or len(item_ids) != num_items:
        raise UserError(f"package: id maps ({len(user_ids)} users, {len(item_ids)} items) do not match the model "
                        f"({num_users}, {num_items})")
    save_file({k: v.contiguous() for k, v in model.weights.items()}, str(directory / contracts.PACKAGE_WEIGHTS))
    config = {
        "schema_version": model.schema_version,
        "family": model.family,
        **model.config,
        "hyperparameters": dict(hyperparameters or {}),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        **(extra or {}),
    }
    if retrieval is not None:
        from ncf.retrieval import CONFIG_KEY, RetrievalSettings

        settings = retrieval if isinstance(retrieval, RetrievalSettings) else RetrievalSettings.from_dict(retrieval)
        config[CONFIG_KEY] = settings.to_dict()
    storage.write_json(directory / contracts.PACKAGE_CONFIG, config)
    storage.write_json(directory / contracts.PACKAGE_USER_IDS, [str(u) for u in user_ids])
    storage.write_json(directory / contracts.PACKAGE_ITEM_IDS, [str(i) for i in item_ids])
    np.savez(directory / contracts.PACKAGE_SEEN, indptr=np.asarray(seen_indptr, dtype=np.int64),
             indices=np.asarray(seen_indices, dtype=np.int32))
    np.save(directory / contracts.PACKAGE_POPULARITY, np.asarray(popularity, dtype=np.float32))
    storage.write_json(directory / contracts.PACKAGE_METRICS, metrics)
    _write_retrieval_index(directory, model, config, seen_indptr, seen_indices, popularity)
    return directory


def _write_retrieval_index(directory: Path, model: ExportedModel, config: dict[str, Any], seen_indptr, seen_indices,
                           popularity) -> None:
    """The retrieval index, when the package's settings choose two-stage serving for its catalogue."""
    from types import SimpleNamespace

    from ncf import retrieval

    settings = retrieval.package_settings(config)
    if settings.mode == "exact" or (settings.mode == "auto" and config["num_items"] < settings.threshold):
        return
    tables = SimpleNamespace(seen_indptr=np.asarray(seen_indptr, dtype=np.int64),
                             seen_indices=np.asarray(seen_indices, dtype=np.int32),
                             popularity=np.asarray(popularity, dtype=np.float32))
    scorer = families.get(model.family).load(model.weights, config, tables)
    if not settings.two_stage(scorer.num_items, scorer.inner_product) or settings.candidates >= scorer.num_items:
        return
    index = retrieval.build_index(retrieval.retrieval_vectors(scorer, settings), settings)
    retrieval.write_index(index, directory / contracts.PACKAGE_ANN_INDEX)


def save_package(uri: str | Path, model: ExportedModel, **kwargs: Any) -> str:
    """Publish a package at `uri` (local or s3://) atomically, `_SUCCESS` last. kwargs as `write_package`."""
    with storage.staged_output(uri) as tmp:
        write_package(tmp, model, **kwargs)
    return str(uri)


def _load_seen(path: Path, uri: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as npz:
            return npz["indptr"].astype(np.int64, copy=False), npz["indices"].astype(np.int32, copy=False)
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{uri}/{contracts.PACKAGE_SEEN}: not a seen-items CSR ({exc})") from exc


def load_package(uri: str | Path) -> ModelPackage:
    """Load a complete package (local or s3://): the family's scorer (CPU) plus the lookup tables.

    The weights are memory-mapped from the package directory, not read into memory: a table is paged in as it is
    used and never held twice. An s3:// package is downloaded to a temporary directory and mapped from there (the
    mapping outlives the directory).
    """
    from safetensors.torch import load_file

    uri = str(uri)
    storage.require_complete(uri, "model package")
    with storage.local_copy(uri) as root:
        missing = [name for name in contracts.PACKAGE_FILES if not (root / name).exists()]
        if missing:
            raise UserError(f"{uri}: model package lacks {missing}")
        config = storage.read_json(root / contracts.PACKAGE_CONFIG)
        if config.get("schema_version") not in contracts.PACKAGE_SCHEMA_VERSIONS:
            raise UserError(f"{uri}/{contracts.PACKAGE_CONFIG}: schema_version {config.get('schema_version')!r}, "
                            f"this code reads {list(contracts.PACKAGE_SCHEMA_VERSIONS)} (a newer trainer wrote it: "
                            "update the image that reads it)")
        try:
            weights = load_file(root / contracts.PACKAGE_WEIGHTS)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise UserError(f"{uri}/{contracts.PACKAGE_WEIGHTS}: unreadable ({exc})") from exc
        user_ids = json.loads((root / contracts.PACKAGE_USER_IDS).read_text())
        item_ids = json.loads((root / contracts.PACKAGE_ITEM_IDS).read_text())
        indptr, indices = _load_seen(root / contracts.PACKAGE_SEEN, uri)
        popularity = np.load(root / contracts.PACKAGE_POPULARITY)
        metrics = storage.read_json(root / contracts.PACKAGE_METRICS)
        ann_index = None
        if (root / contracts.PACKAGE_ANN_INDEX).exists():  # mapped while the (downloaded) file still exists
            from ncf.retrieval import read_index

            try:
                ann_index = read_index(root / contracts.PACKAGE_ANN_INDEX)
            except RuntimeError as exc:  # faiss's error for an unreadable file
                raise UserError(f"{uri}/{contracts.PACKAGE_ANN_INDEX}: unreadable ({exc})") from exc
    name = config.get("family", contracts.DEFAULT_FAMILY)
    try:
        family = families.get(name)
    except UserError as exc:
        raise UserError(f"{uri}/{contracts.PACKAGE_CONFIG}: {exc}") from exc
    num_users, num_items = config.get("num_users"), config.get("num_items")
    if len(user_ids) != num_users or len(item_ids) != num_items or indptr.size != len(user_ids) + 1 \
            or popularity.size != len(item_ids):
        raise UserError(f"{uri}: id maps / {contracts.PACKAGE_SEEN} / {contracts.PACKAGE_POPULARITY} sizes disagree "
                        f"with {contracts.PACKAGE_CONFIG} ({num_users} users, {num_items} items)")
    package = ModelPackage(uri, name, weights, config, user_ids, item_ids, indptr, indices, popularity, metrics,
                           ann_index=ann_index)
    try:
        package.scorer = family.load(weights, config, package)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"{uri}/{contracts.PACKAGE_WEIGHTS}: does not match {contracts.PACKAGE_CONFIG} ({exc})") from exc
    return package


def package_tables(partition) -> dict[str, Any]:
    """The partition-derived package tables: id maps, seen CSR (training items) and popularity."""
    from ncf.splits import Interactions

    rows = Interactions.of(partition)
    indptr, indices = rows.seen_csr()
    return {"user_ids": partition.user_ids, "item_ids": partition.item_ids, "seen_indptr": indptr,
            "seen_indices": indices, "popularity": rows.item_counts()}
