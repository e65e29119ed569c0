"""`llmops dlq` against the live stack: list and show what failed, with the original
bytes; replay sends them back where they failed, and replaying twice changes nothing
downstream."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import timedelta

from confluent_kafka import Consumer, TopicPartition

from connectors import deadletters
from connectors.analytics import Analytics
from connectors.kafka import Publisher, librdkafka_config
from schemas import DeadLetter, FeedbackReceived, QueryReceived, ResponseGenerated, decode, encode, utc_now
from topology.stack import LocalStack


def llmops(stack: LocalStack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "topology.cli", *args],
        capture_output=True,
        text=True,
        env=stack.env(),
        timeout=120,
    )


async def publish(stack: LocalStack, topic: str, key: bytes, value: bytes) -> None:
    publisher = Publisher(stack.settings.kafka, client_id="test-dlq")
    await publisher.start()
    await publisher.publish(topic, [(key, value)])
    await publisher.stop()


def letter_for(original: QueryReceived | FeedbackReceived, topic: str) -> DeadLetter:
    """A dead letter as a stage writes one after a transient failure ran out of tries."""
    return DeadLetter(
        trace_id=original.trace_id,
        producer="test",
        stage="generation",
        topic=topic,
        partition=0,
        offset=0,
        key=original.trace_id.encode(),
        original=encode(original),
        error_type="TransientError",
        reason="LLM endpoint: HTTP 503",
        attempts=4,
        permanent=False,
    )


async def test_list_and_show_give_the_reason_and_the_original_bytes(tansu_stack: LocalStack):
    marker = uuid.uuid4().hex
    blank = json.dumps({"event_type": "QueryReceived", "trace_id": marker, "producer": "t", "question": "  "})
    await publish(tansu_stack, tansu_stack.settings.kafka.topics.queries, marker.encode(), blank.encode())
    # Wait for the letter with the reader `dlq list` uses, in this process (a CLI run per
    # poll costs seconds of start-up), then list and show it through the CLI.
    since, deadline = utc_now() - timedelta(hours=1), time.monotonic() + 30
    while not any(
        marker.encode() in d.original for d in deadletters.read(tansu_stack.settings.kafka, since=since)
    ):
        assert time.monotonic() < deadline, "no dead letter for the blank question"
        await asyncio.sleep(0.2)
    shown = llmops(tansu_stack, "dlq", "list", "--stage", "prompting", "--since", "1h", "--limit", "500")
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout
    line = next(line for line in listed.splitlines() if marker in line or "blank" in line.lower())
    letter_id = line.split()[2]
    detail = llmops(tansu_stack, "dlq", "show", letter_id)
    assert detail.returncode == 0, detail.stderr
    shown_letter = json.loads(detail.stdout)
    assert json.loads(shown_letter["original"])["trace_id"] == marker and shown_letter["stage"] == "prompting"


async def test_replay_sends_the_original_back_and_twice_changes_nothing(tansu_stack: LocalStack):
    settings = tansu_stack.settings
    question = QueryReceived(
        trace_id=f"replay-{uuid.uuid4().hex}", producer="t", question="What is a lambda?"
    )
    rating = FeedbackReceived(trace_id=question.trace_id, producer="t", data_type="BOOLEAN", value=True)
    letters = [
        letter_for(question, settings.kafka.topics.queries),
        letter_for(rating, settings.kafka.topics.feedback),
    ]
    for letter in letters:
        await publish(tansu_stack, settings.kafka.topics.deadletter, letter.trace_id.encode(), encode(letter))

    ids = [arg for letter in letters for arg in ("--id", letter.event_id)]
    dry = llmops(tansu_stack, "dlq", "replay", "--since", "1h", "--dry-run", *ids)
    assert dry.returncode == 0 and "would replay 2" in dry.stdout, dry.stderr
    for _ in range(2):
        done = llmops(tansu_stack, "dlq", "replay", "--since", "1h", *ids)
        assert done.returncode == 0 and "replayed 2" in done.stdout, done.stderr

    answers = responses_for(tansu_stack, question.trace_id)
    assert answers and all(
        a.trace_id == question.trace_id for a in answers
    )  # answered (twice: at-least-once)
    analytics = await Analytics.connect(settings.clickhouse, settings.analytics)
    try:
        deadline = time.monotonic() + 30
        while await inserted_copies(analytics, rating.event_id) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # the second copy's batch
        copies = await inserted_copies(analytics, rating.event_id)
    finally:
        await analytics.close()
    assert copies == 1  # replayed twice, inserted once


# Rows the sink inserted for an event (linking it to its trace later adds a revision 1
# row of the same event, which is not a duplicate).
COPIES = "SELECT countIf(revision = 0) FROM feedback WHERE event_id = {id:String}"


async def inserted_copies(analytics: Analytics, event_id: str) -> int:
    return int((await analytics.query(COPIES, {"id": event_id})).rows[0][0])


def responses_for(stack: LocalStack, trace_id: str, timeout: float = 30) -> list[ResponseGenerated]:
    topic = stack.settings.kafka.topics.responses
    consumer = Consumer(librdkafka_config(stack.settings.kafka, **{"group.id": f"t-{uuid.uuid4().hex}"}))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        found: list[ResponseGenerated] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(found) < 2:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None and message.key() == trace_id.encode():
                    event = json.loads(message.value())
                    if event.get("event_type") == "ResponseGenerated":
                        found.append(decode(message.value(), ResponseGenerated))
        return found
    finally:
        consumer.close()
