"""The CPU training step: NCF's forward and backward written out, with lazy Adam on the embedding rows a batch uses.

At the seed's batch size (256) an autograd step on CPU spends most of its time outside arithmetic: a dense gradient
for every embedding table, zero-filled each step; dense Adam over all of them; autograd's bookkeeping per op. Here

- the embedding tables live in one row block (user rows, then item rows; GMF columns, then MLP columns), each row
  beside its Adam moments: a batch gathers its distinct rows once and scatters them back once, and at retail scale,
  where each random row is a miss to DRAM, a row's moments come from the same pages and nearly for free
  (GMF, 1M users x 200k items, random batches of 1024: about 1.35x the samples/s of separate moment tables; on
  tables that fit in cache, ML-100K's, its three strided gathers cost about 10%);
- embedding rows follow lazy Adam: only rows in the batch move, and their moments decay only when touched (as in
  `torch.optim.SparseAdam`, with `torch.optim.Adam`'s epsilon); the MLP tower and the prediction layer follow dense
  (fused) Adam, with the L2 `weight_decay` of `torch.optim.Adam` (on embedding rows too, when they are touched);
- dropout masks come from `ncf.models.dropout_mask` fed by the step's own PCG64 stream (seeded from torch's
  global generator, saved in `state_dict`), in the order the model's Dropout layers draw them;
- autograd's per-op bookkeeping is gone: with the same masks a step equals autograd on the model with
  `torch.optim.Adam`, restricted to the rows in the batch (tests/ncf/test_cpu_step.py checks exactly that).

The block is the working copy of the embeddings during an epoch: `push()` writes it back into the model (before
evaluation, checkpoints and export), `pull()` reads the model (after loading weights).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ncf import hugepages
from ncf.models import NCF, dropout_mask

BETAS = (0.9, 0.999)
EPS = 1e-8


class CpuTrainStep:
    kind = "cpu-lazy-adam"

    def __init__(self, model: NCF, lr: float, weight_decay: float = 0.0):
        spec = model.spec
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.gmf_width = spec.factor_num if model.uses_gmf else 0
        self.mlp_width = spec.mlp_layers[0] // 2 if model.uses_mlp else 0
        self.num_users = spec.num_users
        self.dropout = spec.dropout
        self.linears = [m for m in model.MLP_layers if isinstance(m, nn.Linear)] if model.uses_mlp else []
        self.dense = [p for layer in (*self.linears, model.predict_layer) for p in (layer.weight, layer.bias)]
        # Transposed views, made once: the weights are updated in place.
        self.transposed = {id(layer): layer.weight.t() for layer in (*self.linears, model.predict_layer)}
        # Each row: weights, first moments, second moments.
        # Huge pages: each batch gathers and scatters random rows of a table of up to GBs.
        self.block = hugepages.zeros(spec.num_users + spec.num_items, 3, self.gmf_width + self.mlp_width)
        self.block_step = torch.zeros(())
        self.dense_moments = [torch.zeros_like(p) for p in self.dense], [torch.zeros_like(p) for p in self.dense]
        self.dense_step = torch.zeros(())
        self.dropout_bits = np.random.PCG64(int(torch.randint(0, 2**62, ())))
        self.pull()

    # ---- the embeddings: model <-> block ----------------------------------------------------------------------

    def _tables(self) -> list[tuple[nn.Embedding, slice, slice]]:
        """(embedding, block rows, block columns) for each table the model has."""
        users, items = slice(0, self.num_users), slice(self.num_users, None)
        gmf, mlp = slice(0, self.gmf_width), slice(self.gmf_width, None)
        tables = []
        if self.gmf_width:
            tables += [(self.model.embed_user_GMF, users, gmf), (self.model.embed_item_GMF, items, gmf)]
        if self.mlp_width:
            tables += [(self.model.embed_user_MLP, users, mlp), (self.model.embed_item_MLP, items, mlp)]
        return tables

    @torch.no_grad()
    def pull(self) -> None:
        for embedding, rows, columns in self._tables():
            self.block[rows, 0, columns] = embedding.weight

    @torch.no_grad()
    def push(self) -> None:
        for embedding, rows, columns in self._tables():
            embedding.weight.copy_(self.block[rows, 0, columns])

    def state_dict(self) -> dict[str, Any]:
        moments = self.block[:, 1:].transpose(0, 1).clone(memory_format=torch.contiguous_format)
        return {"moments": moments, "block_step": self.block_step.clone(),
                "dense_exp_avg": [t.clone() for t in self.dense_moments[0]],
                "dense_exp_avg_sq": [t.clone() for t in self.dense_moments[1]],
                "dense_step": self.dense_step.clone(), "dropout_rng": self.dropout_bits.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the moments; the weights come from the model (load its state first)."""
        self.block[:, 1:] = state["moments"].transpose(0, 1)
        self.block_step.copy_(state["block_step"])
        self.dense_step.copy_(state["dense_step"])
        self.dropout_bits.state = state["dropout_rng"]
        for mine, saved in zip(self.dense_moments, (state["dense_exp_avg"], state["dense_exp_avg_sq"]), strict=True):
            for dst, src in zip(mine, saved, strict=True):
                dst.copy_(src)
        self.pull()

    # ---- one step ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        """One Adam step on a batch; returns the batch's summed (weighted) BCE loss, as a tensor."""
        batch, gmf = users.numel(), self.gmf_width
        # Duplicates' gradients are summed before the update, as a dense gradient would be.
        unique, inverse = torch.unique(torch.cat((users, items + self.num_users)), return_inverse=True)
        # Weights and moments of the distinct rows, each part contiguous: the fused Adam kernel silently
        # miscomputes strided views.
        touched = torch.empty(3, unique.numel(), self.block.shape[2])
        for part in range(3):
            torch.index_select(self.block[:, part], 0, unique, out=touched[part])
        rows = touched[0].index_select(0, inverse)
        user_rows, item_rows = rows[:batch], rows[batch:]

        parts = []
        if gmf:
            parts.append(user_rows[:, :gmf] * item_rows[:, :gmf])
        inputs, outputs, masks = [], [], []
        if self.mlp_width:
            x = torch.cat((user_rows[:, gmf:], item_rows[:, gmf:]), 1)
            for layer in self.linears:
                mask = (dropout_mask((batch, layer.in_features), self.dropout, self.dropout_bits)
                        if self.dropout else None)
                if mask is not None:
                    x = x.mul_(mask) if not inputs else x * mask  # the first input is a fresh tensor
                inputs.append(x)
                masks.append(mask)
                x = torch.addmm(layer.bias, x, self.transposed[id(layer)]).clamp_min_(0)
                outputs.append(x)
            parts.append(x)
        features = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        predict = self.model.predict_layer
        logits = torch.addmm(predict.bias, features, self.transposed[id(predict)]).view(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum")

        # d(mean loss)/d(logit) = weight * (sigmoid(logit) - target) / batch
        grad = torch.sigmoid(logits).sub_(targets)
        if weights is not None:
            grad.mul_(weights)
        grad = grad.mul_(1.0 / batch).unsqueeze(1)
        dense_grads = [grad.t().mm(features), grad.sum(0)]
        grad_features = grad * predict.weight
        grad_rows = torch.empty(2 * batch, self.block.shape[2])
        if gmf:
            torch.mul(grad_features[:, :gmf], item_rows[:, :gmf], out=grad_rows[:batch, :gmf])
            torch.mul(grad_features[:, :gmf], user_rows[:, :gmf], out=grad_rows[batch:, :gmf])
        if self.mlp_width:
            grad_x = grad_features[:, gmf:]
            tower_grads: list[torch.Tensor] = []
            for layer, x, out, mask in zip(reversed(self.linears), reversed(inputs), reversed(outputs), reversed(masks),
                                           strict=True):
                grad_out = torch.ops.aten.threshold_backward(grad_x, out, 0)  # ReLU
                tower_grads[:0] = [grad_out.t().mm(x), grad_out.sum(0)]
                grad_x = grad_out.mm(layer.weight)
                if mask is not None:
                    grad_x.mul_(mask)
            grad_rows[:batch, gmf:] = grad_x[:, :self.mlp_width]
            grad_rows[batch:, gmf:] = grad_x[:, self.mlp_width:]
            dense_grads = tower_grads + dense_grads

        self._adam(self.dense, dense_grads, *self.dense_moments, self.dense_step)
        # Lazy Adam on the rows this batch used.
        row_grads = torch.zeros(unique.numel(), grad_rows.shape[1]).index_add_(0, inverse, grad_rows)
        self._adam([touched[0]], [row_grads], [touched[1]], [touched[2]], self.block_step)
        for part in range(3):
            self.block[:, part].index_copy_(0, unique, touched[part])
        return loss

    def _adam(self, params, grads, exp_avgs, exp_avg_sqs, step: torch.Tensor) -> None:
        """torch.optim.Adam's fused kernel, called directly: the group shares one step count, and the optimizer's
        per-call overhead (and its per-tensor step increments) was ~10% of a batch-256 step."""
        step.add_(1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params), lr=self.lr, beta1=BETAS[0],
                           beta2=BETAS[1], weight_decay=self.weight_decay, eps=EPS, amsgrad=False, maximize=False)
