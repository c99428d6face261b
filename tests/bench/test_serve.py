"""bench/serve.py's synthetic packages load as the models they are named after, blend included."""

from __future__ import annotations

import pytest
import torch

from bench.serve import structured_package
from ncf.package import load_package


@pytest.mark.parametrize(("model_type", "family"), [("GMF", "ncf"), ("NeuMF", "ncf"), ("blend", "blend")])
def test_structured_packages_load_as_the_model_they_name(tmp_path, model_type, family):
    package = load_package(structured_package(tmp_path / model_type, 300, 400, model_type=model_type, members=2,
                                              topics=10))
    assert package.family == family and len(package.item_ids) == 400
    users = torch.arange(300)
    scores = package.scorer.score_all(users)
    assert scores.shape == (300, 400) and torch.isfinite(scores).all()
    if model_type == "blend":  # GMF x2 and iALS, half and half, each over its own scale: still an inner product
        members = package.config["members"]
        assert [(m["name"], m["family"], m["weight"]) for m in members] == [("GMF", "ncf", 0.5), ("ials", "ials", 0.5)]
        assert package.scorer.inner_product == "exact"
        offset = scores - package.scorer.user_vectors() @ package.scorer.item_vectors().t()
        torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=1e-4, atol=1e-4)
    else:
        assert package.config["model_type"] == model_type and package.config["members"] == 2
