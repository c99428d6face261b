"""Popularity: every user gets the items ranked by their training interaction counts.

It is the cold-start fallback of every package (`popularity.npy`, used for users a model does not know) and, as
a family, the baseline any model must beat. Package: `weights.safetensors` holds `item_scores` (float32
[num_items], the counts of the rows it was fit on); `config.json` `num_users`, `num_items`, `"score": "count"`. No
settings; no inner-product vectors (the score does not depend on the user).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ncf.families.base import ClosedFormFamily, ExportedModel, FitContext, Scorer, as_index, candidate_matrix
from ncf.splits import Interactions


@dataclasses.dataclass(frozen=True)
class PopularitySettings:
    pass


class PopularityScorer(Scorer):
    def __init__(self, item_scores: torch.Tensor):
        self.item_scores = item_scores.float()
        self.num_items = item_scores.numel()

    def score_all(self, users) -> torch.Tensor:
        users = as_index(users, self.device).view(-1)
        return self.item_scores.expand(len(users), -1).clone()

    def score_candidates(self, users, items) -> torch.Tensor:
        users = as_index(users, self.device).view(-1)
        return self.item_scores[candidate_matrix(users, items, self.device)]


class PopularityFamily(ClosedFormFamily):
    name = "popularity"
    settings_type = PopularitySettings

    def fit_rows(self, rows: Interactions, settings: PopularitySettings, context: FitContext
                 ) -> tuple[PopularityScorer, ExportedModel]:
        scores = torch.from_numpy(rows.item_counts())
        exported = ExportedModel(self.name, {"item_scores": scores},
                                 {"num_users": rows.num_users, "num_items": rows.num_items, "score": "count"})
        return PopularityScorer(scores), exported

    def load(self, weights: dict[str, torch.Tensor], config: dict[str, Any], package) -> PopularityScorer:
        scores = weights["item_scores"]
        if tuple(scores.shape) != (config["num_items"],):
            raise ValueError(f"item_scores is {tuple(scores.shape)}, expected ({config['num_items']},)")
        return PopularityScorer(scores)


FAMILY = PopularityFamily()
