"""The whole pipeline on real parts: documents and questions go in through Kafka, answers
come back grounded in Milvus-retrieved passages. Runs on Tansu and on Apache Kafka."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.client import Client, RequestError
from connectors.kafka import Publisher, librdkafka_config
from connectors.milvus import MilvusStore
from schemas import DeadLetter, decode
from topology.samples import python_reference
from topology.stack import LocalStack

TOPICS = {d["title"]: d for d in python_reference()}


def docs(*names: str) -> list[dict]:
    return [TOPICS[n] for n in names]


def tenant(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def dead_letters(stack: LocalStack, match: bytes, timeout: float = 30) -> list[DeadLetter]:
    """Dead letters whose original bytes contain `match`, read from the topic's start."""
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
        while time.monotonic() < deadline and not found:
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

        answer = await client.ask("What is a lambda expression?", tenant=acme)
        assert answer.passages, "no passages retrieved"
        assert answer.passages[0].doc_id == "pydoc-lambda"
        assert {p.doc_id for p in answer.passages} <= {"pydoc-lambda", "pydoc-with", "pydoc-assert"}
        assert answer.citations and set(answer.citations) <= {p.id for p in answer.passages}
        assert "anonymous functions" in answer.answer
        assert set(answer.latency_ms) == {"prompting", "embedding", "retrieval", "generation"}
        assert (answer.tenant, answer.template_id, answer.model) == (acme, "rag-answer", "extractive")

        other = await client.ask("What is a lambda expression?", tenant=beta)
        assert other.passages
        assert {p.doc_id for p in other.passages} <= {"pydoc-try", "pydoc-yield", "pydoc-while"}


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
    publisher = Publisher(stack.settings.kafka, client_id="test-bad-input")
    await publisher.start()
    try:
        await publisher.publish(stack.settings.kafka.topics.queries, [(b"k", garbage), (b"k", wrong_type)])
        await publisher.publish(stack.settings.kafka.topics.documents, [(b"k", garbage)])
    finally:
        await publisher.stop()

    letters = await asyncio.to_thread(dead_letters, stack, marker)
    by_stage = {(letter.stage, letter.original) for letter in letters}
    assert ("prompting", garbage) in by_stage
    assert ("prompting", wrong_type) in by_stage
    assert ("indexing", garbage) in by_stage
    for letter in letters:
        assert letter.permanent and letter.attempts == 1 and letter.error_type == "InvalidEvent"
        assert letter.reason.startswith("not a valid ")
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
