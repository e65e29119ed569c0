"""Reading and replaying the dead-letter topic. A dead letter carries the original bytes,
key and topic, so replay republishes exactly what failed; stages are idempotent on what
they write (stable chunk ids, event ids in ClickHouse), so replaying twice is safe."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from confluent_kafka import Consumer, KafkaException, TopicPartition

from connectors.kafka import KafkaSettings, Publisher, librdkafka_config
from schemas import DeadLetter, decode
from schemas.errors import InvalidEvent, PermanentError, TransientError


def read(
    kafka: KafkaSettings, *, stage: str | None = None, since: datetime | None = None, timeout: float = 10
) -> list[DeadLetter]:
    """Every dead letter on the topic (oldest first), optionally of one stage and since a
    time. Reads up to the end offsets as of the call, without joining a group."""
    topic = kafka.topics.deadletter
    consumer = Consumer(
        librdkafka_config(
            kafka, **{"group.id": f"llmops-dlq-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            raise TransientError(f"broker {kafka.bootstrap_servers}: {exc}") from exc
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise TransientError(f"no topic {topic} on {kafka.bootstrap_servers}: is the stack bootstrapped?")
        start_ms = int(since.timestamp() * 1000) if since else 0
        wanted = [TopicPartition(topic, p, start_ms) for p in metadata.topics[topic].partitions]
        starts = (
            consumer.offsets_for_times(wanted, timeout=timeout)
            if since
            else [TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions]
        )
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in metadata.topics[topic].partitions
        }
        todo = {tp.partition: ends[tp.partition] for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        consumer.assign([tp for tp in starts if tp.partition in todo])
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is not None:
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset >= todo.get(partition, 0) - 1:
                    todo.pop(partition, None)
                try:
                    letter = decode(message.value(), DeadLetter)
                except InvalidEvent:
                    continue  # not ours: something else wrote to the topic
                if stage is None or letter.stage == stage:
                    letters.append(letter)
        return sorted(letters, key=lambda letter: letter.occurred_at)
    finally:
        consumer.close()


async def replay(kafka: KafkaSettings, letters: Iterable[DeadLetter]) -> int:
    """Republish each letter's original bytes to the topic it failed on, keyed as before
    (by its trace id when the original had no key). Truncated originals are refused."""
    by_topic: dict[str, list[tuple[bytes, bytes]]] = defaultdict(list)
    for letter in letters:
        if letter.truncated:
            raise PermanentError(
                f"dead letter {letter.event_id} keeps only {len(letter.original)} of its "
                f"{letter.original_size} bytes: it cannot be replayed (leave it out with --id)"
            )
        by_topic[letter.topic].append((letter.key or letter.trace_id.encode(), letter.original))
    publisher = Publisher(kafka, client_id=f"llmops-dlq-replay-{uuid.uuid4().hex[:8]}")
    await publisher.start()
    try:
        for topic, messages in by_topic.items():
            await publisher.publish(topic, messages)
    finally:
        await publisher.stop()
    return sum(len(m) for m in by_topic.values())
