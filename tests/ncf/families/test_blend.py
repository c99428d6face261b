"""The blend (ncf/families/blend.py): a weighted sum of its members' scores, and an inner product when they are."""

from __future__ import annotations

import pytest
import torch

from ncf.families.base import ExportedModel, FitResult, InnerProductScorer
from ncf.families.blend import FAMILY, BlendScorer, Member, blend
from ncf.families.popularity import PopularityScorer


def _factors(seed: int, users: int = 6, items: int = 9, width: int = 4) -> InnerProductScorer:
    gen = torch.Generator().manual_seed(seed)
    return InnerProductScorer(torch.randn(users, width, generator=gen), torch.randn(items, width, generator=gen))


def test_a_blend_of_inner_products_is_one():
    first, second = _factors(0), _factors(1, width=3)
    blend = BlendScorer([(first, 0.25), (second, 2.0)])
    users = torch.arange(6)
    expected = 0.25 * first.score_all(users) + 2.0 * second.score_all(users)
    torch.testing.assert_close(blend.score_all(users), expected)
    candidates = torch.tensor([[0, 8, 3]] * 6)
    torch.testing.assert_close(blend.score_candidates(users, candidates), expected.gather(1, candidates))
    assert blend.inner_product == "exact"
    torch.testing.assert_close(blend.user_vectors() @ blend.item_vectors().t(), expected)
    torch.testing.assert_close(blend.user_vectors(torch.tensor([4])), blend.user_vectors()[4:5])


def test_a_member_without_vectors_makes_the_product_partial():
    with_vectors, without = _factors(0), PopularityScorer(torch.arange(9, dtype=torch.float32))
    blend = BlendScorer([(with_vectors, 0.5), (without, 0.5)])
    assert blend.inner_product == "partial" and blend.user_vectors().shape == (6, 4)
    torch.testing.assert_close(blend.user_vectors() @ blend.item_vectors().t(),
                               0.5 * with_vectors.score_all(torch.arange(6)))
    alone = BlendScorer([(without, 1.0)])
    assert alone.inner_product == ""
    with pytest.raises(NotImplementedError, match="no member has inner-product vectors"):
        alone.item_vectors()


def test_a_package_config_without_members_or_with_an_unknown_one_is_refused():
    with pytest.raises(ValueError, match="members: expected a non-empty list"):
        FAMILY.load({}, {"num_items": 9, "members": []}, package=None)
    with pytest.raises(ValueError, match=r"members\[0\]: family: unknown model family 'bert4rec'"):
        FAMILY.load({}, {"num_items": 9, "members": [{"family": "bert4rec", "config": {}, "coefficient": 1.0}]},
                    package=None)


def test_a_blend_needs_the_newest_schema_version_of_its_members():
    """A version-1 reader would ignore a version-2 member's tensors (EASE's history weights) inside the blend too."""
    def member(name: str, schema_version: int) -> Member:
        exported = ExportedModel(name, {"w": torch.ones(2)}, {"num_users": 6, "num_items": 9}, schema_version)
        return Member(name, FitResult(_factors(0), exported, {}), 0.5, 1.0)

    assert blend([member("ials", 1), member("ease", 2)], {}).exported.schema_version == 2
    assert blend([member("ials", 1), member("GMF", 1)], {}).exported.schema_version == 1
