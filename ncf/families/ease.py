"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): a closed-form item-item model.

With X the binary user x item matrix of the training rows and G = XᵀX:
    P = (G + λI)⁻¹,   B = I - P / diag(P)   (B[j, i] = -P[j, i] / P[i, i] off the diagonal, 0 on it),
    score(u, i) = Σ_{j in u's history} w_uj B[j, i]   (the row x_u B),
with w_uj = 1 (the paper), or with `ease_recency_weight` > 0 the recency weight of u's interaction with j
(`ncf.sampling.recency_weights`, as NCF weighs its positives): the latest items of a history count most. B is fitted
on the binary X either way; the weights only change which history items the scores lean on.
G + λI is symmetric positive definite, so P comes from a Cholesky factorisation and its inverse, both in place
(LAPACK potrf + potri): the fit holds one N x N float64 matrix plus the float32 B it exports.

Package: `weights.safetensors` holds `B` (float32 [N, N], so the package grows with the square of the catalogue)
and, with a recency weight, `history_weights` (float32, one per entry of the package's seen CSR); `config.json`
`ease_lambda`, `recency_weight`, `num_users`, `num_items`, `"score": "ease"`. At serving time the user's history is the
package's seen CSR (every training item), the same X the exported B was refit on. The catalogue's item-item
matrices must fit in the memory budget; a larger catalogue is refused with the sizes named. No inner-product
vectors: the score is x_u · B[:, i], a product in N dimensions.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch

from ncf.errors import UserError
from ncf.families.base import (
    ClosedFormFamily,
    ExportedModel,
    FitContext,
    FitResult,
    Scorer,
    as_index,
    candidate_matrix,
)
from ncf.sampling import RECENCY_WEIGHTS
from ncf.splits import FitData, Interactions

_GATHERED_PER_CHUNK = 1 << 24  # history x candidate entries gathered at once in score_candidates


@dataclasses.dataclass(frozen=True)
class EaseSettings:
    ease_lambda: float = 500.0
    ease_recency_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.ease_lambda > 0:
            raise UserError(f"ease_lambda: must be positive, got {self.ease_lambda}")
        if not self.ease_recency_weight >= 0:
            raise UserError(f"ease_recency_weight: must be >= 0, got {self.ease_recency_weight}")


class EaseScorer(Scorer):
    """score(u, i) = Σ_{j in history(u)} w_uj B[j, i], the history a CSR (`indptr`, `indices`) with weights
    `values` (an array or tensor, one per entry of `indices`; None: every w_uj is 1)."""

    def __init__(self, b: torch.Tensor, indptr: np.ndarray, indices: np.ndarray, values=None):
        self.b = b
        self.num_items = b.shape[0]
        self.indptr = torch.as_tensor(np.asarray(indptr, dtype=np.int64))
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.values = None if values is None else torch.as_tensor(np.asarray(values, dtype=np.float32))

    def _history(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row offsets [B + 1], history items, row of each item, weight of each item) for `users`."""
        starts, ends = self.indptr[users], self.indptr[users + 1]
        counts = ends - starts
        crow = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        rows = torch.repeat_interleave(torch.arange(len(users)), counts)
        entries = starts[rows] + torch.arange(int(crow[-1])) - crow[rows]
        weights = torch.ones(entries.numel()) if self.values is None else self.values[entries]
        return crow, self.indices[entries], rows, weights

    @torch.no_grad()
    def score_all(self, users) -> torch.Tensor:
        users = as_index(users, self.device).view(-1)
        crow, items, _, weights = self._history(users)
        with warnings.catch_warnings():  # torch marks sparse CSR as beta; its CPU matmul is 7x index_add here
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            x = torch.sparse_csr_tensor(crow, items, weights, size=(len(users), self.num_items),
                                        check_invariants=False)  # built valid: sorted rows, items in range
        return x @ self.b

    @torch.no_grad()
    def score_candidates(self, users, items) -> torch.Tensor:
        users = as_index(users, self.device).view(-1)
        items = candidate_matrix(users, items, self.device)
        out = torch.zeros(items.shape, dtype=torch.float32)
        counts = (self.indptr[users + 1] - self.indptr[users]).tolist()
        lo = 0
        while lo < len(users):  # chunks of users whose history x candidates stays within _GATHERED_PER_CHUNK
            hi, size = lo + 1, counts[lo]
            while hi < len(users) and (size + counts[hi]) * items.shape[1] <= _GATHERED_PER_CHUNK:
                size += counts[hi]
                hi += 1
            _, history, rows, weights = self._history(users[lo:hi])
            gathered = self.b[history[:, None], items[lo:hi][rows]]
            out[lo:hi].index_add_(0, rows, gathered if self.values is None else gathered * weights[:, None])
            lo = hi
        return out


def _mirror_upper(matrix: np.ndarray, block: int = 2048) -> None:
    """Copy the upper triangle onto the lower one, in place, a block of rows at a time."""
    for start in range(0, matrix.shape[0], block):
        end = min(start + block, matrix.shape[0])
        matrix[start:end, :start] = matrix[:start, start:end].T
        diagonal = matrix[start:end, start:end]
        below = np.tril_indices(end - start, -1)
        diagonal[below] = diagonal.T[below]


class EaseFamily(ClosedFormFamily):
    name = "ease"
    settings_type = EaseSettings

    def search_space(self, trial, settings: EaseSettings) -> dict[str, Any]:
        # lambda: the one setting; its best value grows with the data's density (Steck 2019 used 200-3000 on
        # ML-20M / Netflix / MSD). Log-uniform over four decades around the default of 500.
        return {"ease_lambda": trial.suggest_float("ease_lambda", 5.0, 50_000.0, log=True)}

    def refinements(self, settings: EaseSettings) -> list[dict[str, Any]]:
        # Whether a history's latest items should lead is a property of the data: tried on the best lambda after
        # the search, as for iALS (ials.py), rather than searched with it.
        return [{"ease_recency_weight": w} for w in RECENCY_WEIGHTS if w != settings.ease_recency_weight]

    def memory(self, rows: Interactions) -> dict[str, int]:
        """Bytes the fit needs at its peak: the dense Gram (then its inverse) in float64, the sparse Gram it is
        built from (at most every item pair a user has), and the float32 weights."""
        n = rows.num_items
        per_user = np.bincount(rows.users, minlength=rows.num_users).astype(np.float64)
        pairs = min(float(n) * n, float((per_user ** 2).sum()))
        return {f"item-item Gram / inverse ({n:,} x {n:,} float64)": 8 * n * n,
                "sparse Gram": int(12 * pairs), f"weights B ({n:,} x {n:,} float32)": 4 * n * n}

    def fit_rows(self, rows: Interactions, settings: EaseSettings, context: FitContext
                 ) -> tuple[EaseScorer, ExportedModel]:
        import scipy.sparse
        from scipy.linalg import lapack

        n = rows.num_items
        context.require_memory(self.memory(rows), f"ease: a catalogue of {n:,} items",
                               "use --family ials (memory linear in the catalogue), or drop rare items in "
                               "preprocessing (--min-item-interactions)")
        indptr, indices, history_weights = rows.weighted_seen_csr(settings.ease_recency_weight)
        x = scipy.sparse.csr_matrix((np.ones(indices.size), indices, indptr), shape=(rows.num_users, n))
        gram = (x.T @ x).toarray()
        gram[np.diag_indices(n)] += settings.ease_lambda
        # gram is symmetric: its transpose is the same matrix in Fortran order, which LAPACK overwrites in place.
        factor, info = lapack.dpotrf(gram.T, lower=False, overwrite_a=True, clean=False)
        if info == 0:
            p, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
        if info != 0:
            raise UserError(f"ease: XᵀX + {settings.ease_lambda} I is not positive definite (LAPACK info {info}); "
                            "raise --ease-lambda")
        _mirror_upper(p)
        p /= -np.diag(p).copy()[None, :]
        p[np.diag_indices(n)] = 0.0
        if not np.isfinite(p).all():
            raise UserError(f"ease: the closed form is not finite with lambda {settings.ease_lambda}; raise --ease-lambda")
        b = torch.from_numpy(p.astype(np.float32, order="C"))
        del p, gram, factor
        tensors = {"B": b}
        values = None  # the binary history: no weights to store or multiply by
        if settings.ease_recency_weight > 0:
            values = history_weights
            tensors["history_weights"] = torch.from_numpy(values)
        exported = ExportedModel(self.name, tensors,
                                 {"num_users": rows.num_users, "num_items": n, "ease_lambda": settings.ease_lambda,
                                  "recency_weight": settings.ease_recency_weight, "score": "ease"},
                                 schema_version=2 if values is not None else 1)  # 1's readers ignore the weights
        return EaseScorer(b, indptr, indices, values), exported

    def fit(self, data: FitData, settings: EaseSettings, context: FitContext) -> FitResult:
        fitted = super().fit(data, settings, context)
        if settings.ease_recency_weight > 0 and data.validation is not None and not context.refit:
            # Exported as fitted, without the validation rows, but the package's history is every training row.
            _, _, values = data.all_train.weighted_seen_csr(settings.ease_recency_weight)
            fitted.exported.weights["history_weights"] = torch.from_numpy(values)
        return fitted

    def load(self, weights: dict[str, torch.Tensor], config: dict[str, Any], package) -> EaseScorer:
        b = weights["B"]
        n = config["num_items"]
        if tuple(b.shape) != (n, n):
            raise ValueError(f"B is {tuple(b.shape)}, expected ({n}, {n})")
        values = weights.get("history_weights")
        if values is not None and tuple(values.shape) != (package.seen_indices.size,):
            raise ValueError(f"history_weights has {tuple(values.shape)} entries, expected one per seen item "
                             f"({package.seen_indices.size})")
        return EaseScorer(b, package.seen_indptr, package.seen_indices, values)


FAMILY = EaseFamily()
