"""faust's aiokafka transport with a configurable fetch wait, and offsets that a
rebalance cannot commit past unhandled events.

faust hard-codes fetch_max_wait_ms=1500 for its worker consumer. Apache Kafka answers a
waiting fetch as soon as data arrives, so that costs nothing there; Tansu holds the fetch
for the full wait, which made every hop cost up to 1.5 s (a 4-hop query took 2.9 s; with
20 ms it took 0.1 s). This transport makes the wait a setting (worker.fetch_max_wait_ms).

A rebalance can drop events a worker had fetched but not handled, and faust then lost
them in two ways (questions went unanswered when one of two workers died):
- its streams ack the events they skip during a rebalance, so their offsets counted as
  done. Here such an ack releases the event without recording its offset.
- a dropped event is fetched again only if the seek after the rebalance goes back to it,
  which it did not always (seek_to_committed leaves a partition with no committed offset
  where it is, and events fetched before the rebalance can move faust's read position past
  the seek). faust took a jump in the fetched offsets for a hole in the log (compaction,
  transaction markers) and counted the skipped offsets as done; otherwise later events
  were acked over a gap and the commit stalled at it forever. Every topic this consumer
  acks is a plain log with no holes (the compacted registry is read unacked), so here a
  jump is never counted as done, and each commit first looks for a gap below the acked
  events and seeks back to its start: the dropped events are handled again (at least
  once, never zero times).
- a partition can stop being read after a takeover, with no error: the failover test
  once left two queries partitions unread at their committed offset while their questions
  waited. A watchdog looks every commit interval for an assigned partition with events
  past what was handled and nothing of it in flight; if it is still so one interval later,
  it resumes the partition and seeks it to the first unhandled event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from faust.types.tuples import Message, ack_lock
from mode import Service

log = logging.getLogger(__name__)


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts (it builds its Fetcher then).
        consumer._fetch_max_wait_ms = cast("PipelineApp", self.app).fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    _gaps_seen: dict[TP, int] = {}  # noqa: RUF012  # replaced, never mutated, per commit
    _stalls_seen: dict[TP, int] = {}  # noqa: RUF012  # the same, per watchdog round

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message: Message) -> bool:
        if fetched_before_rebalance(self.app, message):
            with ack_lock:  # what faust's ack does, less recording the offset as done
                message.acked = True
                self._unacked_messages.discard(message)
            return False
        return cast(bool, super().ack(message))

    async def _commit_tps(self, tps: Iterable[TP], start_new_transaction: bool) -> bool:
        tps = list(tps)
        gapped = set()
        seen, self._gaps_seen = self._gaps_seen, {}
        for tp in tps:
            start = await self._next_unhandled(tp)
            if start is None:
                continue
            gapped.add(tp)
            # A gap can open for a moment after a rebalance's own seek (events fetched
            # again, not yet handled); seek only when it outlived a whole commit interval.
            if seen.get(tp) != start:
                self._gaps_seen[tp] = start
                continue
            if not self.app.flow_control.is_active() or tp not in self.assignment():
                continue  # mid-rebalance: the seek after it comes first
            log.warning(
                "%s: events from offset %d were dropped unhandled in a rebalance; reading them again",
                tp,
                start,
            )
            await self.seek(tp, start)
        return cast(
            bool, await super()._commit_tps([tp for tp in tps if tp not in gapped], start_new_transaction)
        )

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """faust records a jump in fetched offsets as a hole to count as done; our acked
        topics have none, so a jump means events were dropped: leave them to the seek."""

    async def _next_unhandled(self, tp: TP) -> int | None:
        """The first offset of a gap below every acked offset of `tp`, if there is one."""
        acked = self._acked[tp]
        if not acked:
            return None
        committed = (await self._committed([tp]))[tp]
        return committed if min(acked) > committed else None

    async def _committed(self, tps: list[TP]) -> dict[TP, int]:
        """The committed offset of each of `tps`; faust stores an unknown and a 0 commit
        alike, so for those the earliest offset, in one request for all of them."""
        unknown = [tp for tp in tps if self._committed_offset[tp] is None]
        earliest = await self.earliest_offsets(*unknown) if unknown else {}
        return {tp: self._committed_offset[tp] or earliest.get(tp, 0) for tp in tps}

    @Service.task
    async def _stall_watchdog(self) -> None:
        interval = self.commit_interval
        await self.sleep(interval)
        async for _ in self.itertimer(interval, name="stall_watchdog"):
            if self.app.flow_control.is_active() and not self.app.in_recovery:
                await self.unstall()

    async def unstall(self) -> None:
        """Resume and rewind an assigned partition that has events past the handled ones,
        none of them in flight, and was found so at the same offset one round earlier."""
        seen, self._stalls_seen = self._stalls_seen, {}
        idle = [tp for tp in self.assignment() if self._idle(tp)]
        if not idle:
            return
        committed = await self._committed(idle)
        ends = await self.highwaters(*idle)
        for tp, handled in committed.items():
            if ends.get(tp, 0) <= handled:
                continue
            if seen.get(tp) != handled:  # a fetch may be on its way: look again next round
                self._stalls_seen[tp] = handled
                continue
            try:  # for the log only: what was fetched of it
                position: int | None = await asyncio.wait_for(self.position(tp), 1)
            except (TimeoutError, KafkaError):
                position = None
            log.warning(
                "%s: events %d to %d wait unread (paused: %s, read position %s); resuming the "
                "partition and reading them from %d",
                tp,
                handled,
                ends[tp] - 1,
                tp in self._paused_partitions or tp not in self._get_active_partitions(),
                position,
                handled,
            )
            self.resume_partitions({tp})
            await self.seek(tp, handled)

    def _idle(self, tp: TP) -> bool:
        """Nothing of `tp` is queued, being handled or handled but uncommitted."""
        if self._acked[tp] or not self.app.topics.acks_enabled_for(tp.topic) or self._is_changelog_tp(tp):
            return False
        if any(m.tp == tp for m in list(self._unacked_messages)):  # being handled
            return False
        channels = cast(Any, self.app.topics)._tp_index.get(tp, ())
        return not any(getattr(c, "_queue", None) is not None and c._queue.qsize() for c in channels)


def fetched_before_rebalance(app: Any, message: Message) -> bool:
    """faust's own test for the events its streams skip: flow stopped for a rebalance, or
    fetched in an earlier consumer generation. The consumer will seek back over them."""
    return not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id


class _Transport(driver.Transport):
    Consumer = _Consumer


class PipelineApp(faust.App):
    """A faust App whose worker consumer waits at most `fetch_max_wait_ms` per fetch."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
