"""The registry topic from outside the workers: read it to its end (the CLI, the monitor)
and append records to it. Workers follow it through a faust GlobalTable instead."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from connectors.kafka import KafkaSettings, Publisher, librdkafka_config
from schemas.errors import TransientError
from schemas.prompts import Experiment, LabelMoved, PromptVersion, record_key


def read_all(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> dict[bytes, bytes | None]:
    """The latest value per key, read from the start to the end as of now."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        librdkafka_config(
            settings,
            **{"group.id": f"llmops-registry-reader-{uuid.uuid4().hex}", "enable.auto.commit": False},
        )
    )
    records: dict[bytes, bytes | None] = {}
    try:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
        except KafkaException as exc:
            raise TransientError(
                f"cannot read the prompt registry topic {topic} (is the broker up, and was "
                f"`llmops bootstrap` run?): {exc}"
            ) from exc
        if high <= low:
            return records
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        position = low
        while position < high:
            message = consumer.poll(timeout)
            if message is None:
                raise TransientError(f"prompt registry topic {topic}: no data in {timeout:.0f}s")
            if message.error() is not None:
                raise TransientError(f"prompt registry topic {topic}: {message.error()}")
            key, offset = message.key(), message.offset()
            if key is not None:  # every record we write has one; others are not ours
                records[key] = message.value()
            position = (offset if offset is not None else position) + 1
        return records
    finally:
        consumer.close()


async def append(
    settings: KafkaSettings, topic: str, records: Sequence[PromptVersion | LabelMoved | Experiment]
) -> None:
    """Write records, in order, and wait for the broker to have each."""
    publisher = Publisher(settings, client_id="llmops-registry")
    await publisher.start()
    try:
        # One record per produce request: Tansu reports the high watermark of a batch of
        # several as its first record's, so `read_all` would miss the rest until the next write.
        for r in records:
            await publisher.publish(topic, [(record_key(r).encode(), r.model_dump_json().encode())])
    finally:
        await publisher.stop()
