"""Milvus Lite against exact numpy search at 100k and 1M 384-d vectors.

    python -m benchmarks.milvus_scale --data ../shared/data/scifact [--sizes 100000,1000000]
        [--indexes FLAT,IVF_FLAT,HNSW] [--runs 3]

The collection holds SciFact's real abstract embeddings plus synthetic ones up to each
size, drawn from a Gaussian with the real embeddings' mean and covariance and normalised
(no public 1M-passage set ships here; uniform random vectors would be far easier to tell
apart and flatter for no index). The queries are SciFact's 300 real test claims. Per
index: recall@10 against exact search, the latency of a one-query search call (p50/p95),
the per-query cost when 64 queries share a call (as the retrieval agent batches them),
insert and index-build time. The same-run baseline is exact numpy search (one query, and
batched). Every search is filtered on the tenant, as the pipeline's are. Prints JSON and
a table; medians over --runs."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import load_beir
from benchmarks.milvus_index import cached_embeddings, milvus_lite_server, timed_searches
from connectors.embedder import OnnxEmbedder
from connectors.milvus import Chunk, MilvusSettings, MilvusStore
from topology.settings import Settings

INSERT_BATCH = 5_000


def synthetic_fill(real: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """`real` followed by Gaussian draws shaped like it, all unit length, `size` rows."""
    rng = np.random.default_rng(seed)
    mean, covariance = real.mean(axis=0), np.cov(real, rowvar=False)
    extra = rng.multivariate_normal(mean, covariance, size=size - len(real), method="cholesky")
    extra = extra.astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    return np.concatenate([real[:size], extra])


def exact_timings(
    vectors: np.ndarray, queries: np.ndarray, batch: int
) -> tuple[np.ndarray, dict[str, float]]:
    """Exact top 10 by inner product, and what it costs one query at a time and batched."""
    single = []
    for q in queries[:50]:
        started = time.perf_counter()
        np.argpartition(-(vectors @ q), 10)[:10]
        single.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    top = []
    for s in range(0, len(queries), batch):
        scores = queries[s : s + batch] @ vectors.T
        part = np.argpartition(-scores, 10, axis=1)[:, :10]
        top.append(np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), 1), 1))
    batched = (time.perf_counter() - started) * 1000 / len(queries)
    return np.concatenate(top), {
        "single_p50_ms": statistics.median(single),
        "single_p95_ms": sorted(single)[int(0.95 * (len(single) - 1))],
        "batched_ms_per_query": batched,
    }


def load(store: MilvusStore, vectors: np.ndarray) -> float:
    """Insert every vector (tenant "bench"); seconds taken, flushes included."""
    started = time.perf_counter()
    for s in range(0, len(vectors), INSERT_BATCH):
        store.upsert(
            [
                Chunk(
                    id=str(i),
                    tenant="bench",
                    doc_id=str(i),
                    chunk=0,
                    title="",
                    text=f"v{i}",
                    vector=vectors[i],
                )
                for i in range(s, min(s + INSERT_BATCH, len(vectors)))
            ]
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="BEIR SciFact directory")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--indexes", default="FLAT,IVF_FLAT,HNSW")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="queries per search call when batched")
    args = parser.parse_args()

    _, texts, _, questions, _ = load_beir(args.data)
    embedder = OnnxEmbedder(Settings().embedding)
    embedder.open()
    real, _ = cached_embeddings(embedder, args.data / "corpus.jsonl", texts)
    queries = embedder.embed(questions)

    results: list[dict[str, Any]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        vectors = synthetic_fill(real, size)
        exact, numpy_timings = exact_timings(vectors, queries, args.batch)
        results.append({"size": size, "index": "exact (numpy)", "recall_at_10": 1.0, **numpy_timings})
        for index in args.indexes.split(","):
            with milvus_lite_server() as uri:
                settings = MilvusSettings(uri=uri, collection="scale", index_type=index, timeout_s=600)
                store = MilvusStore(settings)
                store.open()
                store.ensure_collection(vectors.shape[1])
                insert_s = load(store, vectors)
                started = time.perf_counter()
                store.search(queries[:1], "bench", 10, mode="dense")  # loads and builds the index
                first_search_s = time.perf_counter() - started
                timings, found = timed_searches(store, queries, questions, "dense", args.runs, args.batch)
                store.close()
            recall = statistics.mean(
                len({int(h.doc_id) for h in f.hits} & set(exact[i].tolist())) / 10
                for i, f in enumerate(found)
            )
            results.append(
                {
                    "size": size,
                    "index": index,
                    "recall_at_10": recall,
                    **timings,
                    "insert_rows_per_s": size / insert_s,
                    "first_search_s": first_search_s,
                }
            )
            print(
                json.dumps(results[-1]), file=sys.stderr, flush=True
            )  # progress; stdout starts with the report
    report = {"queries": len(queries), "batch": args.batch, "runs": args.runs, "results": results}
    print(json.dumps(report, indent=2))
    print(
        f"\n{'vectors':>9} {'index':<14}{'recall@10':>10}{'1-query p50/p95 ms':>22}"
        f"{'batched ms/query':>18}{'vs numpy':>10}{'insert/s':>10}"
    )
    for r in results:
        base = next(b for b in results if b["size"] == r["size"] and b["index"] == "exact (numpy)")
        print(
            f"{r['size']:>9} {r['index']:<14}{r['recall_at_10']:>10.3f}"
            f"{r['single_p50_ms']:>13.1f} / {r['single_p95_ms']:<6.1f}{r['batched_ms_per_query']:>18.2f}"
            f"{r['batched_ms_per_query'] / base['batched_ms_per_query']:>9.1f}x"
            f"{r.get('insert_rows_per_s', float('nan')):>10.0f}"
        )


if __name__ == "__main__":
    main()
