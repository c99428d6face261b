from __future__ import annotations

import pytest
import torch

from ncf import cpu_step
from ncf.cpu_step import CpuTrainStep
from ncf.models import ModelSpec, build_model, dropout_mask


@pytest.mark.parametrize("model_type", ["GMF", "MLP", "NeuMF"])
@pytest.mark.parametrize("dropout, weighted, weight_decay", [(0.0, False, 0.0), (0.3, True, 1e-3)])
def test_step_equals_autograd_with_adam_when_every_row_is_in_the_batch(model_type, dropout, weighted, weight_decay,
                                                                       monkeypatch):
    """Lazy Adam is Adam restricted to the rows in the batch, so with every row in every batch they must agree."""
    # Both draw their dropout masks from torch's generator here (the step's own stream is tested below).
    monkeypatch.setattr(cpu_step, "dropout_mask", lambda shape, p, bits: dropout_mask(shape, p))
    num_users, num_items, batch = 9, 13, 20
    spec = ModelSpec(model_type, num_users, num_items, factor_num=4, num_layers=2, dropout=dropout)
    torch.manual_seed(0)
    reference = build_model(spec).train()
    fast = build_model(spec).train()
    fast.load_state_dict(reference.state_dict())
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=weight_decay)
    step = CpuTrainStep(fast, lr=0.01, weight_decay=weight_decay)

    generator = torch.Generator().manual_seed(1)
    for seed in range(5):
        # Every row, plus repeats: a repeated row's gradients must be summed, not overwritten.
        users = torch.cat([torch.randperm(num_users, generator=generator),
                           torch.randint(0, num_users, (batch - num_users,), generator=generator)])
        items = torch.cat([torch.randperm(num_items, generator=generator),
                           torch.randint(0, num_items, (batch - num_items,), generator=generator)])
        targets = (torch.rand(batch, generator=generator) < 0.3).float()
        weights = torch.rand(batch, generator=generator) + 0.5 if weighted else None
        torch.manual_seed(100 + seed)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(reference(users, items), targets, weight=weights)
        adam.zero_grad()
        loss.backward()
        adam.step()
        torch.manual_seed(100 + seed)
        got = step(users, items, targets, weights)
        torch.testing.assert_close(got, loss.detach() * batch, rtol=1e-5, atol=1e-6)
    step.push()
    for (name, want), have in zip(reference.state_dict().items(), fast.state_dict().values(), strict=True):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_rows_outside_the_batch_do_not_move():
    model = build_model(ModelSpec("NeuMF", num_users=6, num_items=8, factor_num=4, num_layers=2)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = CpuTrainStep(model, lr=0.05)
    step(torch.tensor([1, 1, 3]), torch.tensor([2, 5, 5]), torch.tensor([1.0, 0.0, 1.0]))
    step.push()
    after = model.state_dict()
    for side, in_batch in (("user", {1, 3}), ("item", {2, 5})):
        for part in ("GMF", "MLP"):
            name = f"embed_{side}_{part}.weight"
            moved = set((after[name] != before[name]).any(dim=1).nonzero().view(-1).tolist())
            assert moved <= in_batch, name
            if part == "GMF":  # the GMF gradient of a row in the batch is never zero here
                assert moved == in_batch, name


def test_state_dict_round_trip_continues_identically():
    spec = ModelSpec("NeuMF", num_users=7, num_items=11, factor_num=4, num_layers=2, dropout=0.2)
    torch.manual_seed(3)
    model = build_model(spec).train()
    step = CpuTrainStep(model, lr=0.01, weight_decay=1e-4)
    batches = [(torch.randint(0, 7, (10,)), torch.randint(0, 11, (10,)), torch.randint(0, 2, (10,)).float())
               for _ in range(4)]
    for batch in batches[:2]:
        step(*batch)
    step.push()
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_step = step.state_dict()
    for batch in batches[2:]:
        step(*batch)
    step.push()
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    resumed_model = build_model(spec).train()
    resumed_model.load_state_dict(saved_model)
    resumed = CpuTrainStep(resumed_model, lr=0.01, weight_decay=1e-4)
    resumed.load_state_dict(saved_step)  # the dropout stream included
    for batch in batches[2:]:
        resumed(*batch)
    resumed.push()
    for name, value in resumed_model.state_dict().items():
        assert torch.equal(value, uninterrupted[name]), name
