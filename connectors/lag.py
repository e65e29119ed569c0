"""Reads consumer groups' positions from the broker (ports.OffsetReads): each topic's
start and end offsets (ListOffsets) and each group's committed offsets (OffsetFetch),
with confluent-kafka's AdminClient in a worker thread. Reading commits nothing and joins
no group."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.kafka import KafkaSettings, librdkafka_config
from connectors.ports import PartitionOffsets
from schemas.errors import TransientError


class KafkaOffsets:
    """`read_tail`: find each partition's end by reading its last batch, for brokers that
    report a wrong end (Tansu 0.6 answers ListOffsets with the first offset of the last
    record batch, plus one: after one batch of 15 records, 1 instead of 15)."""

    def __init__(
        self, settings: KafkaSettings, *, client_id: str, read_tail: bool, timeout_s: float = 10.0
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._read_tail = read_tail
        self._timeout = timeout_s
        self._admin: Any = None
        self._tail: Any = None
        self._lock = threading.Lock()  # one read at a time: the clients are not shared safely

    async def offsets(self, groups: Mapping[str, Sequence[str]]) -> list[PartitionOffsets]:
        return await asyncio.to_thread(self._read, groups)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._tail is not None:
                tail, self._tail = self._tail, None
                tail.close()
            self._admin = None

    def _read(self, groups: Mapping[str, Sequence[str]]) -> list[PartitionOffsets]:
        from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(librdkafka_config(self._settings, **{"client.id": self._client_id}))
            admin = self._admin
            try:
                wanted = {t for topics in groups.values() for t in topics}
                metadata = admin.list_topics(timeout=self._timeout).topics
                partitions = {
                    t: sorted(metadata[t].partitions)
                    for t in wanted
                    if t in metadata and not metadata[t].error
                }
                tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
                if not tps:
                    return []
                ends = self._list(admin, tps, OffsetSpec.latest())
                starts = self._list(admin, tps, OffsetSpec.earliest())
                if self._read_tail:
                    ends = self._tail_ends(ends)
                found = []
                for group, topics in groups.items():
                    mine = [tp for tp in tps if tp.topic in topics]
                    if not mine:
                        continue
                    request = [ConsumerGroupTopicPartitions(group, mine)]
                    [future] = admin.list_consumer_group_offsets(
                        request, request_timeout=self._timeout
                    ).values()
                    committed = {
                        (tp.topic, tp.partition): tp.offset for tp in future.result().topic_partitions
                    }
                    for tp in mine:
                        at = committed.get((tp.topic, tp.partition), -1)
                        key = (tp.topic, tp.partition)
                        found.append(
                            PartitionOffsets(
                                group, tp.topic, tp.partition, starts[key], ends[key], at if at >= 0 else None
                            )
                        )
                return found
            except KafkaException as exc:
                raise TransientError(
                    f"reading consumer offsets from {self._settings.bootstrap_servers}: {exc}"
                ) from exc

    def _list(self, admin: Any, tps: Sequence[Any], spec: Any) -> dict[tuple[str, int], int]:
        futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=self._timeout)
        return {(tp.topic, tp.partition): max(0, f.result().offset) for tp, f in futures.items()}

    def _tail_ends(self, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Read from each non-empty partition's reported end - 1: the fetch returns that
        offset's whole batch, whose last record's offset + 1 is the true end."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        if self._tail is None:
            self._tail = Consumer(
                librdkafka_config(
                    self._settings,
                    **{
                        "client.id": f"{self._client_id}-tail",
                        # Never joins, never commits: it only reads at offsets it assigns itself.
                        "group.id": f"{self._client_id}-tail",
                        "enable.auto.commit": False,
                        "enable.partition.eof": True,
                        # One batch per partition is all it needs: small fetches, no prefetch.
                        "max.partition.fetch.bytes": 65536,
                        "queued.max.messages.kbytes": 1024,
                        "fetch.wait.max.ms": 10,
                    },
                )
            )
        tail = self._tail
        pending = {key for key, end in ends.items() if end > 0}
        if not pending:
            return ends
        found = dict(ends)
        tail.assign([TopicPartition(t, p, ends[(t, p)] - 1) for t, p in pending])
        deadline = time.monotonic() + min(self._timeout, 2.0)
        try:
            while pending and time.monotonic() < deadline:
                for message in tail.consume(500, timeout=0.1):
                    key = (message.topic(), message.partition())
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(key)
                        continue
                    found[key] = max(found[key], message.offset() + 1)
        finally:
            tail.unassign()
        return found
