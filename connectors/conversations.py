"""Reading a conversation's memory from outside the worker: the latest record of its key
in the conversations table's changelog (a compacted topic), which is what the owning
worker recovers the table from. No worker needs to be asked, and none is disturbed."""

from __future__ import annotations

import time
import uuid

from connectors.kafka import KafkaSettings, librdkafka_config
from schemas.errors import PermanentError, TransientError


def latest_record(settings: KafkaSettings, topic: str, key: str, timeout: float = 30) -> bytes | None:
    """The value last written under `key` (None: never written, or deleted), read from
    the start of every partition of `topic` up to its end when asked."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        librdkafka_config(
            settings, **{"group.id": f"llmops-reader-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise TransientError(f"Kafka at {settings.bootstrap_servers} unreachable: {exc}") from exc
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise PermanentError(f"topic {topic} does not exist: is the stack bootstrapped?")
        ends: dict[int, int] = {}
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        if not ends:
            return None
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        wanted, value, deadline = key.encode(), None, time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TransientError(f"reading {topic} took longer than {timeout:.0f}s")
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is not None:
                    continue
                if message.key() == wanted:
                    value = message.value()
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
        return value
    finally:
        consumer.close()
