"""Where a two-stage request's time goes, in-process: retrieval (`Retriever.candidates`: the user's vector, the IVF
search, exclude-seen; and the FAISS search alone) and re-ranking (`score_candidates`), for several (candidates,
nprobe) and index codes (`--storages`: the package's saved index where it matches, else one built here), one thread.

    .venv/bin/python bench/retrieval_latency.py runs/bench-serve-1m [--users 200] [--storages pq4,sq8]

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

SETTINGS = ((1000, 64), (500, 64), (1000, 32), (500, 32), (500, 16), (200, 16))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package_uri")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--storages", default="pq4", help="index codes to compare, e.g. pq4,sq8")
    args = parser.parse_args(argv)
    import faiss
    import torch

    from ncf.package import load_package
    from ncf.retrieval import (
        RetrievalSettings,
        Retriever,
        build_index,
        index_matches,
        retrieval_vectors,
        use_bias,
    )
    from serving.recommender import Recommender

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    package = load_package(args.package_uri)
    rec = Recommender(package, retrieval=RetrievalSettings(mode="exact"))
    users = np.random.default_rng(0).integers(0, len(package.user_ids), args.users)

    def per_user(call, arguments=users) -> float:
        """Mean milliseconds of call(a) over `arguments` (default: the sampled users)."""
        started = time.perf_counter()
        for argument in arguments:
            call(argument)
        return (time.perf_counter() - started) / len(arguments) * 1000

    for storage in args.storages.split(","):
        settings = RetrievalSettings(mode="ann", storage=storage)
        index = package.ann_index
        dim = package.scorer.item_vectors().shape[1] + use_bias(package.scorer, settings)
        if index is None or not index_matches(index, package.scorer.num_items, dim, settings):
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # building uses every core, as a load would
            index = build_index(retrieval_vectors(package.scorer, settings), settings, log=print)
            faiss.omp_set_num_threads(1)
        for candidates, nprobe in SETTINGS:
            retriever = Retriever(package.scorer, index, settings.replace(candidates=candidates, nprobe=nprobe))
            rec.retriever = retriever
            retrieval = per_user(lambda u, r=retriever: r.candidates(np.array([u]), [rec.seen(u)]))
            # The search alone, one user at a time as candidates() sends it (with 20 seen items' room).
            queries = retriever.queries(users)
            search = per_user(lambda row, r=retriever, q=queries, c=candidates, p=nprobe: r._search(
                q[row:row + 1], c + 20, p), range(len(users)))
            items = retriever.candidates(users[:1], [rec.seen(users[0])])[0]
            rerank = per_user(lambda u, c=items: package.scorer.score_candidates(np.array([u]), c))
            total = per_user(lambda u: rec.recommend([rec.query(package.user_ids[u], 10)]))
            print(f"{storage} candidates {candidates} nprobe {nprobe}: retrieval {retrieval:.2f} ms (search alone "
                  f"{search:.2f}), re-rank {rerank:.2f} ms, recommend (both + top-K) {total:.2f} ms; load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
