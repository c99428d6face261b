"""Per-epoch training checkpoints: model + optimizer + RNG state + progress, so `--resume` ends bit-identical.

One file per training stage (`GMF.pt`, `MLP.pt`, `NeuMF.pt`; `GMF-refit.pt` ... for the refit pass;
`GMF-refit-m1.pt` ... for further ensemble members) under the checkpoint directory (local or s3://), each replaced
atomically every epoch. A checkpoint records a fingerprint of everything that shapes the result, and which training
step wrote its optimizer state (ncf.train.make_step); resuming under a different configuration, or on another kind
of device, is refused rather than silently mixing two runs.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import torch

from ncf import storage
from ncf.errors import UserError


def fingerprint(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and generator.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(generator.device)
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], generator.device)


def save(uri: str, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load(uri: str, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `uri`, or None when there is none; UserError when it belongs to another config."""
    if not storage.exists(uri):
        return None
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise UserError(f"{uri}: unreadable checkpoint ({exc}); delete it to start over") from exc
    if state.get("fingerprint") != expected_fingerprint:
        raise UserError(f"{uri}: checkpoint was written with a different configuration "
                        f"({json.dumps(state.get('config'), sort_keys=True)}); resume with the same settings, or "
                        "drop --resume / delete the checkpoint to start over")
    return state
