"""Score many items for a batch of users in one batched forward, sharing all user-independent work.

The first MLP layer acts on `concat(user_mlp, item_mlp)`, so it splits into `W_user @ u + (W_item @ i + b)`: the
item half (and the item GMF embeddings folded with the GMF half of the prediction layer) is computed once per
model, not once per (user, item) pair. Full-ranking evaluation and the serving predictor both use this class.
Scores are logits (monotone in the predicted probability; apply a sigmoid for a probability).
"""

from __future__ import annotations

import torch
from torch import nn

from ncf.models import NCF

# Upper bound on the [users, items, hidden] activations materialised at once (floats): ~256 MB.
_ACTIVATION_BUDGET = 1 << 26


class ItemScorer:
    """`ItemScorer(model).score_all(users)` -> [B, num_items]; `.score_candidates(users, items)` -> [B, C]."""

    @torch.no_grad()
    def __init__(self, model: NCF):
        self.model = model
        self.device = next(model.parameters()).device
        self.num_items = model.spec.num_items
        weight = model.predict_layer.weight.detach().float()[0]
        self.bias = model.predict_layer.bias.detach().float()[0]
        self.gmf_weight = self.item_gmf = None
        self.user_first = self.item_first = None
        self.tower: list[nn.Linear] = []
        offset = 0
        if model.uses_gmf:
            f = model.spec.factor_num
            self.gmf_weight = weight[:f]
            self.item_gmf = model.embed_item_GMF.weight.detach().float()
            offset = f
        if model.uses_mlp:
            linears = [m for m in model.MLP_layers if isinstance(m, nn.Linear)]
            first = linears[0]
            half = model.embed_user_MLP.embedding_dim
            w = first.weight.detach().float()
            self.user_first = w[:, :half]
            # The item half of layer 1, bias included: [num_items, hidden_1].
            self.item_first = torch.addmm(first.bias.detach().float(), model.embed_item_MLP.weight.detach().float(),
                                          w[:, half:].t())
            self.tower = linears[1:]
            self.mlp_weight = weight[offset:]
        self.hidden = self.item_first.shape[1] if self.item_first is not None else 1

    def _tower(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(h)
        for layer in self.tower:
            h = torch.relu_(torch.nn.functional.linear(h, layer.weight.float(), layer.bias.float()))
        return h @ self.mlp_weight

    @torch.no_grad()
    def _score(self, users: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
        """items None: all items ([B, N]); else per-user candidates [B, C]."""
        out = self.bias.expand(1, 1)
        if self.item_gmf is not None:
            user_gmf = self.model.embed_user_GMF.weight[users].float() * self.gmf_weight  # [B, f]
            if items is None:
                gmf = user_gmf @ self.item_gmf.t()
            else:
                gmf = torch.einsum("bf,bcf->bc", user_gmf, self.item_gmf[items])
            out = out + gmf
        if self.item_first is not None:
            user_first = self.model.embed_user_MLP.weight[users].float() @ self.user_first.t()  # [B, h1]
            item_first = self.item_first if items is None else self.item_first[items]
            h = user_first[:, None, :] + item_first  # [B, N|C, h1]
            out = out + self._tower(h)
        return out

    def _chunk(self, width: int) -> int:
        return max(1, _ACTIVATION_BUDGET // max(1, width * self.hidden))

    def _as_index(self, x) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def score_all(self, users) -> torch.Tensor:
        """Logits for every item: float32 [len(users), num_items]."""
        users = self._as_index(users).view(-1)
        step = self._chunk(self.num_items)
        return torch.cat([self._score(users[i:i + step], None) for i in range(0, len(users), step)]) \
            if len(users) else torch.empty(0, self.num_items, device=self.device)

    @torch.no_grad()
    def score_candidates(self, users, items) -> torch.Tensor:
        """Logits for per-user candidate items `items` [B, C] (or [C], shared by every user): float32 [B, C]."""
        users = self._as_index(users).view(-1)
        items = self._as_index(items)
        if items.dim() == 1:
            items = items.expand(len(users), -1)
        step = self._chunk(items.shape[1])
        return torch.cat([self._score(users[i:i + step], items[i:i + step]) for i in range(0, len(users), step)]) \
            if len(users) else torch.empty(0, items.shape[1], device=self.device)
