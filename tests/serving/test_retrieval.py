"""Two-stage serving (ncf/retrieval.py): FAISS retrieval + exact re-ranking, against the exact path.

In-process on small real packages (NeuMF: partial inner product; GMF: exact; MLP / EASE: no vectors), and over
real HTTP through `ncfctl serve --retrieval ann`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from ncf import contracts
from ncf.errors import UserError
from ncf.families.ncf import export
from ncf.models import ModelSpec, build_model, ensemble_of
from ncf.package import load_package, package_tables, save_package
from ncf.ports import free_port
from ncf.retrieval import (
    RetrievalSettings,
    Retriever,
    build_index,
    index_matches,
    package_settings,
    retrieval_vectors,
)
from serving.predictor import NCFModel
from serving.recommender import Recommender
from tests.conftest import REPO_ROOT
from tests.mlflow_fixtures import assert_top_k, reference_ranking, stop_process_group, wait_http
from tests.tiny_data import make_partition

NUM_USERS, NUM_ITEMS = 40, 400


@pytest.fixture(scope="module")
def partition():
    return make_partition(num_users=NUM_USERS, num_items=NUM_ITEMS, per_user=30, num_neg=5, seed=3)


def neumf(partition, members: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    spec = ModelSpec("NeuMF", partition.num_users, partition.num_items, factor_num=8, num_layers=2)
    models = [build_model(spec).eval() for _ in range(members)]
    return models[0] if members == 1 else ensemble_of(models).eval()


def save(path, partition, model, retrieval=None) -> str:
    return save_package(str(path), export(model), **package_tables(partition), metrics={}, retrieval=retrieval)


@pytest.fixture(scope="module")
def package(partition, tmp_path_factory):
    """A NeuMF ensemble package written with two-stage settings: its index is saved with it."""
    path = save(tmp_path_factory.mktemp("ann") / "pkg", partition, neumf(partition),
                retrieval={"mode": "ann", "candidates": 60, "nlist": 16, "nprobe": 4})
    return load_package(path)


def ask(rec: Recommender, user_id: str, k: int = 10, exclude_seen: bool = True, candidates=None):
    return rec.recommend([rec.query(user_id, k, exclude_seen, candidates)])[0]


def exact(package) -> Recommender:
    return Recommender(package, retrieval=RetrievalSettings(mode="exact"))


def test_the_index_is_saved_with_the_package_and_reused(package):
    assert (package.uri and os.path.exists(os.path.join(package.uri, contracts.PACKAGE_ANN_INDEX)))
    assert package.ann_index is not None and package.ann_index.ntotal == NUM_ITEMS
    assert package_settings(package.config) == RetrievalSettings(mode="ann", candidates=60, nlist=16, nprobe=4)
    logged = []
    rec = Recommender(package, retrieval=package_settings(package.config), log=logged.append)
    assert rec.retriever is not None and rec.retriever.index is package.ann_index and logged == []  # not rebuilt
    assert "60 candidates from IVF16,PQ4 (nprobe 4, + item bias)" in rec.path


def test_two_stage_answers_are_the_full_models_scores_in_exact_order(package):
    ann, ref = Recommender(package), exact(package)
    assert ann.retriever is not None and ref.retriever is None
    overlap = []
    for user in range(NUM_USERS):
        uid = f"u{user}"
        got = ask(ann, uid, 20)
        assert len(got.item_ids) == 20 and not got.fallback and got.scores == sorted(got.scores, reverse=True)
        full = reference_ranking(package, uid)
        position = {item: i for i, item in enumerate(full[0])}
        # Re-ranked by the full model: each returned item carries its exact score, and the returned items appear
        # in the order the exact ranking gives them.
        np.testing.assert_allclose(got.scores, [full[1][position[i]] for i in got.item_ids], rtol=1e-4, atol=1e-4)
        assert [position[i] for i in got.item_ids] == sorted(position[i] for i in got.item_ids)
        overlap.append(len(set(got.item_ids[:10]) & set(ask(ref, uid).item_ids)))
    # 60 of 400 items retrieved by the GMF half alone: the lists differ from the exact ones, but not entirely.
    assert 0 < np.mean(overlap) < 10


def test_exclude_seen_is_applied_before_the_cut(package):
    rec = Recommender(package, retrieval=RetrievalSettings(mode="ann", candidates=25, nlist=16, nprobe=16))
    for user in range(NUM_USERS):
        seen = set(rec.seen(user).tolist())
        items, valid = rec.retriever.candidates(np.asarray([user]), [rec.seen(user)])
        assert valid.all() and items.shape == (1, 25) and not seen & set(items[0].tolist())
        got = ask(rec, f"u{user}", 25)
        assert len(got.item_ids) == 25 and not {rec.item_index[i] for i in got.item_ids} & seen
        with_seen = ask(rec, f"u{user}", 25, exclude_seen=False)
        assert len(with_seen.item_ids) == 25
    # Somebody's seen items are among their best-retrieved ones (30 of 400 per user), so excluding changes answers.
    assert any(set(rec.item_index[i] for i in ask(rec, f"u{u}", 25, exclude_seen=False).item_ids)
               & set(rec.seen(u).tolist()) for u in range(NUM_USERS))


@pytest.mark.parametrize("marked_rows", [1, 3, NUM_USERS])
def test_a_batch_excludes_each_users_own_seen_items(package, monkeypatch, marked_rows):
    """Users are retrieved together (the nightly batch): each row drops its own seen items (None: nothing), the
    same as asking one user at a time (pq4's coarse scores tie, so this needs each row to ask the index for its own
    count whatever the others ask), whatever number of rows the seen-item marks cover at once."""
    monkeypatch.setattr("ncf.retrieval.SEEN_MARKS", marked_rows * NUM_ITEMS)
    retriever = Retriever(package.scorer, package.ann_index, package_settings(package.config).replace(nprobe=16))
    users = np.arange(NUM_USERS)
    seen = [None if u % 4 == 0 else package.seen_items(u) for u in users]
    items, valid = retriever.candidates(users, seen)
    assert valid.all()
    for user in users:
        alone, _ = retriever.candidates(users[user:user + 1], seen[user:user + 1])
        np.testing.assert_array_equal(items[user], alone[0])
        if seen[user] is not None:
            assert not set(items[user].tolist()) & set(seen[user].tolist())
    unfiltered, _ = retriever.candidates(users, [None] * NUM_USERS)
    assert any(set(unfiltered[u].tolist()) & set(package.seen_items(u).tolist()) for u in users)


def test_one_calls_seen_items_never_leak_into_the_next(package):
    """The seen-marks matrix is kept per thread and cleared after each use: a retriever that has just excluded every
    user's seen items answers another exclusion exactly as a fresh one does, in its own thread or another."""
    settings = package_settings(package.config).replace(nprobe=16)
    used = Retriever(package.scorer, package.ann_index, settings)
    users = np.arange(NUM_USERS)
    for user in users:
        used.candidates(users, [package.seen_items(u) for u in users])  # marks rows 0.. with everybody's items
        other = [package.seen_items((user + 1) % NUM_USERS)]  # excluded now: someone else's items
        fresh = Retriever(package.scorer, package.ann_index, settings)
        np.testing.assert_array_equal(used.candidates(users[user:user + 1], other)[0],
                                      fresh.candidates(users[user:user + 1], other)[0])
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda u: used.candidates(users[u:u + 1], [package.seen_items(u)])[0], users))
    for user, answer in zip(users, answers, strict=True):
        np.testing.assert_array_equal(answer, used.candidates(users[user:user + 1], [package.seen_items(user)])[0])


def test_users_whose_probed_lists_hold_too_few_items_are_topped_up(package):
    """nprobe 1 of 16 lists (~25 items each) cannot hold 100 unseen candidates: those users are searched again
    over more lists, up to all 16, which is the exhaustive search's answer."""
    settings = package_settings(package.config)
    few = Retriever(package.scorer, package.ann_index, settings.replace(candidates=100, nprobe=1))
    every = Retriever(package.scorer, package.ann_index, settings.replace(candidates=100, nprobe=16))
    users = np.arange(NUM_USERS)
    seen = [package.seen_items(u) for u in users]
    items, valid = few.candidates(users, seen)
    assert valid.all()
    np.testing.assert_array_equal(items, every.candidates(users, seen)[0])


def test_unknown_users_and_request_candidates_are_answered_as_on_the_exact_path(package):
    ann, ref = Recommender(package), exact(package)
    a, b = ask(ann, "stranger", 7), ask(ref, "stranger", 7)
    assert a.fallback and (a.item_ids, a.scores) == (b.item_ids, b.scores)
    candidates = [f"i{i}" for i in (3, 50, 199, 7, 380, 11)]
    for exclude in (True, False):
        a, b = ask(ann, "u4", 4, exclude, candidates), ask(ref, "u4", 4, exclude, candidates)
        assert a.item_ids == b.item_ids and np.allclose(a.scores, b.scores, rtol=1e-5)
        assert_top_k(a.item_ids, a.scores, reference_ranking(package, "u4", exclude, candidates), 4)


@pytest.mark.parametrize("candidates", [NUM_ITEMS, 10 * NUM_ITEMS])
def test_with_every_item_a_candidate_two_stage_equals_exact(package, candidates):
    ann = Recommender(package, retrieval=RetrievalSettings(mode="ann", candidates=candidates))
    ref = exact(package)
    assert ann.retriever is not None and ann.retriever.index is None
    for user in range(0, NUM_USERS, 3):
        for exclude in (True, False):
            a, b = ask(ann, f"u{user}", 100, exclude), ask(ref, f"u{user}", 100, exclude)
            assert a.item_ids == b.item_ids and np.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("storage", "candidates"), [("pq4", 60), ("sq8", 40), ("flat", 40)])
def test_an_exhaustive_search_retrieves_the_true_top_of_an_exact_inner_product(partition, tmp_path, storage,
                                                                                 candidates):
    """GMF's inner product is its logit (minus the bias): searching every list returns the exact top, so the
    two-stage answer is the exact answer, up to the codes' rounding, which re-ranking enough candidates removes
    (the 4-bit PQ codes are the coarsest: they need more)."""
    torch.manual_seed(1)
    gmf = build_model(ModelSpec("GMF", partition.num_users, partition.num_items, factor_num=16)).eval()
    with torch.no_grad():  # factors of a trained model's spread (initialised at std 0.01, every score would tie)
        gmf.embed_user_GMF.weight.normal_()
        gmf.embed_item_GMF.weight.normal_()
    pkg = load_package(save(tmp_path / "gmf", partition, gmf))
    assert pkg.scorer.inner_product == "exact" and pkg.ann_index is None  # auto, 400 items: no index written
    ann = Recommender(pkg, retrieval=RetrievalSettings(mode="ann", candidates=candidates, nlist=8, nprobe=8,
                                                       storage=storage))
    ref = exact(pkg)
    for user in range(NUM_USERS):
        a, b = ask(ann, f"u{user}", 10), ask(ref, f"u{user}", 10)
        assert a.item_ids == b.item_ids and np.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_a_saved_index_is_reused_only_when_the_settings_would_build_it(package):
    import faiss

    settings = package_settings(package.config)
    vectors = retrieval_vectors(package.scorer, settings)
    index = build_index(vectors, settings)
    assert faiss.extract_index_ivf(index).by_residual  # pq4 encodes residuals from the list centroids
    assert index.d == vectors.shape[1] + vectors.shape[1] % 2  # padded to an even width
    assert index_matches(index, NUM_ITEMS, vectors.shape[1], settings)
    assert not index_matches(index, NUM_ITEMS, vectors.shape[1], settings.replace(storage="sq8"))
    assert not index_matches(index, NUM_ITEMS, vectors.shape[1], settings.replace(nlist=8))
    faiss.extract_index_ivf(index).by_residual = False  # as an index built before residual encoding
    assert not index_matches(index, NUM_ITEMS, vectors.shape[1], settings)


def test_a_package_with_an_index_round_trips(package, partition, tmp_path):
    again = load_package(package.uri)
    settings = package_settings(package.config)
    first, second = Recommender(package, retrieval=settings), Recommender(again, retrieval=settings)
    queries = [f"u{u}" for u in range(NUM_USERS)]
    answers = [first.recommend([first.query(u, 15)])[0] for u in queries]
    assert [second.recommend([second.query(u, 15)])[0] for u in queries] == answers
    # The saved index is the one the settings build from the package's vectors (same seeded k-means).
    rebuilt = Retriever(package.scorer, build_index(retrieval_vectors(package.scorer, settings), settings), settings)
    users = np.arange(NUM_USERS)
    seen = [first.seen(u) for u in users]
    np.testing.assert_array_equal(first.retriever.candidates(users, seen)[0], rebuilt.candidates(users, seen)[0])
    # A batch of users is answered as each user alone (batched matmuls may round differently).
    for got, want in zip(first.recommend([first.query(u, 15) for u in queries]), answers, strict=True):
        assert got.item_ids == want.item_ids and got.scores == pytest.approx(want.scores, rel=1e-5, abs=1e-7)


def test_settings_that_do_not_match_the_saved_index_rebuild_it(package):
    logged = []
    rec = Recommender(package, retrieval=package_settings(package.config).replace(nlist=8), log=logged.append)
    assert rec.retriever.index is not package.ann_index and "IVF8,PQ4" in rec.path
    assert any("does not match" in line for line in logged) and any("built in" in line for line in logged)


def test_the_switch_is_automatic_by_size_and_can_be_forced(partition, tmp_path, monkeypatch):
    monkeypatch.delenv("NCF_RETRIEVAL", raising=False)
    monkeypatch.delenv("NCF_RETRIEVAL_THRESHOLD", raising=False)
    model = neumf(partition, members=1)
    plain = load_package(save(tmp_path / "plain", partition, model))
    assert plain.ann_index is None and Recommender(plain).retriever is None  # 400 items < 100,000: exact
    assert Recommender(plain, retrieval=RetrievalSettings(threshold=400)).retriever is not None
    assert Recommender(plain, retrieval=RetrievalSettings(threshold=401)).retriever is None
    # A package whose settings put the threshold under its size is written with its index and served two-stage.
    small = load_package(save(tmp_path / "small", partition, model, retrieval={"threshold": 100, "nlist": 8,
                                                                          "candidates": 50}))
    assert small.ann_index is not None and Recommender(small).retriever is not None
    # Forcing: the package's mode, the environment over it, the predictor's flags over both.
    forced = load_package(save(tmp_path / "forced", partition, model, retrieval={"mode": "exact", "threshold": 100}))
    assert forced.ann_index is None and Recommender(forced).retriever is None
    monkeypatch.setenv("NCF_RETRIEVAL", "ann")
    assert Recommender(forced).retriever is not None and Recommender(plain).retriever is not None
    served = NCFModel("ncf", forced.uri, retrieval={"mode": "exact"})
    assert served.load() and served.recommender.retriever is None
    monkeypatch.setenv("NCF_RETRIEVAL", "sometimes")
    with pytest.raises(UserError, match="retrieval.mode"):
        Recommender(forced)
    monkeypatch.delenv("NCF_RETRIEVAL")
    served = NCFModel("ncf", forced.uri, retrieval={"mode": "ann", "candidates": 33, "nprobe": 2})
    assert served.load() and "33 candidates" in served.recommender.path and "nprobe 2" in served.recommender.path


def test_families_without_vectors_always_take_the_exact_path(partition, tmp_path):
    mlp = build_model(ModelSpec("MLP", partition.num_users, partition.num_items, factor_num=8, num_layers=2)).eval()
    pkg = load_package(save(tmp_path / "mlp", partition, mlp, retrieval={"mode": "ann"}))
    assert pkg.scorer.inner_product == "" and pkg.ann_index is None
    rec = Recommender(pkg)
    assert rec.retriever is None and rec.path == "exact"
    assert_top_k(*map(list, (lambda r: (r.item_ids, r.scores))(ask(rec, "u2", 5))), reference_ranking(pkg, "u2"), 5)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="retrieval.candidates"):
        RetrievalSettings(candidates=0)
    with pytest.raises(UserError, match=r"unknown setting\(s\) \['nprobes'\]"):
        RetrievalSettings.from_dict({"nprobes": 3})
    with pytest.raises(UserError, match="NCF_RETRIEVAL_NPROBE"):
        RetrievalSettings().with_environment({"NCF_RETRIEVAL_NPROBE": "many"})
    assert RetrievalSettings().with_environment({"NCF_RETRIEVAL_NPROBE": "9"}).nprobe == 9
    assert RetrievalSettings().lists(1_000_000) == 2000 and RetrievalSettings().lists(40) == 5


# ---- over real HTTP ---------------------------------------------------------------------------------------------

def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def ann_server(package, tmp_path_factory):
    """`ncfctl serve` on the package with two-stage forced by flags (other candidate count and nprobe)."""
    port = free_port()
    log = tmp_path_factory.mktemp("ann-serve") / "server.log"
    command = [sys.executable, "-m", "serving.server", "--model-uri", package.uri, "--http-port", str(port),
               "--enable-grpc", "false", "--retrieval", "ann", "--retrieval-candidates", "50",
               "--retrieval-nprobe", "8"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v2/models/ncf/ready", proc, log, what="predictor")
        yield url, log
    finally:
        stop_process_group(proc)


def test_two_stage_over_http_keeps_the_response_shapes(package, ann_server):
    url, log = ann_server
    assert "50 candidates from IVF16,PQ4 (nprobe 8, + item bias)" in log.read_text()
    rec = Recommender(package, retrieval=package_settings(package.config).replace(mode="ann", candidates=50,
                                                                                  nprobe=8))
    body = _post(f"{url}/v1/models/ncf:predict", {"instances": [
        {"user_id": "u5", "k": 12}, {"user_id": "u6", "k": 5, "exclude_seen": False}, {"user_id": "nobody", "k": 3},
        {"user_id": "u7", "k": 2, "candidates": ["i1", "i2", "i3"]}]})
    known, unseen, stranger, chosen = body["predictions"]
    assert set(known) == {"user_id", "item_ids", "scores", "fallback"} and body["model_version"]
    for pred, (user, k, exclude, candidates) in zip(
            (known, unseen, stranger, chosen),
            (("u5", 12, True, None), ("u6", 5, False, None), ("nobody", 3, True, None), ("u7", 2, True,
                                                                                       ["i1", "i2", "i3"])),
            strict=True):
        want = ask(rec, user, k, exclude, candidates)
        assert pred["item_ids"] == want.item_ids and pred["fallback"] == want.fallback
        assert np.allclose(pred["scores"], want.scores, rtol=1e-5)
    assert len(known["item_ids"]) == 12 and not {rec.item_index[i] for i in known["item_ids"]} & set(
        rec.seen(5).tolist())
    assert stranger["fallback"] is True and unseen["fallback"] is False
    v2 = _post(f"{url}/v2/models/ncf/infer", {"id": "r1", "inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u5", "nobody"]},
        {"name": "k", "datatype": "INT32", "shape": [1], "data": [4]}]})
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert v2["id"] == "r1" and outputs["item_ids"]["shape"] == [2, 4] and outputs["scores"]["datatype"] == "FP32"
    assert outputs["item_ids"]["data"][:4] == ask(rec, "u5", 4).item_ids
    assert outputs["fallback"]["data"] == [False, True]
