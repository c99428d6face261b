"""GMF, MLP and NeuMF (He et al., 2017, "Neural Collaborative Filtering").

One module class, `NCF`, covers the three model types; attribute names follow the common public PyTorch NCF
implementation (`embed_user_GMF`, `embed_item_GMF`, `embed_user_MLP`, `embed_item_MLP`, `MLP_layers`,
`predict_layer`) so its checkpoints map over by name. Only the parts a model type uses are created.

The MLP tower is given by `mlp_layers`: the input width (user + item MLP embedding) followed by each hidden
layer's width. By default it is derived from the seed's `factor_num` / `num_layers` exactly as the paper does
(each layer halves, the last one is `factor_num` wide); NVIDIA's benchmark shape (256-256-128-64) is expressible
explicitly.

`NCFEnsemble` holds several such models of one architecture (`ModelSpec.members`, a seed ensemble) and scores
the mean of their logits; `build_model` returns one or the other, so packages and scorers take either.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ncf.errors import UserError

MODEL_TYPES = ("GMF", "MLP", "NeuMF")


def dropout_mask(shape: tuple[int, ...], p: float, bits: np.random.BitGenerator | None = None) -> torch.Tensor:
    """A CPU dropout mask: 0 for dropped units, `1 / (1 - p)` for kept ones, from 16-bit uniform draws (four per
    64-bit random number), keeping each unit with probability `1 - round(p * 2**16) / 2**16`.

    The draws come from torch's global generator, or from `bits` (NumPy's PCG64 makes them ~5x faster than torch's
    Mersenne Twister; the CPU training step uses it). CPU `bernoulli_` draws one Mersenne-Twister number per element
    and was ~60% of a batch-256 training step; comparisons that produce `bool` run unvectorised on CPU, hence the
    in-place `ge_` on the int16 draws.
    """
    n = math.prod(shape)
    words = (n + 3) // 4
    if bits is None:
        draws = torch.empty(words, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    else:
        draws = torch.from_numpy(bits.random_raw(words).view(np.int64))
    keep = draws.view(torch.int16)[:n].view(shape).ge_(round(p * 65536) - 32768)
    return keep.to(torch.float32).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """`nn.Dropout` with `dropout_mask` on CPU (cheaper draws, same seeding and checkpointed RNG state); plain
    dropout on GPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        return x * dropout_mask(tuple(x.shape), self.p).to(x.dtype)


def default_mlp_layers(factor_num: int, num_layers: int) -> tuple[int, ...]:
    """The paper's tower: input `factor_num * 2**num_layers`, halving down to `factor_num`."""
    return tuple(factor_num * 2 ** (num_layers - i) for i in range(num_layers + 1))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture (stored in the package's config.json)."""

    model_type: str
    num_users: int
    num_items: int
    factor_num: int = 32
    num_layers: int = 3
    dropout: float = 0.0
    mlp_layers: tuple[int, ...] = ()
    members: int = 1  # models in a seed ensemble (NCFEnsemble); 1: a single NCF

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise UserError(f"model: unknown model type {self.model_type!r}; choose one of {list(MODEL_TYPES)}")
        if self.num_users <= 0 or self.num_items <= 0:
            raise UserError(f"model: need at least one user and one item (got {self.num_users}, {self.num_items})")
        if self.factor_num <= 0 or self.num_layers <= 0:
            raise UserError(f"model: factor_num and num_layers must be positive ({self.factor_num}, {self.num_layers})")
        if self.members < 1:
            raise UserError(f"model: members must be >= 1, got {self.members}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model: dropout must be in [0, 1), got {self.dropout}")
        layers = tuple(int(x) for x in self.mlp_layers) or default_mlp_layers(self.factor_num, self.num_layers)
        if len(layers) < 2 or layers[0] % 2 or min(layers) <= 0:
            raise UserError(f"model: mlp_layers {list(layers)} needs an even input width and >= 1 hidden layer")
        object.__setattr__(self, "mlp_layers", layers)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mlp_layers"] = list(self.mlp_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["mlp_layers"] = tuple(values.get("mlp_layers") or ())
        return cls(**values)


class NCF(nn.Module):
    """GMF, MLP or NeuMF; `forward(users, items)` returns one logit per pair (apply a sigmoid for a probability)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.members != 1:
            raise UserError(f"model: one NCF cannot hold {spec.members} members; build_model builds the ensemble")
        self.spec = spec
        self.model_type = spec.model_type
        self.uses_gmf = spec.model_type in ("GMF", "NeuMF")
        self.uses_mlp = spec.model_type in ("MLP", "NeuMF")
        predict_size = 0
        if self.uses_gmf:
            self.embed_user_GMF = nn.Embedding(spec.num_users, spec.factor_num)
            self.embed_item_GMF = nn.Embedding(spec.num_items, spec.factor_num)
            predict_size += spec.factor_num
        if self.uses_mlp:
            layers = spec.mlp_layers
            self.embed_user_MLP = nn.Embedding(spec.num_users, layers[0] // 2)
            self.embed_item_MLP = nn.Embedding(spec.num_items, layers[0] // 2)
            modules: list[nn.Module] = []
            for width_in, width_out in zip(layers[:-1], layers[1:], strict=True):
                modules += [Dropout(p=spec.dropout), nn.Linear(width_in, width_out), nn.ReLU()]
            self.MLP_layers = nn.Sequential(*modules)
            predict_size += layers[-1]
        self.predict_layer = nn.Linear(predict_size, 1)
        self.reset_parameters()

    def embeddings(self) -> list[nn.Embedding]:
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]

    def reset_parameters(self) -> None:
        """The paper's initialisation: N(0, 0.01) embeddings, Xavier MLP, Kaiming (sigmoid) output, zero biases."""
        for emb in self.embeddings():
            nn.init.normal_(emb.weight, std=0.01)
        if self.uses_mlp:
            for m in self.MLP_layers:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
        nn.init.kaiming_uniform_(self.predict_layer.weight, a=1, nonlinearity="sigmoid")
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.uses_gmf:
            parts.append(self.embed_user_GMF(users) * self.embed_item_GMF(items))
        if self.uses_mlp:
            interaction = torch.cat((self.embed_user_MLP(users), self.embed_item_MLP(items)), -1)
            parts.append(self.MLP_layers(interaction))
        features = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return self.predict_layer(features).view(-1)


class NCFEnsemble(nn.Module):
    """Models of one architecture trained with different seeds; `forward` returns the mean of their logits.

    The members keep their own parameters (`members.<k>.embed_user_GMF.weight`, ...), so each one is exactly the
    model its training run selected.
    """

    def __init__(self, members: list[NCF]):
        super().__init__()
        first = members[0].spec
        if any(m.spec != first for m in members):
            raise UserError("ensemble: every member needs the same architecture (ModelSpec)")
        self.spec = dataclasses.replace(first, members=len(members))
        self.model_type = first.model_type
        self.members = nn.ModuleList(members)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(users, items) for m in self.members]).mean(dim=0)


def build_model(spec: ModelSpec) -> NCF | NCFEnsemble:
    """A freshly initialised model for `spec`: an NCF, or an NCFEnsemble of `spec.members` NCFs."""
    if spec.members == 1:
        return NCF(spec)
    return NCFEnsemble([NCF(dataclasses.replace(spec, members=1)) for _ in range(spec.members)])


def ensemble_of(models: list[NCF]) -> NCF | NCFEnsemble:
    """The model that scores like the mean of `models`' logits; a single model is returned as it is."""
    return models[0] if len(models) == 1 else NCFEnsemble(models)


@torch.no_grad()
def neumf_from_pretrained(gmf: NCF, mlp: NCF, dropout: float | None = None, alpha: float = 0.5) -> NCF:
    """NeuMF initialised from a trained GMF and MLP (the paper's pretraining): embeddings and tower copied, the
    prediction layer is the concatenation of both, weighted `alpha` (GMF) and `1 - alpha` (MLP)."""
    if gmf.model_type != "GMF" or mlp.model_type != "MLP":
        raise UserError(f"pretraining needs a GMF and an MLP model, got {gmf.model_type} and {mlp.model_type}")
    g, m = gmf.spec, mlp.spec
    if (g.num_users, g.num_items, g.factor_num) != (m.num_users, m.num_items, m.factor_num):
        raise UserError("pretraining: GMF and MLP disagree on num_users / num_items / factor_num")
    spec = dataclasses.replace(m, model_type="NeuMF", dropout=m.dropout if dropout is None else dropout)
    model = NCF(spec)
    model.embed_user_GMF.weight.copy_(gmf.embed_user_GMF.weight)
    model.embed_item_GMF.weight.copy_(gmf.embed_item_GMF.weight)
    model.embed_user_MLP.weight.copy_(mlp.embed_user_MLP.weight)
    model.embed_item_MLP.weight.copy_(mlp.embed_item_MLP.weight)
    for dst, src in zip(model.MLP_layers, mlp.MLP_layers, strict=True):
        if isinstance(dst, nn.Linear):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    weight = torch.cat([alpha * gmf.predict_layer.weight, (1 - alpha) * mlp.predict_layer.weight], dim=1)
    model.predict_layer.weight.copy_(weight)
    model.predict_layer.bias.copy_(alpha * gmf.predict_layer.bias + (1 - alpha) * mlp.predict_layer.bias)
    return model
