"""The nightly top-K batch step (ncf/recommend.py): complete and correct, atomic, resumable, shardable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ncf import contracts, recommend, storage
from ncf.errors import UserError
from ncf.families.ncf import export
from ncf.models import ModelSpec, build_model
from ncf.package import load_package, package_tables, save_package
from ncf.recommend import RecommendConfig, main, run
from tests.tiny_data import make_partition

REPO = Path(__file__).resolve().parents[2]


def _package(directory: Path, num_users=37, num_items=50, per_user=12, model="NeuMF", seed=5) -> str:
    partition = make_partition(num_users=num_users, num_items=num_items, per_user=per_user, num_neg=5, seed=seed)
    torch.manual_seed(seed)
    net = build_model(ModelSpec(model, num_users, num_items, 8, 2, 0.0)).eval()
    return save_package(directory, export(net), metrics={}, **package_tables(partition))


@pytest.fixture(scope="module")
def package_uri(tmp_path_factory) -> str:
    return _package(tmp_path_factory.mktemp("pkg") / "models" / "run-1")


def _config(package_uri, output, **kw) -> RecommendConfig:
    return RecommendConfig(model_uri=str(package_uri), output_uri=str(output), device="cpu", **kw)


def _read(output) -> dict[str, list[tuple[int, str, float]]]:
    table = pq.read_table(str(output)).to_pydict()  # the directory as a dataset: _SUCCESS and _manifest skipped
    out: dict[str, list] = {}
    for user, rank, item, score in zip(table["user_id"], table["rank"], table["item_id"], table["score"],
                                       strict=True):
        out.setdefault(user, []).append((rank, item, score))
    return {u: sorted(rows) for u, rows in out.items()}


def _brute_force(package_uri, k) -> dict[str, list[tuple[int, str, float]]]:
    """Independent reference: every user's full score row, seen items removed, numpy argsort."""
    package = load_package(package_uri)
    expected = {}
    for u in range(len(package.user_ids)):
        scores = package.scorer.score_all(torch.tensor([u]))[0].numpy().astype(np.float64)
        scores[package.seen_items(u)] = -np.inf
        order = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])][:k]
        expected[package.user_ids[u]] = [(r + 1, package.item_ids[i], scores[i]) for r, i in enumerate(order)]
    return expected


def _assert_same(got, expected):
    assert got.keys() == expected.keys()
    for user, rows in expected.items():
        assert [(r, i) for r, i, _ in got[user]] == [(r, i) for r, i, _ in rows], user
        np.testing.assert_allclose([s for *_, s in got[user]], [s for *_, s in rows], rtol=1e-5, atol=1e-6)


def test_top_k_of_every_user_matches_a_brute_force_ranking(tmp_path, package_uri):
    out = tmp_path / "recommendations" / "dt=2026-03-02"
    result = run(_config(package_uri, out, recommend_k=7, chunk_users=10))
    assert result.published and result.users == 37 and result.parts_total == 4 and result.parts_written == 4
    _assert_same(_read(out), _brute_force(package_uri, 7))
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert [(f.name, str(f.type)) for f in schema] == [
        ("user_id", "string"), ("rank", "int32"), ("item_id", "string"), ("score", "float")]
    manifest = storage.read_json(out / contracts.RECOMMENDATIONS_MANIFEST)
    assert manifest["rows"] == result.rows == 37 * 7 and manifest["num_users"] == 37
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [recommend.part_name(lo, hi) for lo, hi in recommend.chunks_of(37, 10)]
        + [contracts.RECOMMENDATIONS_MANIFEST, storage.SUCCESS])
    assert not (out.parent / "_staging").exists() or not list((out.parent / "_staging").iterdir())


def test_seen_items_are_never_recommended_and_short_users_get_fewer_rows(tmp_path, package_uri):
    # 50 items, 12 seen per user: K = 45 leaves 38 unseen items per user
    out = tmp_path / "recs"
    run(_config(package_uri, out, recommend_k=45, chunk_users=16))
    got = _read(out)
    package = load_package(package_uri)
    for u, user in enumerate(package.user_ids):
        seen = {package.item_ids[i] for i in package.seen_items(u)}
        assert len(got[user]) == 50 - len(seen) and not seen & {i for _, i, _ in got[user]}
        assert [r for r, _, _ in got[user]] == list(range(1, len(got[user]) + 1))


def test_two_stage_takes_the_predictors_retriever_and_keeps_the_contract(tmp_path, package_uri):
    gmf = _package(tmp_path / "models" / "gmf", model="GMF")
    # every item a candidate: the re-rank is the exact ranking (GMF and NeuMF alike)
    for uri, name in ((gmf, "gmf"), (package_uri, "neumf")):
        result = run(_config(uri, tmp_path / name, recommend_k=5, chunk_users=16, retrieval="ann",
                             retrieval_candidates=50))
        _assert_same(_read(tmp_path / name), _brute_force(uri, 5))
    # fewer candidates than items: the IVF index (nlist 6 over 50 items), still K unseen items per user, scores
    # are the family's own, and the manifest says how the rows were made
    result = run(_config(package_uri, tmp_path / "few", recommend_k=5, chunk_users=16, retrieval="ann",
                         retrieval_candidates=8, retrieval_nprobe=2))
    got, package = _read(tmp_path / "few"), load_package(package_uri)
    for u, user in enumerate(package.user_ids):
        assert len(got[user]) == 5 and not {package.item_ids[i] for i in package.seen_items(u)} & {
            i for _, i, _ in got[user]}
        index = {item: i for i, item in enumerate(package.item_ids)}
        expected = package.scorer.score_candidates([u], [index[i] for _, i, _ in got[user]])[0].numpy()
        np.testing.assert_allclose([s for *_, s in got[user]], expected, rtol=1e-5, atol=1e-6)
    manifest = storage.read_json(tmp_path / "few" / contracts.RECOMMENDATIONS_MANIFEST)
    assert manifest["retrieval"]["mode"] == "ann" and manifest["retrieval"]["candidates"] == 8
    # forced exact, and auto on a 50-item catalogue (under the 100k threshold), are the exact path
    exact = run(_config(package_uri, tmp_path / "exact", recommend_k=5, chunk_users=16, retrieval="exact"))
    auto = run(_config(package_uri, tmp_path / "auto", recommend_k=5, chunk_users=16))
    assert storage.read_json(tmp_path / "auto" / contracts.RECOMMENDATIONS_MANIFEST)["retrieval"] == "exact"
    assert exact.fingerprint == auto.fingerprint != result.fingerprint  # other settings never resume these parts


def test_gmf_score_all_in_matmul_batches_equals_per_user_scores(tmp_path):
    package = load_package(_package(tmp_path / "gmf", model="GMF"))
    together = package.scorer.score_all(torch.arange(37))
    one_by_one = torch.cat([package.scorer.score_candidates([u], torch.arange(50)) for u in range(37)])
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)


def test_storage_root_and_run_date_give_the_contract_path(tmp_path, package_uri):
    result = run(RecommendConfig(model_uri=package_uri, storage_root=str(tmp_path), run_date="2026-03-02",
                                 device="cpu"))
    assert result.output_uri == contracts.recommendations_uri(tmp_path, "2026-03-02")
    assert storage.is_complete(tmp_path / "recommendations" / "dt=2026-03-02")


def test_a_failure_mid_way_publishes_nothing_and_the_rerun_resumes(tmp_path, package_uri, monkeypatch):
    out = tmp_path / "recommendations" / "dt=2026-03-02"
    config = _config(package_uri, out, recommend_k=5, chunk_users=4)  # 10 parts
    reference = tmp_path / "reference"
    run(_config(package_uri, reference, recommend_k=5, chunk_users=4))

    computed: list[int] = []
    original = recommend.top_k_table

    def dies_on_the_fourth_part(scorer, package, lo, hi, *args, **kwargs):
        if len(computed) == 3:
            raise RuntimeError("killed")
        computed.append(lo)
        return original(scorer, package, lo, hi, *args, **kwargs)

    monkeypatch.setattr(recommend, "top_k_table", dies_on_the_fourth_part)
    with pytest.raises(RuntimeError, match="killed"):
        run(config)
    assert not out.exists()  # nothing at the output: readers see no partial day
    staged = [p.name for p in (out.parent / "_staging").iterdir()]
    assert len(staged) == 1 and sorted(p.name for p in (out.parent / "_staging" / staged[0]).iterdir()) == [
        recommend.part_name(lo, lo + 4) for lo in (0, 4, 8)]  # whole parts only

    computed.clear()
    monkeypatch.setattr(recommend, "top_k_table", lambda *a, **k: (computed.append(a[2]), original(*a, **k))[1])
    result = run(config)
    assert computed == list(range(12, 37, 4))  # the three parts written before the failure are not recomputed
    assert result.published and (result.parts_resumed, result.parts_written) == (3, 7)
    assert _read(out) == _read(reference)
    assert not list((out.parent / "_staging").iterdir())

    computed.clear()
    again = run(config)  # published with this fingerprint: nothing to do
    assert again.published and again.parts_written == 0 and computed == []


def test_killed_process_resumes_to_the_same_output(tmp_path):
    """A real SIGKILL of `python -m ncf.recommend` mid-run, then a rerun: the same output as one uninterrupted run."""
    package_uri = _package(tmp_path / "models" / "big", num_users=800, num_items=40, per_user=5)
    out = tmp_path / "recommendations" / "dt=2026-03-02"
    args = ["--model-uri", package_uri, "--output-uri", str(out), "--chunk-users", "1", "--device", "cpu",
            "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "ncf.recommend", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out.parent / "_staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(staging.glob("*/part-*.parquet")) if staging.exists() else []
        if len(parts) >= 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in staging.glob("*/part-*.parquet")}
    assert 20 <= len(before) < 800 and not out.exists()

    result = run(_config(package_uri, out, chunk_users=1, threads=1))
    assert result.published and result.parts_resumed == len(before) and result.parts_written == 800 - len(before)
    reference = tmp_path / "reference"
    run(_config(package_uri, reference, chunk_users=1000))
    _assert_same(_read(out), _read(reference))


def test_shards_combine_into_the_full_output_published_by_the_last(tmp_path, package_uri):
    out = tmp_path / "recommendations" / "dt=2026-03-02"
    results = [run(_config(package_uri, out, recommend_k=6, chunk_users=5, num_shards=3, shard_index=i))
               for i in (2, 0)]
    assert [r.published for r in results] == [False, False] and not out.exists()
    last = run(_config(package_uri, out, recommend_k=6, chunk_users=5, num_shards=3, shard_index=1))
    assert last.published
    assert sum(r.users for r in [*results, last]) == 37
    _assert_same(_read(out), _brute_force(package_uri, 6))
    by_range = tmp_path / "by-range"
    first = run(_config(package_uri, by_range, recommend_k=6, chunk_users=5, user_range=":20"))
    rest = run(_config(package_uri, by_range, recommend_k=6, chunk_users=5, user_range="20:"))
    assert (first.users, first.published, rest.users, rest.published) == (20, False, 17, True)
    assert _read(by_range) == _read(out)


def test_a_new_model_replaces_the_published_day(tmp_path, package_uri):
    out = tmp_path / "recs"
    run(_config(package_uri, out, recommend_k=3))
    other = _package(tmp_path / "models" / "run-2", seed=9)
    result = run(_config(other, out, recommend_k=3))
    assert result.published and result.parts_written == result.parts_total
    _assert_same(_read(out), _brute_force(other, 3))


def test_recommends_from_the_registry_champion(tmp_path, package_uri):
    from ncf import registry

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = RecommendConfig(storage_root=str(tmp_path), run_date="2026-03-02", tracking_uri=tracking,
                             device="cpu", recommend_k=4)
    with pytest.raises(UserError, match="no version of registered model 'ncf' has alias 'champion'"):
        run(config)
    skipped = run(RecommendConfig(**{**config.__dict__, "skip_without_champion": True}))
    assert skipped.skipped and not skipped.published
    version = registry.register_package(package_uri, tracking_uri=tracking, model_name="ncf")
    registry.set_alias(tracking, "ncf", registry.CHAMPION, version.version)
    result = run(config)
    assert result.published and result.model == f"models:/ncf/{version.version}"
    _assert_same(_read(result.output_uri), _brute_force(package_uri, 4))


def test_writes_to_s3(s3_bucket, package_uri):
    out = f"s3://{s3_bucket}/root/recommendations/dt=2026-03-02"
    run(_config(package_uri, out, recommend_k=4, chunk_users=10, num_shards=2, shard_index=0))
    assert not storage.is_complete(out)
    result = run(_config(package_uri, out, recommend_k=4, chunk_users=10, num_shards=2, shard_index=1))
    assert result.published and storage.is_complete(out)
    assert storage.list_dir(f"s3://{s3_bucket}/root/recommendations") == ["dt=2026-03-02"]  # staging removed
    with storage.local_copy(out) as local:
        _assert_same(_read(local), _brute_force(package_uri, 4))


@pytest.mark.parametrize("argv, message", [
    (["--model-uri", "/nonexistent/pkg", "--output-uri", "/tmp/x"], "/nonexistent/pkg: no such model package"),
    (["--recommend-k", "0", "--output-uri", "/tmp/x"], "recommend_k: must be >= 1, got 0"),
    (["--num-shards", "2", "--shard-index", "2", "--output-uri", "/tmp/x"], "need num_shards >= 1"),
    (["--user-range", "5-9", "--model-uri", "{pkg}", "--output-uri", "{out}"], "user_range: expected start:end"),
    (["--model-uri", "{pkg}"], "pass --storage-root"),
])
def test_bad_input_is_one_error_line(tmp_path, package_uri, capsys, argv, message):
    argv = [a.format(pkg=package_uri, out=tmp_path / "o") for a in argv]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
