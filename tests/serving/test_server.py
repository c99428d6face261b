"""The predictor in-process: where it loads from (local dir, STORAGE_URI, s3://, registry) and CLI errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from kserve.errors import InvalidInput

from ncf.errors import UserError
from serving import server
from serving.predictor import NCFModel
from tests.mlflow_fixtures import make_package, oracle_model
from tests.tiny_data import make_partition


@pytest.mark.skipif(Path("/mnt/models/config.json").exists(), reason="/mnt/models holds a package here")
def test_source_resolution(monkeypatch):
    assert server.resolve_source("models:/ncf@champion") == "models:/ncf@champion"
    monkeypatch.setenv("STORAGE_URI", "s3://bucket/package")
    assert server.resolve_source("") == "s3://bucket/package"
    monkeypatch.delenv("STORAGE_URI")
    with pytest.raises(UserError, match="STORAGE_URI is not set"):
        server.resolve_source("")


def test_loads_a_package_from_s3(s3_bucket):
    partition = make_partition(num_users=12, num_items=30, per_user=4, num_neg=5)
    uri = make_package(f"s3://{s3_bucket}/models/run-1", partition, oracle_model(partition, 0.0))
    model = NCFModel("ncf", uri)
    assert model.load() and model.ready
    (pred,) = asyncio.run(model.predict({"instances": [{"user_id": "u2", "k": 1}]}))["predictions"]
    assert pred["item_ids"] == [f"i{partition.test_items[2]}"]  # the oracle ranks the held-out item first
    with pytest.raises(InvalidInput, match="instances"):
        asyncio.run(model.predict({"instances": {}}))


def test_registry_source_needs_a_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="needs a tracking URI"):
        NCFModel("ncf", "models:/ncf@champion").load()


def test_serve_cli_reports_a_missing_package(tmp_path, capsys):
    assert server.main(["--model-uri", str(tmp_path / "nothing-here")]) == 2
    assert "no such model package" in capsys.readouterr().err


def test_a_lone_small_request_is_scored_on_the_event_loop_and_a_large_one_on_the_scoring_thread(tmp_path,
                                                                                               monkeypatch):
    """Handing a lone request to the scoring thread and back only adds wake-ups; a request scoring more than
    INLINE_SCORES items must not block the event loop (health probes), so it goes to the thread."""
    from ncf.package import load_package
    from serving import predictor
    from serving.recommender import Recommender

    partition = make_partition(num_users=30, num_items=60, per_user=5, num_neg=5)
    recommender = Recommender(load_package(make_package(str(tmp_path / "pkg"), partition,
                                                        oracle_model(partition, 0.5))))
    threads = []
    recommend = recommender.recommend
    recommender.recommend = lambda queries: threads.append(threading.current_thread().name) or recommend(queries)
    queue = predictor.ScoringQueue()

    async def one(users: int):
        loop_thread = threading.current_thread().name
        answer = await queue.recommend(recommender, [recommender.query(f"u{i}", 3) for i in range(users)])
        return loop_thread, answer

    assert recommender.scores_per_query == 60
    monkeypatch.setattr(predictor, "INLINE_SCORES", 120)
    loop_thread, answer = asyncio.run(one(2))  # 2 x 60 scores: inline
    assert threads == [loop_thread] and [a.user_id for a in answer] == ["u0", "u1"]
    loop_thread, answer = asyncio.run(one(3))  # 180 scores: the scoring thread
    assert threads[1].startswith("ncf-scoring") and threads[1] != loop_thread and len(answer) == 3


def test_concurrent_requests_share_forwards_and_get_their_own_answers(tmp_path):
    from ncf.package import load_package
    from serving.predictor import ScoringQueue
    from serving.recommender import Recommender

    partition = make_partition(num_users=30, num_items=60, per_user=5, num_neg=5)
    recommender = Recommender(load_package(make_package(str(tmp_path / "pkg"), partition,
                                                        oracle_model(partition, 0.5))))
    batch_sizes = []
    recommend = recommender.recommend
    recommender.recommend = lambda queries: batch_sizes.append(len(queries)) or recommend(queries)
    queue = ScoringQueue()
    requests = [[recommender.query(f"u{i}", 3)] for i in range(30)] + [[recommender.query("stranger", 2)]]

    async def all_at_once():
        return await asyncio.gather(*(queue.recommend(recommender, q) for q in requests))

    answers = asyncio.run(all_at_once())
    assert [a[0].user_id for a in answers] == [q[0].user_id for q in requests]
    for (got,), query in zip(answers, requests, strict=True):
        (want,) = recommend(query)
        assert got.item_ids == want.item_ids and got.fallback == want.fallback
        assert got.scores == pytest.approx(want.scores, rel=1e-5)  # batched matmuls may round differently
    assert sum(batch_sizes) == len(requests) and max(batch_sizes) > 1  # later requests waited and went together
