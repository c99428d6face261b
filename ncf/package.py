"""The model package: the one artifact every step after training consumes (gate, registry, serving).

Layout (schema version 1, docs/ARCHITECTURE.md):
  weights.safetensors  model state dict            config.json   architecture + hyperparameters + lineage
  user_ids.json        idx -> raw user id          item_ids.json idx -> raw item id
  seen.npz             CSR of each user's training items (indptr int64 [num_users + 1], indices int32)
  popularity.npy       float32 [num_items] training interaction counts (cold-start fallback)
  metrics.json         evaluation metrics           _SUCCESS     written last
Loading a package rebuilds the exact model, so its scores are bit-identical to the exported model's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncf import storage
from ncf.errors import UserError
from ncf.models import NCF, ModelSpec, NCFEnsemble, build_model

SCHEMA_VERSION = 1
FILES = ("weights.safetensors", "config.json", "user_ids.json", "item_ids.json", "seen.npz", "popularity.npy",
         "metrics.json")


@dataclasses.dataclass
class ModelPackage:
    uri: str
    model: NCF | NCFEnsemble  # eval mode, CPU
    config: dict[str, Any]
    user_ids: list[str]
    item_ids: list[str]
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    popularity: np.ndarray
    metrics: dict[str, Any]
    user_index: dict[str, int] = dataclasses.field(init=False, repr=False)
    item_index: dict[str, int] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {v: i for i, v in enumerate(self.item_ids)}

    def seen_items(self, user_idx: int) -> np.ndarray:
        return self.seen_indices[self.seen_indptr[user_idx]:self.seen_indptr[user_idx + 1]]


def write_package(directory: str | Path, model: NCF | NCFEnsemble, *, user_ids, item_ids, seen_indptr: np.ndarray,
                  seen_indices: np.ndarray, popularity: np.ndarray, metrics: dict[str, Any],
                  hyperparameters: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the package files (no `_SUCCESS`) into an existing local directory; see `save_package`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    spec = model.spec
    if len(user_ids) != spec.num_users or len(item_ids) != spec.num_items:
        raise UserError(f"package: id maps ({len(user_ids)} users, {len(item_ids)} items) do not match the model "
                        f"({spec.num_users}, {spec.num_items})")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "weights.safetensors"))
    config = {
        "schema_version": SCHEMA_VERSION,
        **spec.to_dict(),
        "score": "logit",
        "hyperparameters": dict(hyperparameters or {}),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        **(extra or {}),
    }
    storage.write_json(directory / "config.json", config)
    storage.write_json(directory / "user_ids.json", [str(u) for u in user_ids])
    storage.write_json(directory / "item_ids.json", [str(i) for i in item_ids])
    np.savez(directory / "seen.npz", indptr=np.asarray(seen_indptr, dtype=np.int64),
             indices=np.asarray(seen_indices, dtype=np.int32))
    np.save(directory / "popularity.npy", np.asarray(popularity, dtype=np.float32))
    storage.write_json(directory / "metrics.json", metrics)
    return directory


def save_package(uri: str | Path, model: NCF | NCFEnsemble, **kwargs: Any) -> str:
    """Publish a package at `uri` (local or s3://) atomically, `_SUCCESS` last. kwargs as `write_package`."""
    with storage.staged_output(uri) as tmp:
        write_package(tmp, model, **kwargs)
    return str(uri)


def _load_npz(data: bytes, uri: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(data)) as npz:
            return npz["indptr"].astype(np.int64), npz["indices"].astype(np.int32)
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{uri}/seen.npz: not a seen-items CSR ({exc})") from exc


def load_package(uri: str | Path) -> ModelPackage:
    """Load a complete package (local or s3://): the model in eval mode on CPU plus its lookup tables."""
    from safetensors.torch import load

    uri = str(uri)
    storage.require_complete(uri, "model package")
    with storage.local_copy(uri) as root:
        missing = [name for name in FILES if not (root / name).exists()]
        if missing:
            raise UserError(f"{uri}: model package lacks {missing}")
        config = storage.read_json(root / "config.json")
        if config.get("schema_version") != SCHEMA_VERSION:
            raise UserError(f"{uri}/config.json: schema_version {config.get('schema_version')!r}, "
                            f"expected {SCHEMA_VERSION}")
        try:
            state = load((root / "weights.safetensors").read_bytes())
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise UserError(f"{uri}/weights.safetensors: unreadable ({exc})") from exc
        user_ids = json.loads((root / "user_ids.json").read_text())
        item_ids = json.loads((root / "item_ids.json").read_text())
        indptr, indices = _load_npz((root / "seen.npz").read_bytes(), uri)
        popularity = np.load(root / "popularity.npy")
        metrics = storage.read_json(root / "metrics.json")
    model = build_model(ModelSpec.from_dict(config))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{uri}/weights.safetensors: does not match config.json ({exc})") from exc
    model.eval()
    if len(user_ids) != model.spec.num_users or len(item_ids) != model.spec.num_items \
            or indptr.size != model.spec.num_users + 1 or popularity.size != model.spec.num_items:
        raise UserError(f"{uri}: id maps / seen.npz / popularity.npy sizes disagree with config.json")
    return ModelPackage(uri, model, config, user_ids, item_ids, indptr, indices, popularity, metrics)


def package_tables(partition) -> dict[str, Any]:
    """The partition-derived package tables: id maps, seen CSR (training items) and popularity."""
    from ncf.sampling import seen_csr

    indptr, indices = seen_csr(partition.train_users, partition.train_items, partition.num_users)
    popularity = np.bincount(partition.train_items, minlength=partition.num_items).astype(np.float32)
    return {"user_ids": partition.user_ids, "item_ids": partition.item_ids, "seen_indptr": indptr,
            "seen_indices": indices, "popularity": popularity}
