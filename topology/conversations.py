"""Where conversation memory lives: a faust Table keyed by conversation key, whose
changelog is a compacted topic partitioned like the turns topic. The worker that owns a
partition of the turns topic owns the same partition of the table; when a worker starts
or takes partitions over, faust reads the changelog back into the table before the
conversation stage gets any event (faust's recovery), so no turn is forgotten."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
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

    def partition_of(self, key: str) -> int:
        return key_partition(key.encode(), self._partitions)

    def changelog_name(self) -> str:
        return str(self._table.changelog_topic.get_topic_name())


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


def owned(memory: KeyedByText, actives: Iterable[Any]) -> Callable[[str], bool]:
    """Whether a key is in a partition this worker owns (actively, from the topic
    partitions faust assigned it): its table also holds standby copies of other workers'
    partitions, which are theirs to change."""
    changelog = memory.changelog_name()
    partitions = {tp.partition for tp in actives if tp.topic == changelog}
    return lambda key: memory.partition_of(key) in partitions


def sweep_idle(app: faust.App, memory: KeyedByText, settings: ConversationSettings) -> None:
    """Every worker deletes the idle conversations of the partitions it owns, every
    `sweep_every_s`: a timer on each worker, not on the leader, since each holds its own
    partitions; not in standby copies, whose stale state could otherwise tombstone a
    conversation its owner has just continued. A conversation's next turn after the
    retention starts afresh anyway (agents.conversation.step), so the sweep only frees
    the memory and the changelog of the ones nobody comes back to."""

    async def forget_idle_conversations() -> None:
        mine = owned(memory, app.assignor.assigned_actives())
        for key in expired(memory, settings, utc_now()):
            if mine(key):
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
