"""Where a two-stage request's time goes, in-process: retrieval (`Retriever.candidates`: the user's vector, the IVF
search, exclude-seen) and re-ranking (`score_candidates`), for several (candidates, nprobe), one thread each.

    .venv/bin/python bench/retrieval_latency.py runs/bench-serve-1m [--users 200]

Prints one line per setting (milliseconds per user, means over a fixed-seed sample of users) and the load average;
nothing is appended to bench/RESULTS.md (docs/serving.md quotes its output with the load it ran under).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SETTINGS = ((1000, 64), (1000, 32), (500, 32), (500, 16), (200, 16))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package_uri")
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args(argv)
    import faiss
    import torch

    from ncf.package import load_package
    from ncf.retrieval import RetrievalSettings, Retriever
    from serving.recommender import Recommender

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    package = load_package(args.package_uri)
    rec = Recommender(package, retrieval=RetrievalSettings(mode="exact"))
    users = np.random.default_rng(0).integers(0, len(package.user_ids), args.users)

    def per_user(call) -> float:
        started = time.perf_counter()
        for user in users:
            call(user)
        return (time.perf_counter() - started) / len(users) * 1000

    for candidates, nprobe in SETTINGS:
        retriever = Retriever(package.scorer, package.ann_index,
                              RetrievalSettings(mode="ann", candidates=candidates, nprobe=nprobe))
        rec.retriever = retriever
        retrieval = per_user(lambda u, r=retriever: r.candidates(np.array([u]), [rec.seen(u)]))
        items = retriever.candidates(users[:1], [rec.seen(users[0])])[0]
        rerank = per_user(lambda u, c=items: package.scorer.score_candidates(np.array([u]), c))
        total = per_user(lambda u: rec.recommend([rec.query(package.user_ids[u], 10)]))
        print(f"candidates {candidates} nprobe {nprobe}: retrieval {retrieval:.2f} ms, re-rank {rerank:.2f} ms, "
              f"recommend (both + top-K) {total:.2f} ms; load average {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
