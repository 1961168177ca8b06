"""Landmark index at scale: query time and memory for 10^4, 10^5 and 10^6 references (random unit vectors of the
real embedding size, 1280), the index the project builds (exact up to ``EXACT_LIMIT``, IVF-PQ above) against exact
search in the same run, with the approximate index's recall of the exact nearest reference.

    python benchmarks/bench_index.py                 # --sizes 10000,100000,1000000

Queries are references plus a little noise (so each has a true nearest reference). Writes
``benchmarks/results/bench_index.json``.
"""
from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np
from common import format_table, save_results

from src.index import EXACT_LIMIT, LandmarkIndex

DIM = 1280


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, 100_000):  # in blocks: no float64 copy of a 5 GB matrix
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def timed_queries(index, queries: np.ndarray, batch: int) -> float:
    """Milliseconds per query, searching ``batch`` queries at a time (1: one photo at a time)."""
    index.search(queries[:batch], 10)  # warm-up
    started = time.perf_counter()
    for i in range(0, len(queries), batch):
        index.search(queries[i:i + batch], 10)
    return (time.perf_counter() - started) * 1000 / len(queries)


def search_bytes(faiss_index) -> int:
    import faiss

    if isinstance(faiss_index, faiss.IndexFlat):  # the vectors themselves (serialising 5 GB would copy them)
        return int(faiss_index.ntotal) * int(faiss_index.d) * 4
    return int(faiss.serialize_index(faiss_index).size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--name", default="bench_index")
    args = parser.parse_args(argv)
    import faiss

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        refs = unit_vectors(n, DIM, seed=n)
        labels = np.random.default_rng(1).integers(0, 1000, n)
        pick = np.random.default_rng(2).choice(n, args.queries, replace=False)
        noisy = refs[pick] + 0.02 * np.random.default_rng(3).standard_normal((args.queries, DIM), dtype=np.float32)
        queries = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)

        exact = faiss.IndexFlatIP(DIM)
        exact.add(refs)
        exact_ids = exact.search(queries, 1)[1][:, 0]
        row = {"references": n, "exact_ms_1": round(timed_queries(exact, queries, 1), 3),
               "exact_ms_64": round(timed_queries(exact, queries, 64), 3),
               "exact_mb": round(search_bytes(exact) / 2**20, 1)}
        del exact
        gc.collect()

        classes = [{"class": f"c{i}", "name": f"c{i}"} for i in range(1000)]
        index = LandmarkIndex(refs, labels, classes, [""] * n, {"dim": DIM, "class_names": [], "probe": []})
        started = time.perf_counter()
        built = index._index()
        build_s = time.perf_counter() - started
        ids = index.search(queries, 1)[1][:, 0]
        started = time.perf_counter()
        index.class_scores(queries[:64])
        class_scores_ms = (time.perf_counter() - started) * 1000 / 64
        row.update(kind="exact (IndexFlatIP)" if n <= EXACT_LIMIT else type(built).__name__ + " (IVF-PQ)",
                   build_s=round(build_s, 1), ours_ms_1=round(timed_queries(index, queries, 1), 3),
                   ours_ms_64=round(timed_queries(index, queries, 64), 3),
                   ours_mb=round(search_bytes(built) / 2**20, 1),
                   recall_at_1=round(float(np.mean(ids == exact_ids)), 3), class_scores_ms=round(class_scores_ms, 3),
                   peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
        rows.append(row)
        print(row, flush=True)
        del index, built, refs
        gc.collect()
    columns = [("references", "references"), ("kind", "our index"), ("build_s", "build s"),
               ("ours_ms_1", "ms/query (1 at a time)"), ("ours_ms_64", "ms/query (64 at a time)"),
               ("ours_mb", "search structure MB"), ("recall_at_1", "recall@1 vs exact"),
               ("class_scores_ms", "ms/photo incl. per-landmark scores"),
               ("exact_ms_1", "exact ms/query (1)"), ("exact_ms_64", "exact ms/query (64)"), ("exact_mb", "exact MB"),
               ("peak_rss_gb", "peak RSS GB (so far)")]
    save_results(args.name, "bench_index.py", argv, rows, format_table(rows, columns), dim=DIM,
                 exact_limit=EXACT_LIMIT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
