"""Retrieval quality through the whole pipeline, for every retrieval mode, on a BEIR set.

    python -m benchmarks.retrieval_quality --data ../shared/data/scifact [--runs 3]

Starts its own embedded stack (Tansu, Milvus Lite server, one faust worker; or
`--kafka HOST:PORT` to use a running Kafka broker), ingests the corpus through the
documents topic, asks every test query through the queries topic once per mode (top 100
passages, `--concurrency` in flight), and scores the passages in the responses: a
document ranks where its best chunk does; nDCG@10 and recall@100 against the qrels.

Baseline in the same run: exact cosine search (numpy) over the same model's embeddings of
"title text", as BEIR and MTEB score all-MiniLM-L6-v2 (published: nDCG@10 0.6451,
recall@100 0.925). Latency per mode: the retrieval stage's time for one query at a time
(`--sequential` queries, median and p95, medians over `--runs`), and the wall time per
query of the whole concurrent pass. Prints JSON and a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import documents_in_order, load_beir, ndcg_at, recall_at
from benchmarks.ask_latency import pct
from benchmarks.milvus_index import cached_embeddings
from connectors.client import Client
from connectors.embedder import OnnxEmbedder
from topology.settings import Settings
from topology.stack import LocalStack

MODES = ("dense", "bm25", "hybrid")
PUBLISHED = {"ndcg_at_10": 0.6451, "recall_at_100": 0.925}  # all-MiniLM-L6-v2, exact search
TENANT = "beir"


def score(rankings: list[list[str]], qids: list[str], qrels: dict[str, set[str]]) -> dict[str, float]:
    pairs = list(zip(rankings, qids, strict=True))
    return {
        "ndcg_at_10": statistics.mean(ndcg_at(r, qrels[q]) for r, q in pairs),
        "recall_at_100": statistics.mean(recall_at(r, qrels[q], 100) for r, q in pairs),
    }


def exact_baseline(data: Path, settings: Settings) -> dict[str, float]:
    doc_ids, texts, qids, questions, qrels = load_beir(data)
    embedder = OnnxEmbedder(settings.embedding)
    embedder.open()
    docs, _ = cached_embeddings(embedder, data / "corpus.jsonl", texts)
    order = np.argsort(-(embedder.embed(questions) @ docs.T), axis=1)[:, :100]
    return score([[doc_ids[j] for j in row] for row in order], qids, qrels)


async def run_pipeline(
    settings: Settings, data: Path, modes: list[str], runs: int, sequential: int, concurrency: int
) -> dict[str, Any]:
    corpus = [json.loads(line) for line in (data / "corpus.jsonl").open()]
    _, _, qids, questions, qrels = load_beir(data)
    out: dict[str, Any] = {"modes": {}}
    async with Client(settings, producer_name="bench") as client:
        started = time.perf_counter()
        indexed = await client.ingest(
            ({"doc_id": d["_id"], "title": d.get("title", ""), "text": d["text"]} for d in corpus),
            tenant=TENANT,
            timeout=3600,
        )
        out["ingest_s"] = time.perf_counter() - started
        out["documents"], out["chunks"] = len(indexed), sum(d.chunks for d in indexed)
        gate = asyncio.Semaphore(concurrency)

        async def ask(question: str, mode: str) -> Any:
            async with gate:
                return await client.ask(question, TENANT, top_k=100, retrieval_mode=mode, timeout=600)

        for mode in modes:
            await ask(questions[0], mode)  # warm-up: loads the index
            started = time.perf_counter()
            answers = await asyncio.gather(*(ask(q, mode) for q in questions))
            wall_ms = (time.perf_counter() - started) * 1000 / len(questions)
            rankings = [documents_in_order([p.doc_id for p in a.passages]) for a in answers]
            assert all(a.served.retrieval_mode == mode for a in answers)
            single: list[list[float]] = []
            for _ in range(runs):
                one = [await ask(q, mode) for q in questions[:sequential]]
                single.append([a.latency_ms["retrieval"] for a in one])
            out["modes"][mode] = {
                **score(rankings, qids, qrels),
                "documents_per_answer": statistics.mean(len(r) for r in rankings),
                "retrieval_p50_ms": statistics.median(statistics.median(s) for s in single),
                "retrieval_p95_ms": statistics.median(pct(s, 0.95) for s in single),
                "concurrent_wall_ms_per_query": wall_ms,
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="BEIR directory (corpus.jsonl, ...)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated retrieval modes")
    parser.add_argument("--runs", type=int, default=3, help="repeats of the sequential latency sample")
    parser.add_argument("--sequential", type=int, default=30, help="queries asked one at a time per run")
    parser.add_argument("--concurrency", type=int, default=32, help="queries in flight in the quality pass")
    parser.add_argument("--kafka", help="bootstrap servers of a running broker (default: start Tansu)")
    parser.add_argument("--chunk-words", type=int, help="override pipeline.chunk_words for ingestion")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")

    if args.chunk_words:  # the stack's worker reads its settings from the environment
        os.environ["LLMOPS_PIPELINE__CHUNK_WORDS"] = str(args.chunk_words)
    base = Settings()
    baseline = exact_baseline(args.data, base)
    with tempfile.TemporaryDirectory() as tmp:
        stack_cfg = base.stack.model_copy(update={"data_dir": Path(tmp), "broker_port": 0, "milvus_port": 0})
        update: dict[str, Any] = {
            "stack": stack_cfg,
            "analytics": base.analytics.model_copy(update={"port": 0}),
        }
        if args.kafka:
            update["kafka"] = base.kafka.model_copy(update={"bootstrap_servers": args.kafka})
        with LocalStack(base.model_copy(update=update), broker=not args.kafka) as stack:
            result = asyncio.run(
                run_pipeline(stack.settings, args.data, modes, args.runs, args.sequential, args.concurrency)
            )
    result.update(
        data=str(args.data),
        queries=len(load_beir(args.data)[2]),
        chunk_words=base.pipeline.chunk_words,
        exact_search=baseline,
        published_reference=PUBLISHED,
    )
    print(json.dumps(result, indent=2))
    print(
        f"\n{result['documents']} documents as {result['chunks']} chunks, ingested through Kafka in "
        f"{result['ingest_s']:.0f} s; {result['queries']} queries, top 100 passages each"
    )
    print(
        f"{'':<16}{'nDCG@10':>9}{'recall@100':>12}{'vs exact':>10}"
        f"{'retrieval p50/p95 ms':>23}{'wall ms/q':>11}"
    )
    print(
        f"{'exact (numpy)':<16}{baseline['ndcg_at_10']:>9.4f}{baseline['recall_at_100']:>12.4f}"
        f"{'':>10}{'':>23}{'':>11}"
    )
    for mode, r in result["modes"].items():
        delta = (r["ndcg_at_10"] - baseline["ndcg_at_10"]) * 100
        print(
            f"{'pipeline ' + mode:<16}{r['ndcg_at_10']:>9.4f}{r['recall_at_100']:>12.4f}{delta:>+9.2f}pt"
            f"{r['retrieval_p50_ms']:>14.1f} / {r['retrieval_p95_ms']:<6.1f}"
            f"{r['concurrent_wall_ms_per_query']:>11.1f}"
        )


if __name__ == "__main__":
    main()
