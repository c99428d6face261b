"""Blend: a weighted sum of several families' scores, made by model selection (ncf/selection.py, `--blend`).

    score(u, i) = Σ_m coefficient_m · score_m(u, i),   coefficient_m = weight_m / scale_m

`weight_m` (>= 0, summing to 1) is chosen on the validation split, on a grid over the simplex, by validation
NDCG@K; `scale_m` is the standard deviation of member m's scores over the validation rows' candidates, so weights
compare families whose scores live on different scales (NCF logits, EASE and iALS products). A scale is one
constant per member, so the blend of inner-product members is an inner product too: the members' user vectors
(times their coefficients) and item vectors side by side. That keeps two-stage serving (ncf/retrieval.py) for
large catalogues: "exact" when every member is, "partial" when some are (re-ranked with the full blend).

Package: `weights.safetensors` holds member m's tensors as `members.<m>.<name>`; `config.json` `members`: one entry
per member, {name, family, weight, scale, coefficient, config: the member's own config.json keys}, and
`num_users`, `num_items`, `"score": "blend"`. Loading hands each member its tensors and config, so every family
loads as it does alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ncf import families
from ncf.errors import UserError
from ncf.families.base import ExportedModel, Family, FitContext, FitResult, Scorer


def member_prefix(position: int) -> str:
    return f"members.{position}."


class BlendScorer(Scorer):
    """The coefficient-weighted sum of its members' scores (`members`: [(scorer, coefficient)])."""

    def __init__(self, members: list[tuple[Scorer, float]]):
        if not members:
            raise ValueError("a blend needs at least one member")
        self.members = members
        self.num_items = members[0][0].num_items
        self.device = members[0][0].device
        kinds = [scorer.inner_product for scorer, _ in members]
        self.inner_product = "exact" if all(k == "exact" for k in kinds) else ("partial" if any(kinds) else "")

    def _sum(self, score) -> torch.Tensor:
        total = None
        for scorer, coefficient in self.members:
            # Members may live on different devices (a GPU-trained NCF beside EASE's CPU matrix): sum on the first's.
            part = score(scorer).to(self.device, torch.float32) * coefficient  # never in place: a member's tensor
            total = part if total is None else total.add_(part)
        return total

    @torch.no_grad()
    def score_all(self, users) -> torch.Tensor:
        return self._sum(lambda scorer: scorer.score_all(users))

    @torch.no_grad()
    def score_candidates(self, users, items) -> torch.Tensor:
        return self._sum(lambda scorer: scorer.score_candidates(users, items))

    def _with_vectors(self) -> list[tuple[Scorer, float]]:
        if not self.inner_product:
            raise NotImplementedError("BlendScorer: no member has inner-product vectors (inner_product is empty)")
        return [(scorer, c) for scorer, c in self.members if scorer.inner_product]

    def user_vectors(self, users=None) -> torch.Tensor:
        return torch.cat([scorer.user_vectors(users).to(self.device, torch.float32) * c
                          for scorer, c in self._with_vectors()], dim=1)

    def item_vectors(self) -> torch.Tensor:
        return torch.cat([scorer.item_vectors().to(self.device, torch.float32) for scorer, _ in self._with_vectors()],
                         dim=1)


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a blend as model selection made it: its fitted model and its place in the sum."""

    name: str  # the candidate's name ("GMF", "ease")
    fitted: FitResult
    weight: float
    scale: float

    @property
    def coefficient(self) -> float:
        return self.weight / self.scale


def blend(members: list[Member], metrics: dict[str, Any]) -> FitResult:
    """The blend of fitted members as a family's fit result: its scorer and its package contents."""
    first = members[0].fitted.exported.config
    weights: dict[str, torch.Tensor] = {}
    described = []
    for position, member in enumerate(members):
        exported = member.fitted.exported
        weights.update({member_prefix(position) + name: tensor for name, tensor in exported.weights.items()})
        described.append({"name": member.name, "family": exported.family, "weight": member.weight,
                          "scale": member.scale, "coefficient": member.coefficient, "config": exported.config})
    config = {"num_users": first["num_users"], "num_items": first["num_items"], "score": "blend",
              "members": described}
    scorer = BlendScorer([(m.fitted.scorer, m.coefficient) for m in members])
    schema_version = max(m.fitted.exported.schema_version for m in members)
    return FitResult(scorer, ExportedModel(BlendFamily.name, weights, config, schema_version), metrics)


@dataclasses.dataclass(frozen=True)
class BlendSettings:
    """Nothing to set: a blend's members and weights come from model selection."""


class BlendFamily(Family):
    name = "blend"
    settings_type = BlendSettings

    def fit(self, data, settings, context: FitContext) -> FitResult:
        raise UserError("blend: made by model selection from its tuned candidates (--candidates with --blend auto "
                        "or on), not trained on its own")

    def load(self, weights: dict[str, torch.Tensor], config: dict[str, Any], package) -> BlendScorer:
        members = config.get("members")
        if not isinstance(members, list) or not members:
            raise ValueError("config.json members: expected a non-empty list")
        scorers = []
        for position, member in enumerate(members):
            prefix = member_prefix(position)
            own = {name[len(prefix):]: tensor for name, tensor in weights.items() if name.startswith(prefix)}
            try:
                family = families.get(member["family"])
            except UserError as exc:  # ValueError: the package loader names the file
                raise ValueError(f"members[{position}]: {exc}") from exc
            scorers.append((family.load(own, member["config"], package), float(member["coefficient"])))
        if any(scorer.num_items != config["num_items"] for scorer, _ in scorers):
            raise ValueError(f"a member's catalogue is not the blend's {config['num_items']} items")
        return BlendScorer(scorers)


FAMILY = BlendFamily()
