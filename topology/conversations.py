"""Where conversation memory lives: a faust Table keyed by conversation key, whose
changelog is a compacted topic partitioned like the turns topic. The worker that owns a
partition of the turns topic owns the same partition of the table; when a worker starts
or takes partitions over, faust reads the changelog back into the table before the
conversation stage gets any event (faust's recovery), so no turn is forgotten."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.partitioner import murmur2

from agents.conversation import ConversationSettings, expired
from connectors.kafka import Publisher, TopicNames
from schemas import Event, encode, utc_now
from topology.topics import CONVERSATIONS_TABLE, conversations_topic

if TYPE_CHECKING:
    from agents.telemetry import TelemetrySettings
    from topology.graph import Stage
    from topology.settings import Settings


def key_partition(key: bytes, partitions: int) -> int:
    """The partition a keyed message lands in, as Java clients, aiokafka and librdkafka's
    murmur2_random (the stage publisher's, connectors.kafka) place it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyedByText(MutableMapping[str, bytes]):
    """The table as handlers see it: text keys, bytes values (stored raw). A write goes
    to the changelog partition of its key, which is the turns partition the key's events
    come from: placed here, not by faust, which asks its producer's metadata for the
    changelog (absent on Apache Kafka until the first send) or needs a current event (one
    per micro-batch, not per event)."""

    def __init__(self, table: Any, partitions: int) -> None:
        self._table = table
        self._partitions = partitions

    def __getitem__(self, key: str) -> bytes:
        return bytes(self._table[key.encode()])

    def __setitem__(self, key: str, value: bytes) -> None:
        raw = key.encode()
        self._table.data[raw] = value
        self._table.send_changelog(key_partition(raw, self._partitions), raw, value)

    def __delitem__(self, key: str) -> None:
        raw = key.encode()
        del self._table.data[raw]
        self._table.send_changelog(key_partition(raw, self._partitions), raw, None, value_serializer="raw")

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in self._table)

    def __len__(self) -> int:
        return len(self._table)


def conversations_table(app: faust.App, settings: Settings) -> Any:
    """The table (KeyedByText places its writes, so faust's own placement is not used)."""
    partitions = settings.kafka.partitions
    changelog = app.topic(
        conversations_topic(settings.worker.app_id),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        # As faust's own changelogs: never acked, so never committed by the group.
        acks=False,
    )
    return app.Table(
        CONVERSATIONS_TABLE,
        partitions=partitions,
        changelog_topic=changelog,
        key_type=bytes,
        value_type=bytes,
    )


def sweep_idle(app: faust.App, memory: MutableMapping[str, bytes], settings: ConversationSettings) -> None:
    """Every worker deletes the idle conversations its table holds, every
    `sweep_every_s`. Not only on the leader: each worker holds its own partitions. A
    standby copy swept too writes the same tombstone the owner would."""

    async def forget_idle_conversations() -> None:
        for key in expired(memory, settings, utc_now()):
            del memory[key]

    app.timer(interval=settings.sweep_every_s, name="forget-idle-conversations")(forget_idle_conversations)


def announcer(
    stage: Stage, publisher: Publisher, names: TopicNames, telemetry: TelemetrySettings
) -> Callable[[Event | None, Event | BaseException], Awaitable[list[Awaitable[Any]]]] | None:
    """The stage's announcements (graph.Stage.announces) sent by the stage publisher."""
    announces = stage.announces
    if announces is None:
        return None

    async def announce(source: Event | None, outcome: Event | BaseException) -> list[Awaitable[Any]]:
        return [
            await publisher.send(getattr(names, field), key, encode(event))
            for field, key, event in announces(source, outcome, telemetry)
        ]

    return announce
