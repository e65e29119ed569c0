"""Retrieval quality through the whole pipeline, for every retrieval mode, on a BEIR set.

    python -m benchmarks.retrieval_quality --data ../shared/data/scifact [--runs 3]
        [--modes dense,bm25,hybrid] [--hyde off,replace,average] [--limit N]

Starts its own embedded stack (Tansu, Milvus Lite server, one faust worker; or
`--kafka HOST:PORT` to use a running Kafka broker), ingests the corpus through the
documents topic, asks every test query through the queries topic once per mode (top 100
passages, `--concurrency` in flight), and scores the passages retrieval found (read from
the contexts topic: a response carries only the passages that fit the LLM's prompt
budget): a document ranks where its best chunk does; nDCG@10 and recall@100 against the
qrels. The corpus is indexed once for all modes.

HyDE (`--hyde off,replace,average`): one prompt version per HyDE setting, the built-in
prompt with `hyde` set (its `hyde_max_tokens` and the rest from LLMOPS_PIPELINE__PROMPT__*),
registered on the registry topic, and every mode asked pinned to each. HyDE needs the
`openai` backend (the local llama.cpp model unless LLMOPS_LLM__BASE_URL is set); the
answer is generated too, so keep it cheap with LLMOPS_PIPELINE__PROMPT__MAX_TOKENS=1 and
LLMOPS_LLM__MAX_PROMPT_TOKENS=1 (no passage fits, the prompt is the question alone).
Per mode and HyDE setting, the stage times of the responses (prompting includes writing
the HyDE passage, embedding embeds it) give the latency HyDE adds.

Baseline in the same run: exact cosine search (numpy) over the same encoders' embeddings
of "title text" (questions by the query tower, abstracts by the document tower, each with
its prefix), as BEIR and MTEB score them. The encoders are the configured ones
(LLMOPS_EMBEDDING__QUERY_ENCODER / __DOCUMENT_ENCODER, the stack's worker reads the same);
the published MTEB SciFact figure of the encoder is printed beside them where known.
Latency per mode: the retrieval stage's time for one query at a time
(`--sequential` queries, median and p95, medians over `--runs`), and the wall time per
query of the whole concurrent pass. Prints JSON and a table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import documents_in_order, load_beir, ndcg_at, recall_at
from benchmarks.ask_latency import machinery_settings, pct
from benchmarks.milvus_index import cached_embeddings
from connectors.client import Client
from connectors.embedder import towers
from connectors.kafka import KafkaSettings, librdkafka_config
from connectors.registry_log import append
from schemas import ContextRetrieved, new_id
from schemas.prompts import PromptVersion
from topology.settings import Settings
from topology.stack import LocalStack
from topology.topics import registry_topic

MODES = ("dense", "bm25", "hybrid")
HYDE = ("off", "replace", "average")
# Published SciFact test figures (exact search). all-MiniLM-L6-v2: BEIR / MTEB;
# bge-small-en-v1.5: embeddings-benchmark/results, mteb 1.20.0 (nDCG@10 only); e5-small-v2: the
# MTEB evaluation in its model card (intfloat/e5-small-v2, model-index). None: not found.
PUBLISHED: dict[str, dict[str, float] | None] = {
    "all-MiniLM-L6-v2": {"ndcg_at_10": 0.6451, "recall_at_100": 0.925},
    "bge-small-en-v1.5": {"ndcg_at_10": 0.7127},
    "e5-small-v2": {"ndcg_at_10": 0.6885, "recall_at_100": 0.9277},
}
TENANT = "beir"


def score(rankings: list[list[str]], qids: list[str], qrels: dict[str, set[str]]) -> dict[str, float]:
    pairs = list(zip(rankings, qids, strict=True))
    return {
        "ndcg_at_10": statistics.mean(ndcg_at(r, qrels[q]) for r, q in pairs),
        "recall_at_100": statistics.mean(recall_at(r, qrels[q], 100) for r, q in pairs),
    }


def exact_baseline(data: Path, settings: Settings, limit: int | None = None) -> dict[str, float]:
    doc_ids, texts, qids, questions, qrels = load_beir(data)
    qids, questions = qids[:limit], questions[:limit]
    query, document = towers(settings.embedding)
    query.open()
    document.open()
    # Cached by the document tower's name: its passages are embedded the same way every run.
    docs, _ = cached_embeddings(document, data / "corpus.jsonl", texts)
    order = np.argsort(-(query.embed(questions) @ docs.T), axis=1)[:, :100]
    return score([[doc_ids[j] for j in row] for row in order], qids, qrels)


class ContextTap:
    """Reads the contexts topic from its end: the passages retrieval found, per trace id."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._found: dict[str, list[str]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ContextTap:
        from confluent_kafka import TopicPartition
        from confluent_kafka.aio import AIOConsumer

        topic = self._kafka.topics.contexts
        conf = {"group.id": f"llmops-bench-{new_id()}", "enable.auto.commit": False, "fetch.wait.max.ms": 10}
        self._consumer = AIOConsumer(librdkafka_config(self._kafka, **conf), max_workers=2)
        metadata = await self._consumer.list_topics(timeout=10)
        assignment = []
        for partition in metadata.topics[topic].partitions:
            _, high = await self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            assignment.append(TopicPartition(topic, partition, high))
        await self._consumer.assign(assignment)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._consumer.close()

    async def _read(self) -> None:
        while True:
            for message in await self._consumer.consume(num_messages=500, timeout=0.2):
                if message.error() is not None:
                    continue
                with contextlib.suppress(ValueError):
                    event = ContextRetrieved.model_validate_json(message.value())
                    self._found[str(event.trace_id)] = [p.doc_id for p in event.passages]

    async def doc_ids(self, trace_id: object, timeout: float = 30.0) -> list[str]:
        """The retrieved chunks' documents, best first; the context precedes the response
        on the pipeline, but this consumer may not have read it yet."""
        deadline = time.monotonic() + timeout
        while (found := self._found.pop(str(trace_id), None)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ContextRetrieved for trace {trace_id}")
            await asyncio.sleep(0.05)
        return found


def hyde_versions(builtin: PromptVersion, hyde: list[str]) -> dict[str, PromptVersion]:
    """The built-in prompt with each HyDE setting."""
    base = builtin.model_dump(exclude={"version"})
    return {h: PromptVersion.model_validate({**base, "hyde": h}) for h in hyde}


def stage_medians(answers: list[Any]) -> dict[str, float]:
    stages = sorted({s for a in answers for s in a.latency_ms})
    return {s: statistics.median(a.latency_ms.get(s, 0.0) for a in answers) for s in stages}


async def run_pipeline(
    settings: Settings,
    data: Path,
    modes: list[str],
    runs: int,
    sequential: int,
    concurrency: int,
    hyde: list[str],
    limit: int | None,
) -> dict[str, Any]:
    corpus = [json.loads(line) for line in (data / "corpus.jsonl").open()]
    _, _, qids, questions, qrels = load_beir(data)
    qids, questions = qids[:limit], questions[:limit]
    versions = hyde_versions(settings.pipeline.prompt, hyde)
    out: dict[str, Any] = {"modes": {}, "prompt_versions": {h: v.version for h, v in versions.items()}}
    async with Client(settings, producer_name="bench") as client, ContextTap(settings.kafka) as tap:
        started = time.perf_counter()
        indexed = await client.ingest(
            ({"doc_id": d["_id"], "title": d.get("title", ""), "text": d["text"]} for d in corpus),
            tenant=TENANT,
            timeout=3600,
        )
        out["ingest_s"] = time.perf_counter() - started
        out["documents"], out["chunks"] = len(indexed), sum(d.chunks for d in indexed)
        gate = asyncio.Semaphore(concurrency)
        if hyde != ["off"]:
            await append(settings.kafka, registry_topic(settings.worker.app_id), list(versions.values()))

        async def ask(question: str, mode: str, h: str) -> tuple[Any, list[str]]:
            async with gate:
                # Pinned to the HyDE setting's version (workers follow the registry topic:
                # the warm-up retries until they know it); plain "off" runs the served prompt.
                prompt = versions[h].version if hyde != ["off"] else None
                answer = await client.ask(
                    question, TENANT, top_k=100, retrieval_mode=mode, prompt=prompt, timeout=600
                )
                return answer, await tap.doc_ids(answer.trace_id)

        for mode in modes:
            for h in hyde:
                for attempt in range(60):  # warm-up: loads the index, waits for the version
                    try:
                        await ask(questions[0], mode, h)
                        break
                    except Exception:  # noqa: BLE001  # the registry record may not have arrived yet
                        if attempt == 59:
                            raise
                        await asyncio.sleep(1)
                started = time.perf_counter()
                pairs = await asyncio.gather(*(ask(q, mode, h) for q in questions))
                wall_ms = (time.perf_counter() - started) * 1000 / len(questions)
                answers = [a for a, _ in pairs]
                rankings = [documents_in_order(found) for _, found in pairs]
                assert all(a.served.retrieval_mode == mode for a in answers)
                single: list[list[Any]] = []
                for _ in range(runs):
                    single.append([(await ask(q, mode, h))[0] for q in questions[:sequential]])
                key = mode if hyde == ["off"] else f"{mode}/hyde={h}"
                out["modes"][key] = {
                    **score(rankings, qids, qrels),
                    "documents_per_answer": statistics.mean(len(r) for r in rankings),
                    "retrieval_p50_ms": statistics.median(
                        statistics.median(a.latency_ms["retrieval"] for a in s) for s in single
                    ),
                    "retrieval_p95_ms": statistics.median(
                        pct([a.latency_ms["retrieval"] for a in s], 0.95) for s in single
                    ),
                    # Per stage, one query at a time (the sequential sample) and in the
                    # concurrent pass (which includes waiting for a free LLM slot).
                    "stage_p50_ms_sequential": stage_medians([a for s in single for a in s]),
                    "stage_p50_ms_concurrent": stage_medians(answers),
                    "hyde_output_tokens": statistics.mean(
                        a.usage_details.get("hyde_output", 0) for a in answers
                    ),
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
    parser.add_argument("--hyde", default="off", help="comma-separated HyDE settings: off, replace, average")
    parser.add_argument("--limit", type=int, help="only the first N test queries")
    parser.add_argument(
        "--no-exact", action="store_true", help="skip the exact-search baseline (embeds the whole corpus)"
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    hyde = [h.strip() for h in args.hyde.split(",") if h.strip()]
    if unknown := set(hyde) - set(HYDE):
        parser.error(f"unknown HyDE settings {sorted(unknown)}; choose from {', '.join(HYDE)}")

    if args.chunk_words:  # the stack's worker reads its settings from the environment
        os.environ["LLMOPS_PIPELINE__CHUNK_WORDS"] = str(args.chunk_words)
    base = machinery_settings()
    if set(hyde) - {"off"} and base.llm.backend == "extractive":
        parser.error("HyDE needs a model to write its passages: set LLMOPS_LLM__BACKEND=openai")
    nan = {"ndcg_at_10": float("nan"), "recall_at_100": float("nan")}
    baseline = nan if args.no_exact else exact_baseline(args.data, base, args.limit)
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
                run_pipeline(
                    stack.settings,
                    args.data,
                    modes,
                    args.runs,
                    args.sequential,
                    args.concurrency,
                    hyde,
                    args.limit,
                )
            )
    result.update(
        data=str(args.data),
        queries=len(load_beir(args.data)[2][: args.limit]),
        chunk_words=base.pipeline.chunk_words,
        exact_search=baseline,
        encoders={"query": base.embedding.query_encoder, "document": base.embedding.document_encoder},
        published_reference=PUBLISHED.get(base.embedding.document_encoder),
    )
    print(json.dumps(result, indent=2))
    published = result["published_reference"]
    print(
        f"\nencoders: query {base.embedding.query_encoder}, document {base.embedding.document_encoder}; "
        f"published SciFact nDCG@10: {published['ndcg_at_10'] if published else 'not found'}"
    )
    print(
        f"{result['documents']} documents as {result['chunks']} chunks, ingested through Kafka in "
        f"{result['ingest_s']:.0f} s; {result['queries']} queries, top 100 passages each"
    )
    print(
        f"{'':<30}{'nDCG@10':>9}{'recall@100':>12}{'vs exact':>10}"
        f"{'retrieval p50/p95 ms':>23}{'prompting+embedding p50 ms':>28}{'wall ms/q':>11}"
    )
    print(
        f"{'exact (numpy)':<30}{baseline['ndcg_at_10']:>9.4f}{baseline['recall_at_100']:>12.4f}"
        f"{'':>10}{'':>23}{'':>28}{'':>11}"
    )
    for mode, r in result["modes"].items():
        delta = (r["ndcg_at_10"] - baseline["ndcg_at_10"]) * 100
        seq = r["stage_p50_ms_sequential"]
        before_retrieval = seq.get("prompting", 0.0) + seq.get("embedding", 0.0)
        print(
            f"{'pipeline ' + mode:<30}{r['ndcg_at_10']:>9.4f}{r['recall_at_100']:>12.4f}{delta:>+9.2f}pt"
            f"{r['retrieval_p50_ms']:>14.1f} / {r['retrieval_p95_ms']:<6.1f}{before_retrieval:>28.1f}"
            f"{r['concurrent_wall_ms_per_query']:>11.1f}"
        )


if __name__ == "__main__":
    main()
