from __future__ import annotations

import numpy as np
import pytest
import torch

from ncf.errors import UserError
from ncf.models import (
    NCF,
    ModelSpec,
    NCFEnsemble,
    build_model,
    default_mlp_layers,
    dropout_mask,
    ensemble_of,
    neumf_from_pretrained,
)


def test_default_tower_halves_down_to_factor_num():
    assert default_mlp_layers(32, 3) == (256, 128, 64, 32)
    assert ModelSpec("MLP", 5, 7, factor_num=8, num_layers=2).mlp_layers == (32, 16, 8)


@pytest.mark.parametrize("model_type, predict_in, names", [
    ("GMF", 8, {"embed_user_GMF", "embed_item_GMF"}),
    ("MLP", 8, {"embed_user_MLP", "embed_item_MLP", "MLP_layers"}),
    ("NeuMF", 16, {"embed_user_GMF", "embed_item_GMF", "embed_user_MLP", "embed_item_MLP", "MLP_layers"}),
])
def test_shapes_and_parts(model_type, predict_in, names):
    model = build_model(ModelSpec(model_type, 5, 7, factor_num=8, num_layers=3, dropout=0.1))
    children = {name for name, _ in model.named_children()}
    assert children == names | {"predict_layer"}
    assert model.predict_layer.in_features == predict_in
    if "embed_user_MLP" in names:
        assert model.embed_user_MLP.embedding_dim == 32  # 8 * 2**3 / 2
    out = model(torch.tensor([0, 4, 2]), torch.tensor([6, 0, 3]))
    assert out.shape == (3,)


def test_paper_initialisation():
    torch.manual_seed(0)
    model = build_model(ModelSpec("NeuMF", 2000, 3000, factor_num=16, num_layers=3))
    std = model.embed_item_GMF.weight.std().item()
    assert 0.009 < std < 0.011
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
    first = model.MLP_layers[1]
    bound = (6 / (first.in_features + first.out_features)) ** 0.5
    assert first.weight.abs().max() <= bound


def test_explicit_mlp_layers_nvidia_shape():
    model = build_model(ModelSpec("NeuMF", 3, 4, factor_num=64, mlp_layers=(256, 256, 128, 64)))
    linears = [m for m in model.MLP_layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 256), (256, 128), (128, 64)]
    assert model.embed_item_MLP.embedding_dim == 128
    assert model.predict_layer.in_features == 128


def test_bad_specs_are_user_errors():
    with pytest.raises(UserError, match="unknown model type"):
        ModelSpec("FM", 3, 3)
    with pytest.raises(UserError, match="dropout"):
        ModelSpec("GMF", 3, 3, dropout=1.5)
    with pytest.raises(UserError, match="members must be >= 1"):
        ModelSpec("GMF", 3, 3, members=0)


def test_ensemble_scores_the_mean_of_its_members_logits():
    torch.manual_seed(0)
    spec = ModelSpec("NeuMF", 5, 7, factor_num=4, num_layers=2)
    members = [build_model(spec).eval() for _ in range(3)]
    ensemble = ensemble_of(members)
    assert isinstance(ensemble, NCFEnsemble) and ensemble.spec.members == 3 and ensemble.model_type == "NeuMF"
    users, items = torch.tensor([0, 4, 2, 1]), torch.tensor([6, 0, 3, 3])
    expected = (members[0](users, items) + members[1](users, items) + members[2](users, items)) / 3
    torch.testing.assert_close(ensemble(users, items), expected)
    assert ensemble_of(members[:1]) is members[0]
    # Rebuilt from its spec (as a package loads it), the ensemble has the same parameter names and shapes.
    rebuilt = build_model(ensemble.spec)
    assert isinstance(rebuilt, NCFEnsemble) and len(rebuilt.members) == 3
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in
                                                                     ensemble.state_dict().items()}
    assert "members.2.embed_item_MLP.weight" in rebuilt.state_dict()


def test_ensemble_members_must_share_an_architecture():
    with pytest.raises(UserError, match="same architecture"):
        ensemble_of([build_model(ModelSpec("GMF", 5, 7, factor_num=4)), build_model(ModelSpec("GMF", 5, 7, factor_num=8))])
    with pytest.raises(UserError, match="build_model builds the ensemble"):
        NCF(ModelSpec("GMF", 5, 7, members=2))


def test_neumf_from_pretrained_combines_gmf_and_mlp():
    gmf = build_model(ModelSpec("GMF", 6, 9, factor_num=4, num_layers=2))
    mlp = build_model(ModelSpec("MLP", 6, 9, factor_num=4, num_layers=2))
    with torch.no_grad():
        gmf.predict_layer.bias.fill_(0.4)
        mlp.predict_layer.bias.fill_(-0.2)
    neumf = neumf_from_pretrained(gmf, mlp, alpha=0.5)
    gmf.eval(), mlp.eval(), neumf.eval()
    users, items = torch.arange(6), torch.arange(6)
    # With alpha 0.5 the NeuMF logit is exactly the mean of the two pretrained logits.
    expected = 0.5 * gmf(users, items) + 0.5 * mlp(users, items)
    torch.testing.assert_close(neumf(users, items), expected)
    assert torch.equal(neumf.embed_user_MLP.weight, mlp.embed_user_MLP.weight)


@pytest.mark.parametrize("source", ["torch", "pcg64"])
def test_dropout_mask_keeps_the_right_share_and_rescales(source):
    def draw():
        torch.manual_seed(0)
        return dropout_mask((400, 500), 0.3, np.random.PCG64(0) if source == "pcg64" else None)

    mask = draw()
    kept = mask[mask > 0]
    assert abs(kept.numel() / mask.numel() - 0.7) < 0.005
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - 0.3)))
    assert torch.equal(draw(), mask)  # reproducible from the seed
