"""The whole pipeline on real parts: documents and questions go in through Kafka, answers
come back grounded in Milvus-retrieved passages. Runs on Tansu and on Apache Kafka."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from connectors.analytics import Analytics
from connectors.client import Client, RequestError
from connectors.kafka import Publisher, librdkafka_config
from connectors.milvus import MilvusStore
from schemas import DeadLetter, decode
from topology.faults import on_topic
from topology.samples import python_reference
from topology.stack import LocalStack

TOPICS = {d["title"]: d for d in python_reference()}


def docs(*names: str) -> list[dict]:
    return [TOPICS[n] for n in names]


def tenant(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def dead_letters(stack: LocalStack, match: bytes, timeout: float = 30, wanted: int = 1) -> list[DeadLetter]:
    """Dead letters whose original bytes contain `match` (at least `wanted` of them, or
    what came within `timeout`), read from the topic's start."""
    topic = stack.settings.kafka.topics.deadletter
    consumer = Consumer(
        librdkafka_config(
            stack.settings.kafka,
            **{
                "group.id": f"test-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            },
        )
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(found) < wanted:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None:
                    letter = decode(message.value(), DeadLetter)
                    if match in letter.original:
                        found.append(letter)
        return found
    finally:
        consumer.close()


async def test_answers_come_from_the_askers_tenant_only(stack: LocalStack):
    acme, beta = tenant("acme"), tenant("beta")
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda", "with", "assert"), tenant=acme)
        await client.ingest(docs("try", "yield", "while"), tenant=beta)

        # Dense ranks deterministically; BM25 scores in Milvus Lite move a little with how
        # the documents were batched into segments (README, Known limits).
        answer = await client.ask("What is a lambda expression?", tenant=acme, retrieval_mode="dense")
        assert answer.passages, "no passages retrieved"
        assert answer.passages[0].doc_id == "pydoc-lambda"
        assert {p.doc_id for p in answer.passages} <= {"pydoc-lambda", "pydoc-with", "pydoc-assert"}
        assert answer.citations and set(answer.citations) <= {p.id for p in answer.passages}
        assert "anonymous functions" in answer.answer
        assert set(answer.latency_ms) == {"prompting", "embedding", "retrieval", "generation"}
        assert (answer.tenant, answer.served.prompt, answer.model) == (acme, "rag-answer", "extractive")

        hybrid = await client.ask("What is a lambda expression?", tenant=acme)
        assert hybrid.served.retrieval_mode == "hybrid"
        assert "pydoc-lambda" in {p.doc_id for p in hybrid.passages}
        assert {p.doc_id for p in hybrid.passages} <= {"pydoc-lambda", "pydoc-with", "pydoc-assert"}

        other = await client.ask("What is a lambda expression?", tenant=beta)
        assert other.passages
        assert {p.doc_id for p in other.passages} <= {"pydoc-try", "pydoc-yield", "pydoc-while"}


async def test_the_query_path_runs_chained_in_process_and_reports_every_stage(stack: LocalStack):
    owner = tenant("chain")
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        answer = await client.ask("What is a lambda expression?", tenant=owner, retrieval_mode="dense")
    assert "anonymous functions" in answer.answer
    trace, topics = answer.trace_id.encode(), stack.settings.kafka.topics

    def ours(message: Message) -> str | None:
        return "ours" if message.key() == trace else None

    # worker.chain_stages (the default): no hop through the topics between the stages.
    for field in ("prompts", "embeddings", "contexts"):
        assert not on_topic(stack, getattr(topics, field), ours), field
    assert on_topic(stack, topics.responses, ours)["ours"] >= 1
    reported = on_topic(
        stack,
        topics.telemetry,
        lambda m: json.loads(m.value())["stage"] if m.key() == trace else None,
    )
    assert set(reported) == {"prompting", "embedding", "retrieval", "generation"}


async def test_ingesting_the_same_documents_twice_changes_nothing(stack: LocalStack):
    owner = tenant("idem")
    store = MilvusStore(stack.settings.milvus)
    store.open()
    try:
        async with Client(stack.settings) as client:
            first = await client.ingest(docs("for", "if"), tenant=owner)
            count = store.count(owner)
            second = await client.ingest(docs("for", "if"), tenant=owner)
        assert count == sum(d.chunks for d in first) > 2
        assert [d.chunks for d in second] == [d.chunks for d in first]
        assert store.count(owner) == count
    finally:
        store.close()


async def test_concurrent_asks_share_one_client_and_each_gets_its_own_answer(stack: LocalStack):
    owner = tenant("many")
    questions = [
        f"How does the {name} statement work? ({i})"
        for i, name in enumerate(["with", "assert", "while", "for", "try"] * 4)
    ]
    async with Client(stack.settings) as client:
        await client.ingest(docs("with", "assert", "while", "for", "try"), tenant=owner)
        answers = await asyncio.gather(*(client.ask(q, tenant=owner) for q in questions))
    assert [a.question for a in answers] == questions
    assert len({a.trace_id for a in answers}) == len(questions)


async def test_bad_input_is_dead_lettered_and_the_pipeline_keeps_serving(stack: LocalStack):
    owner = tenant("bad")
    marker = uuid.uuid4().hex.encode()
    garbage = b"\xff\xfe not json " + marker
    wrong_type = (
        b'{"trace_id": "t-'
        + marker
        + b'", "producer": "x", "tenant": "'
        + owner.encode()
        + b'", "question": 42}'
    )
    nested = b"[" * 20_000 + b'"' + marker + b'"' + b"]" * 20_000
    # Over the runtime's 1,000,000-byte limit, under Apache Kafka's 1 MiB message limit.
    oversized = b'{"trace_id": "big-' + marker + b'", "pad": "' + b"x" * 1_040_000 + b'"}'
    topics = stack.settings.kafka.topics
    publisher = Publisher(stack.settings.kafka, client_id="test-bad-input")
    await publisher.start()
    try:
        await publisher.publish(topics.queries, [(b"k", garbage), (b"k", wrong_type)])
        await publisher.publish(topics.documents, [(b"k", garbage)])
        await publisher.publish(topics.prompts, [(b"k", nested)])
        await publisher.publish(topics.embeddings, [(b"k", garbage)])
        await publisher.publish(topics.contexts, [(b"k", wrong_type)])
    finally:
        await publisher.stop()
    big = Producer(librdkafka_config(stack.settings.kafka, **{"message.max.bytes": 1_048_000}))
    big.produce(topics.queries, key=b"k", value=oversized)
    assert big.flush(30) == 0

    letters = await asyncio.to_thread(dead_letters, stack, marker, 60, 7)
    by_stage = {(letter.stage, letter.original) for letter in letters}
    assert ("prompting", garbage) in by_stage
    assert ("prompting", wrong_type) in by_stage
    assert ("indexing", garbage) in by_stage
    assert ("embedding", nested) in by_stage
    assert ("retrieval", garbage) in by_stage
    assert ("generation", wrong_type) in by_stage
    [large] = [x for x in letters if x.original_size == len(oversized)]
    assert large.truncated and oversized.startswith(large.original) and "MAX_EVENT_BYTES" in large.reason
    for letter in letters:
        assert letter.permanent and letter.attempts == 1 and letter.error_type == "InvalidEvent"
        assert letter.reason.startswith("not a valid ") or letter is large
    typed = next(x for x in letters if x.original == wrong_type)
    assert typed.trace_id == "t-" + marker.decode() and "question" in typed.reason

    async with Client(stack.settings) as client:
        with pytest.raises(RequestError) as failed:
            await client.ask("x" * (stack.settings.pipeline.max_question_chars + 1), tenant=owner)
        assert failed.value.failure.stage == "prompting"
        assert "limit" in failed.value.failure.reason
        await client.ingest(docs("lambda"), tenant=owner)
        answer = await client.ask("What is a lambda expression?", tenant=owner)
    assert answer.passages[0].doc_id == "pydoc-lambda"


async def test_every_request_leaves_a_trail_that_feedback_joins(stack: LocalStack):
    owner = tenant("trail")
    async with Client(stack.settings, producer_name="test") as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)
        answer = await client.ask("What is a lambda expression?", tenant=owner)
        await client.feedback(answer.trace_id, True, tenant=owner, comment="helpful", user="ana")
        await client.feedback(answer.trace_id, 4, "NUMERIC", name="stars", tenant=owner)
        await client.feedback(answer.trace_id, 11, "NUMERIC", name="stars", tenant=owner)  # out of range
        await client.feedback("never-seen-trace", False, tenant=owner)
        # A producer without our SDK can send a data type we don't know.
        bad_type = (
            b'{"event_type": "FeedbackReceived", "trace_id": "%s", "producer": "other-sdk", '
            b'"tenant": "%s", "data_type": "STARS", "value": 5}' % (answer.trace_id.encode(), owner.encode())
        )
        publisher = Publisher(stack.settings.kafka, client_id="test-raw")
        await publisher.start()
        await publisher.publish(stack.settings.kafka.topics.feedback, [(answer.trace_id.encode(), bad_type)])
        await publisher.stop()

    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        assert analytics.store.backend == "service"  # the stack owns the chDB directory
        deadline = time.monotonic() + 60
        while True:
            stages, rated = await analytics.trace(answer.trace_id)
            linked = [f for f in rated.dicts() if f["trace_seen"]]
            if (len(stages.rows) == 4 and len(linked) == 2) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        rows = {r["stage"]: r for r in stages.dicts()}
        assert list(rows) == ["prompting", "embedding", "retrieval", "generation"]
        assert all(
            r["status"] == "ok" and r["tenant"] == owner and r["latency_ms"] >= 0 for r in rows.values()
        )
        assert rows["retrieval"]["passage_ids"] == [p.id for p in answer.passages]
        assert rows["generation"]["answer"] == answer.answer and rows["generation"]["model"] == answer.model
        assert rows["generation"]["input_tokens"] == answer.usage_details["input"]
        assert rows["embedding"]["input_tokens"] > 0
        assert sorted((f["name"], f["score"]) for f in linked) == [("stars", 4), ("user", 1)]
        orphan = (
            await analytics.query(
                "SELECT trace_seen FROM feedback FINAL WHERE trace_id = {t:String}", {"t": "never-seen-trace"}
            )
        ).rows
        assert orphan == [[False]]
    finally:
        await analytics.close()

    out_of_range = dead_letters(stack, b'"value":11')
    assert out_of_range and "outside [0.0, 5.0]" in out_of_range[0].reason
    unknown_type = dead_letters(stack, b'"data_type": "STARS"')
    assert unknown_type and unknown_type[0].stage == "feedback" and "data_type" in unknown_type[0].reason


def test_the_milvus_lite_server_keeps_one_openblas_thread(tansu_stack: LocalStack):
    """Its exact search is a numpy product, and an idle OpenBLAS thread spins between
    products: at a steady query rate a second one never slept (docs/scaling.md)."""
    environ = (Path("/proc") / str(tansu_stack.pid("milvus")) / "environ").read_bytes().split(b"\0")
    assert b"OPENBLAS_NUM_THREADS=1" in environ
