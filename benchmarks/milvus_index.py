"""Which Milvus index the retrieval stage should use, measured on real text.

    python -m benchmarks.milvus_index --data ../shared/data/scifact [--runs 3]

Embeds a BEIR corpus (title and text joined by a space) and its test queries with our
ONNX embedder, loads them into a Milvus Lite server per index type, and reports, against
exact numpy search in the same run: recall@10, nDCG@10 on the qrels, the latency of a
one-query search call (p50/p95) and the per-query cost when many queries share one call
(as the retrieval agent batches them). On the FLAT collection it also times each retrieval
mode (dense, bm25, hybrid) the same way, to show what BM25 and fusion add per query.
Prints JSON and a table; medians over --runs."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from agents.evaluation import load_beir, ndcg_at
from connectors.embedder import OnnxEmbedder
from connectors.milvus import Chunk, Found, MilvusSettings, MilvusStore, wait_for_milvus
from topology.settings import Settings
from topology.stack import free_port

INDEXES = ("FLAT", "HNSW", "AUTOINDEX")
CACHE = Path.home() / ".cache" / "llmops-stream" / "bench"


@contextmanager
def milvus_lite_server() -> Iterator[str]:
    """A Milvus Lite server on a free port over a temporary directory; yields its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", tmp]
        server = subprocess.Popen(  # noqa: S603
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            uri = f"http://127.0.0.1:{port}"
            wait_for_milvus(MilvusSettings(uri=uri), timeout=120)
            yield uri
        finally:
            server.terminate()
            server.wait()


def cached_embeddings(embedder: OnnxEmbedder, source: Path, texts: list[str]) -> tuple[np.ndarray, float]:
    """Corpus embeddings, cached by corpus digest and model (embedding is most of the run)."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = CACHE / f"{embedder.name}-{digest}.npy"
    if cache.is_file():
        return np.load(cache), float("nan")
    started = time.perf_counter()
    vectors = embedder.embed(texts)
    elapsed = time.perf_counter() - started
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors, elapsed


def timed_searches(
    store: MilvusStore, queries: np.ndarray, questions: list[str], mode: str, runs: int, batch: int
) -> tuple[dict[str, float], list[Found]]:
    """Top 10 per query: one-query calls (50 per run) and all queries in calls of `batch`;
    the timings (medians over runs) and the last run's results."""
    store.search(queries[:1], "bench", 10, texts=questions[:1], mode=mode)  # builds/loads the index
    single, batched, found = [], [], []
    for _ in range(runs):
        t_single = []
        for i in range(50):
            t = time.perf_counter()
            store.search(queries[i : i + 1], "bench", 10, texts=questions[i : i + 1], mode=mode)
            t_single.append((time.perf_counter() - t) * 1000)
        single.append(t_single)
        t = time.perf_counter()
        found = []
        for s in range(0, len(queries), batch):
            found += store.search(
                queries[s : s + batch], "bench", 10, texts=questions[s : s + batch], mode=mode
            )
        batched.append((time.perf_counter() - t) * 1000 / len(queries))
    timings = {
        "single_p50_ms": statistics.median(statistics.median(r) for r in single),
        "single_p95_ms": statistics.median(sorted(r)[int(0.95 * (len(r) - 1))] for r in single),
        "batched_ms_per_query": statistics.median(batched),
    }
    return timings, found


def mean_ndcg(found: list[Found], qids: list[str], qrels: dict[str, set[str]]) -> float:
    return statistics.mean(ndcg_at([h.doc_id for h in f.hits], qrels[qids[i]]) for i, f in enumerate(found))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="BEIR directory (corpus.jsonl, ...)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="queries per search call when batched")
    args = parser.parse_args()

    doc_ids, texts, qids, questions, qrels = load_beir(args.data)
    embedder = OnnxEmbedder(Settings().embedding)
    embedder.open()
    docs, embed_s = cached_embeddings(embedder, args.data / "corpus.jsonl", texts)
    queries = embedder.embed(questions)
    exact = np.argsort(-(queries @ docs.T), axis=1)[:, :10]

    results: dict[str, dict[str, float]] = {}
    modes: dict[str, dict[str, float]] = {}
    with milvus_lite_server() as uri:
        for index in INDEXES:
            store = MilvusStore(
                MilvusSettings(uri=uri, collection=f"bench_{index.lower()}", index_type=index)
            )
            store.open()
            store.ensure_collection(docs.shape[1])
            for s in range(0, len(docs), 1000):
                store.upsert(
                    [
                        Chunk(
                            id=doc_ids[i],
                            tenant="bench",
                            doc_id=doc_ids[i],
                            chunk=0,
                            title="",
                            text=texts[i],  # "title text", as BM25 should see it
                            vector=docs[i],
                        )
                        for i in range(s, min(s + 1000, len(docs)))
                    ]
                )
            timings, found = timed_searches(store, queries, questions, "dense", args.runs, args.batch)
            if index == "FLAT":  # what BM25 and fusion add per query, on the exact index
                for mode in ("dense", "bm25", "hybrid"):
                    mode_timings, mode_found = timed_searches(
                        store, queries, questions, mode, args.runs, args.batch
                    )
                    modes[mode] = {"ndcg_at_10": mean_ndcg(mode_found, qids, qrels), **mode_timings}
            store.close()
            position = {d: i for i, d in enumerate(doc_ids)}
            recall = statistics.mean(
                len({position[h.doc_id] for h in f.hits} & set(exact[i].tolist())) / 10
                for i, f in enumerate(found)
            )
            results[index] = {
                "recall_at_10": recall,
                "ndcg_at_10": mean_ndcg(found, qids, qrels),
                **timings,
            }
    exact_ranked = [[doc_ids[j] for j in exact[i]] for i in range(len(qids))]
    exact_ndcg = statistics.mean(ndcg_at(r, qrels[q]) for r, q in zip(exact_ranked, qids, strict=True))
    report = {
        "documents": len(docs),
        "queries": len(queries),
        "embed_docs_per_s": len(docs) / embed_s,  # nan when the cache answered
        "exact_ndcg_at_10": exact_ndcg,
        "indexes": results,
        "modes_on_flat": modes,
    }
    print(json.dumps(report, indent=2))
    flat = results["FLAT"]["batched_ms_per_query"]
    print(f"\n{len(docs)} docs, {len(queries)} queries; exact search nDCG@10 {exact_ndcg:.4f}")
    print(
        f"{'index':<10}{'recall@10':>10}{'nDCG@10':>9}{'1-query p50/p95 ms':>22}"
        f"{'batched ms/query':>18}{'vs FLAT':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['recall_at_10']:>10.3f}{r['ndcg_at_10']:>9.4f}"
            f"{r['single_p50_ms']:>13.1f} / {r['single_p95_ms']:<6.1f}"
            f"{r['batched_ms_per_query']:>18.2f}{r['batched_ms_per_query'] / flat:>8.2f}x"
        )
    dense = modes["dense"]
    print(
        f"\n{'mode (FLAT)':<12}{'nDCG@10':>9}{'1-query p50/p95 ms':>22}"
        f"{'batched ms/query':>18}{'vs dense':>10}"
    )
    for name, r in modes.items():
        print(
            f"{name:<12}{r['ndcg_at_10']:>9.4f}{r['single_p50_ms']:>13.1f} / {r['single_p95_ms']:<6.1f}"
            f"{r['batched_ms_per_query']:>18.2f}{r['single_p50_ms'] / dense['single_p50_ms']:>9.2f}x"
        )


if __name__ == "__main__":
    main()
