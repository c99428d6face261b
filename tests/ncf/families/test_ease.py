"""EASE: the closed form against a direct computation, its scorer, and the refusal of catalogues too large."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ncf.errors import UserError
from ncf.families import get
from ncf.families.base import FitContext, Runtime
from ncf.families.ease import EaseSettings
from ncf.splits import Interactions
from tests.tiny_data import make_partition


def _context(budget: int = 0) -> FitContext:
    return FitContext(Runtime(torch.device("cpu")), memory_budget=budget)


def test_closed_form_matches_the_paper(tiny_partition):
    rows = Interactions.of(tiny_partition)
    scorer, exported = get("ease").fit_rows(rows, EaseSettings(ease_lambda=3.0), _context())
    x = np.zeros((rows.num_users, rows.num_items))
    x[rows.users, rows.items] = 1.0
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(rows.num_items))
    b = np.eye(rows.num_items) - p / np.diag(p)  # Steck 2019, eq. (8)
    np.testing.assert_allclose(exported.weights["B"].numpy(), b, rtol=1e-4, atol=1e-6)
    assert np.all(np.diag(exported.weights["B"].numpy()) == 0.0)
    assert exported.config == {"num_users": rows.num_users, "num_items": rows.num_items, "ease_lambda": 3.0,
                               "recency_weight": 0.0, "score": "ease"}
    assert set(exported.weights) == {"B"} and exported.schema_version == 1  # older readers serve it right
    np.testing.assert_allclose(scorer.score_all(torch.arange(rows.num_users)).numpy(), x @ b, rtol=1e-4, atol=1e-5)


def test_a_recency_weight_weighs_each_users_history_when_scoring(tiny_partition):
    rows = Interactions.of(tiny_partition)
    plain, _ = get("ease").fit_rows(rows, EaseSettings(ease_lambda=3.0), _context())
    scorer, exported = get("ease").fit_rows(rows, EaseSettings(ease_lambda=3.0, ease_recency_weight=16.0), _context())
    b = exported.weights["B"].numpy()
    np.testing.assert_array_equal(b, plain.b.numpy())  # fitted on the binary history either way
    weighted = np.zeros((rows.num_users, rows.num_items))
    weighted[rows.users, rows.items] = rows.recency_weights(16.0)
    everything = scorer.score_all(torch.arange(rows.num_users))
    np.testing.assert_allclose(everything.numpy(), weighted @ b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(everything, plain.score_all(torch.arange(rows.num_users)))
    items = torch.randint(0, rows.num_items, (rows.num_users, 7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scorer.score_candidates(torch.arange(rows.num_users), items),
                               everything.gather(1, items))
    # the package keeps the weights in the seen CSR's order, and refuses weights that do not match it
    indptr, indices = rows.seen_csr()
    np.testing.assert_allclose(exported.weights["history_weights"].numpy(),  # float32
                               weighted[np.repeat(np.arange(rows.num_users), np.diff(indptr)), indices], rtol=1e-6)
    package = SimpleNamespace(seen_indptr=indptr, seen_indices=indices)
    loaded = get("ease").load(exported.weights, exported.config, package)
    torch.testing.assert_close(loaded.score_all(torch.arange(rows.num_users)), everything)
    with pytest.raises(ValueError, match=r"history_weights has \(3,\) entries, expected one per seen item"):
        get("ease").load({**exported.weights, "history_weights": torch.ones(3)}, exported.config, package)


def test_a_package_fitted_without_refit_weighs_the_history_it_serves(tiny_partition_uri, tmp_path):
    """--refit false exports B as fitted without the validation rows; the package's history is every training row,
    so its weights must be too."""
    from ncf.data import load_partition
    from ncf.package import load_package
    from ncf.train import TrainConfig, run

    result = run(TrainConfig(partition_uri=tiny_partition_uri, output_uri=str(tmp_path / "m"), family="ease",
                             ease_recency_weight=16.0, refit=False, progress="off"))
    package = load_package(result.model_uri)
    assert package.config["schema_version"] == 2  # a version-1 reader would ignore the weights: it must refuse
    rows = Interactions.of(load_partition(tiny_partition_uri))
    weighted = np.zeros((rows.num_users, rows.num_items))
    weighted[rows.users, rows.items] = rows.recency_weights(16.0)
    np.testing.assert_allclose(package.scorer.score_all(torch.arange(rows.num_users)).numpy(),
                               weighted @ package.weights["B"].numpy(), rtol=1e-4, atol=1e-5)


def test_users_without_history_score_zero():
    partition = make_partition(num_users=10, num_items=20, per_user=3, num_neg=5)
    rows = Interactions.of(partition)
    kept = rows.users != 4
    rows = Interactions(rows.users[kept], rows.items[kept], rows.ts[kept], rows.num_users, rows.num_items)
    scorer, _ = get("ease").fit_rows(rows, EaseSettings(), _context())
    assert torch.equal(scorer.score_all([4]), torch.zeros(1, 20))
    assert torch.equal(scorer.score_candidates([4, 4], [[1, 2], [3, 4]]), torch.zeros(2, 2))


def test_a_catalogue_over_the_memory_budget_is_refused_with_its_sizes(tiny_partition):
    rows = Interactions.of(tiny_partition)
    with pytest.raises(UserError, match=r"ease: a catalogue of 60 items: needs an estimated .* \(item-item Gram / "
                                        r"inverse \(60 x 60 float64\) 28\.1 KB, sparse Gram .*, weights B \(60 x 60 "
                                        r"float32\) 14\.1 KB\), over the memory budget of 1\.0 KB"):
        get("ease").fit_rows(rows, EaseSettings(), _context(budget=1024))


def test_train_step_refuses_and_publishes_nothing(tiny_partition_uri, tmp_path, capsys):
    from ncf.train import main

    out = tmp_path / "models" / "ease"
    assert main(["--partition-uri", tiny_partition_uri, "--output-uri", str(out), "--family", "ease",
                 "--memory-budget-gb", "1e-6", "--progress", "off"]) == 2
    err = capsys.readouterr().err
    assert "error: ease: a catalogue of 80 items: needs an estimated" in err and "--memory-budget-gb" in err
    assert not out.exists()
    assert main(["--partition-uri", tiny_partition_uri, "--output-uri", str(out), "--family", "ease",
                 "--ease-lambda", "0"]) == 2
    assert "ease_lambda: must be positive" in capsys.readouterr().err


def test_mirror_fills_the_lower_triangle_block_by_block():
    from ncf.families.ease import _mirror_upper

    rng = np.random.default_rng(0)
    symmetric = rng.random((10, 10))
    symmetric = symmetric + symmetric.T
    garbage_below = np.triu(symmetric) + np.tril(rng.random((10, 10)), -1)
    _mirror_upper(garbage_below, block=3)
    np.testing.assert_array_equal(garbage_below, symmetric)
