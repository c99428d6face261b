"""iALS: implicit alternating least squares (Hu, Koren & Volinsky 2008) through the `implicit` library.

Each observed (user, item) pair has preference 1 and confidence 1 + `ials_alpha` (implicit multiplies the binary
matrix by alpha), or with `ials_recency_weight` > 0 confidence 1 + alpha * the pair's recency weight
(`ncf.sampling.recency_weights`, mean 1, as NCF weighs its positives); every other pair preference 0 and
confidence 1; `ials_iterations` sweeps of least squares with L2 `ials_regularization` fit `ials_factors`-dimensional
user and item factors. CPU (implicit's native conjugate-gradient solver, one thread per core, BLAS kept
single-threaded with threadpoolctl as implicit asks); on a CUDA device implicit's GPU solver when the installed
implicit was built with CUDA (`implicit.gpu.HAS_CUDA`; the PyPI wheel is CPU-only, and the fit then runs on CPU and
says so).

Package: `weights.safetensors` holds `user_factors` [num_users, f] and `item_factors` [num_items, f] (float32);
`config.json` `num_users`, `num_items`, `factors`, `"score": "dot"`. Inner product: exact,
score(u, i) = <user_vectors()[u], item_vectors()[i]>.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ncf.errors import UserError
from ncf.families.base import ClosedFormFamily, ExportedModel, FitContext, InnerProductScorer
from ncf.sampling import RECENCY_WEIGHTS
from ncf.splits import Interactions


@dataclasses.dataclass(frozen=True)
class IALSSettings:
    ials_factors: int = 64
    ials_regularization: float = 0.05
    ials_alpha: float = 10.0
    ials_iterations: int = 15
    ials_recency_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.ials_factors <= 0 or self.ials_iterations <= 0:
            raise UserError(f"ials_factors and ials_iterations must be positive, got {self.ials_factors}, "
                            f"{self.ials_iterations}")
        if self.ials_regularization < 0 or not self.ials_alpha > 0:
            raise UserError(f"ials_regularization must be >= 0 and ials_alpha > 0, got {self.ials_regularization}, "
                            f"{self.ials_alpha}")
        if not self.ials_recency_weight >= 0:
            raise UserError(f"ials_recency_weight: must be >= 0, got {self.ials_recency_weight}")


class IALSFamily(ClosedFormFamily):
    name = "ials"
    settings_type = IALSSettings

    def search_space(self, trial, settings: IALSSettings) -> dict[str, Any]:
        # Rendle et al. 2022 ("Revisiting the Performance of iALS on Item Recommendation Benchmarks"): the factor
        # count, the L2 regularisation and the weight of observed pairs are the settings that move the ranking;
        # the sweeps stay at the configured count (15 is past convergence for these sizes).
        return {"ials_factors": trial.suggest_categorical("ials_factors", [16, 32, 64, 128]),
                "ials_regularization": trial.suggest_float("ials_regularization", 1e-3, 10.0, log=True),
                "ials_alpha": trial.suggest_float("ials_alpha", 0.5, 50.0, log=True)}

    def refinements(self, settings: IALSSettings) -> list[dict[str, Any]]:
        # Tried on the search's best settings rather than searched with them: as a fourth dimension of the 16-trial
        # search it found worse factors / regularisation / alpha on data where recency does not help (docs/training.md).
        return [{"ials_recency_weight": w} for w in RECENCY_WEIGHTS if w != settings.ials_recency_weight]

    def fit_rows(self, rows: Interactions, settings: IALSSettings, context: FitContext
                 ) -> tuple[InnerProductScorer, ExportedModel]:
        import implicit.gpu
        import scipy.sparse
        from implicit.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        f = settings.ials_factors
        width = 4 * f * (rows.num_users + rows.num_items)
        context.require_memory({"factors": 3 * width, "interactions": 16 * rows.users.size},
                               f"ials: {rows.num_users:,} users x {rows.num_items:,} items, {f} factors",
                               "use fewer --ials-factors")
        on_gpu = context.runtime.device.type == "cuda" and implicit.gpu.HAS_CUDA
        if context.runtime.device.type == "cuda" and not on_gpu:
            context.log("[ials] this implicit build has no CUDA support: fitting on CPU")
        indptr, indices, confidence = rows.weighted_seen_csr(settings.ials_recency_weight)
        user_items = scipy.sparse.csr_matrix((confidence, indices, indptr), shape=(rows.num_users, rows.num_items))
        with threadpool_limits(1, "blas"):  # implicit's own threads; a threaded BLAS inside them oversubscribes
            model = AlternatingLeastSquares(factors=f, regularization=settings.ials_regularization,
                                            alpha=settings.ials_alpha, iterations=settings.ials_iterations,
                                            random_state=context.seed, use_gpu=on_gpu)
            model.fit(user_items, show_progress=False)
        if on_gpu:
            model = model.to_cpu()
        users = torch.from_numpy(np.ascontiguousarray(model.user_factors, dtype=np.float32))
        items = torch.from_numpy(np.ascontiguousarray(model.item_factors, dtype=np.float32))
        if not (torch.isfinite(users).all() and torch.isfinite(items).all()):
            raise UserError("ials: the factors are not finite; raise --ials-regularization or lower --ials-alpha")
        exported = ExportedModel(self.name, {"user_factors": users, "item_factors": items},
                                 {"num_users": rows.num_users, "num_items": rows.num_items, "factors": f,
                                  "score": "dot"})
        return InnerProductScorer(users, items), exported

    def load(self, weights: dict[str, torch.Tensor], config: dict[str, Any], package) -> InnerProductScorer:
        users, items = weights["user_factors"], weights["item_factors"]
        expected = ((config["num_users"], config["factors"]), (config["num_items"], config["factors"]))
        if (tuple(users.shape), tuple(items.shape)) != expected:
            raise ValueError(f"factors are {tuple(users.shape)} / {tuple(items.shape)}, expected {expected}")
        return InnerProductScorer(users, items)


FAMILY = IALSFamily()
