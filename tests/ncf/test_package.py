from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ncf import storage
from ncf.errors import UserError
from ncf.families.ncf import export, load_model
from ncf.models import ModelSpec, build_model, ensemble_of
from ncf.package import load_package, package_tables, save_package
from ncf.scoring import ItemScorer


@pytest.fixture
def model(tiny_partition):
    torch.manual_seed(3)
    return build_model(ModelSpec("NeuMF", tiny_partition.num_users, tiny_partition.num_items, 8, 2, 0.3)).eval()


def _save(uri, model, partition):
    return save_package(uri, export(model), metrics={"hr@10": 0.5}, hyperparameters={"lr": 0.001, "epochs": 3},
                        extra={"partition_uri": partition.uri}, **package_tables(partition))


def test_round_trip_is_bit_identical(tmp_path, model, tiny_partition):
    uri = tmp_path / "models" / "run-1"
    _save(uri, model, tiny_partition)
    assert sorted(p.name for p in uri.iterdir()) == sorted(
        ["_SUCCESS", "config.json", "item_ids.json", "metrics.json", "popularity.npy", "seen.npz",
         "user_ids.json", "weights.safetensors"])
    pkg = load_package(uri)
    assert pkg.family == "ncf" and pkg.config["family"] == "ncf"
    users = torch.arange(tiny_partition.num_users)
    assert torch.equal(pkg.scorer.score_all(users), ItemScorer(model).score_all(users))
    assert pkg.config["model_type"] == "NeuMF" and pkg.config["schema_version"] == 1
    assert pkg.config["hyperparameters"]["epochs"] == 3 and pkg.config["partition_uri"] == "memory://tiny"
    assert pkg.user_index["u7"] == 7 and pkg.item_ids[3] == "i3"
    assert pkg.metrics == {"hr@10": 0.5}
    assert pkg.popularity.dtype == np.float32 and pkg.popularity.sum() == tiny_partition.train_users.size
    train_items_0 = sorted(tiny_partition.train_items[tiny_partition.train_users == 0].tolist())
    assert pkg.seen_items(0).tolist() == train_items_0


def test_ensemble_round_trip_is_bit_identical(tmp_path, tiny_partition):
    torch.manual_seed(5)
    spec = ModelSpec("NeuMF", tiny_partition.num_users, tiny_partition.num_items, 8, 2, 0.3)
    ensemble = ensemble_of([build_model(spec).eval() for _ in range(2)])
    uri = _save(tmp_path / "models" / "ensemble", ensemble, tiny_partition)
    pkg = load_package(uri)
    rebuilt = load_model(pkg)
    assert pkg.config["members"] == 2 and rebuilt.spec == ensemble.spec and not rebuilt.training
    users = torch.arange(tiny_partition.num_users)
    assert torch.equal(pkg.scorer.score_all(users), ItemScorer(ensemble).score_all(users))
    assert torch.equal(ItemScorer(rebuilt).score_all(users), pkg.scorer.score_all(users))
    # A package of one member is the single model's package: old readers and writers agree on it.
    single = load_package(_save(tmp_path / "models" / "single", ensemble.members[0], tiny_partition))
    assert single.config["members"] == 1 and type(load_model(single)).__name__ == "NCF"


def test_round_trip_through_s3(s3_bucket, model, tiny_partition):
    uri = f"s3://{s3_bucket}/models/run-2"
    _save(uri, model, tiny_partition)
    pkg = load_package(uri)
    assert torch.equal(pkg.weights["predict_layer.weight"], model.predict_layer.weight)
    users = torch.arange(tiny_partition.num_users)
    assert torch.equal(pkg.scorer.score_all(users), ItemScorer(model).score_all(users))


def test_incomplete_or_corrupt_packages_are_user_errors(tmp_path, model, tiny_partition):
    with pytest.raises(UserError, match="no such model package"):
        load_package(tmp_path / "nothing")
    uri = tmp_path / "pkg"
    _save(uri, model, tiny_partition)
    (uri / "_SUCCESS").unlink()
    with pytest.raises(UserError, match="incomplete"):
        load_package(uri)
    _save(uri, model, tiny_partition)
    config = json.loads((uri / "config.json").read_text())
    storage.write_json(uri / "config.json", {**config, "factor_num": 16})
    with pytest.raises(UserError, match="does not match config.json"):
        load_package(uri)
    # a version this code does not read (a newer trainer's) is refused, naming the versions it reads
    storage.write_json(uri / "config.json", {**config, "schema_version": 3})
    with pytest.raises(UserError, match=r"schema_version 3, this code reads \[1, 2\] \(a newer trainer wrote it"):
        load_package(uri)


def test_failed_export_leaves_nothing(tmp_path, model, tiny_partition):
    tables = package_tables(tiny_partition)
    tables["user_ids"] = tables["user_ids"][:-1]
    with pytest.raises(UserError, match="id maps"):
        save_package(tmp_path / "pkg", export(model), metrics={}, **tables)
    assert list(tmp_path.iterdir()) == []


def test_weights_are_memory_mapped_not_read_into_memory(tmp_path, model, tiny_partition):
    """The package maps weights.safetensors: its tensors live in a file-backed mapping, and the user tables the
    scorer uses are those very tensors, not copies."""
    uri = _save(tmp_path / "pkg", model, tiny_partition)
    pkg = load_package(uri)
    weights = pkg.weights["embed_user_GMF.weight"]
    with open("/proc/self/maps") as maps:
        mapped = [line for line in maps if line.rstrip().endswith(f"{uri}/weights.safetensors")]
    spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in mapped]
    assert any(lo <= weights.data_ptr() < hi for lo, hi in spans), "the weights are not mapped from the file"
    assert pkg.scorer.user_gmf.data_ptr() == weights.data_ptr()


def test_the_scorers_item_terms_are_one_row_per_item(tiny_partition):
    """GMF factors and the first tower layer's item half of every member share one [N, width] table (what
    score_candidates gathers a row of per candidate), and scoring from it equals the members' mean logit."""
    torch.manual_seed(5)
    spec = ModelSpec("NeuMF", tiny_partition.num_users, tiny_partition.num_items, 8, 2, 0.0)
    members = [build_model(spec).eval() for _ in range(3)]
    scorer = ItemScorer(ensemble_of(members).eval())
    rows = scorer.item_rows
    assert rows.shape == (tiny_partition.num_items, 3 * 8 + 3 * scorer.item_first.shape[2])
    for view in (scorer.item_gmf, scorer.item_first):
        assert rows.data_ptr() <= view.data_ptr() < rows.data_ptr() + rows.numel() * rows.element_size()
    users, items = torch.arange(4), torch.randint(0, tiny_partition.num_items, (4, 7))
    with torch.no_grad():
        mean_logit = sum(m(users.repeat_interleave(7), items.reshape(-1)).view(4, 7) for m in members) / 3
    torch.testing.assert_close(scorer.score_candidates(users, items), mean_logit, rtol=1e-5, atol=1e-5)


def test_unknown_family_is_a_user_error(tmp_path, model, tiny_partition):
    uri = tmp_path / "pkg"
    _save(uri, model, tiny_partition)
    config = json.loads((uri / "config.json").read_text())
    storage.write_json(uri / "config.json", {**config, "family": "transformer"})
    with pytest.raises(UserError, match=r"config.json: family: unknown model family 'transformer'"):
        load_package(uri)


def test_partition_fingerprint_travels_in_config(tmp_path, model, tiny_partition):
    uri = save_package(tmp_path / "pkg", export(model), metrics={}, **package_tables(tiny_partition),
                       extra={"partition_fingerprint": "abc123"})
    assert load_package(uri).config["partition_fingerprint"] == "abc123"
