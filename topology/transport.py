"""faust's aiokafka transport with a configurable fetch wait, and offsets that a
rebalance cannot commit past unhandled events. The pipeline stages without a table read
through librdkafka (topology/stage_consumer.py) unless LLMOPS_WORKER__STAGE_CONSUMER=faust;
faust's consumer, and so every patch below, still serves the conversation stage's turns,
the tables' changelogs and the analytics process's sinks. Each patch overrides or reads a private
faust or aiokafka name; tests/unit/test_faust_internals.py fails when an upgrade renames
one, changes its signature or stops calling it (a patch that no longer applies would
otherwise go unnoticed: the tests below call the overrides directly).

patch                           the loss or cost it prevents                                  tests
------------------------------  ------------------------------------------------------------  ----------
_ConsumerThread                 faust hard-codes fetch_max_wait_ms=1500 for its worker        T1
  ._create_worker_consumer:     consumer. Apache Kafka answers a waiting fetch as soon as
  sets aiokafka's               data arrives; Tansu holds it for the full wait, so every hop
  _fetch_max_wait_ms from       could cost that much there.
  worker.fetch_max_wait_ms
_ConsumerThread._fetch_records: with the short wait an idle worker fetched a hundred times    T11, T12
  after each getmany, the       a second, and kept itself and the broker busy doing it.
  Fetcher's wait: the short
  one while events come, the
  idle one after a second
  without any
_Consumer.ack: an event         faust's streams ack the events they skip during a rebalance,  T2, T3, T9
  fetched before a rebalance    so their offsets counted as done and the next commit went
  (or acked while the flow is   past events nobody handled: questions went unanswered when
  stopped) is released, not     one of two workers died.
  recorded
_Consumer._add_gap: records     faust takes a jump in fetched offsets for a hole in the log   T4, T9
  nothing                       (compaction, transaction markers) and counts the skipped
                                offsets as done. Every topic this consumer acks is a plain
                                log (the compacted registry is read unacked), so a jump
                                means events were dropped in a rebalance.
_Consumer._commit_tps: seeks    A dropped event is fetched again only if the seek after the   T4, T5, T9
  back to a gap below the       rebalance goes back to it, which it did not always
  acked events once it          (seek_to_committed leaves a partition with no committed
  outlived a commit interval,   offset where it is; events fetched before the rebalance can
  commits the other partitions  move the read position past the seek). Later events were then
                                acked over the gap and the commit stalled at it forever.
_Consumer._stall_watchdog,      After a takeover a partition could stop being read with no    T6, T7, T8,
  unstall: resume and rewind a  error, its questions waiting at the committed offset.         T9
  partition with events past
  the handled ones, none in
  flight, two rounds running
_Consumer._new_consumer_thread, the plumbing that makes faust build the classes above          T10
  _Transport.Consumer,          instead of its own.
  PipelineApp._new_transport

Private members read, checked by T10: Consumer._unacked_messages, ._acked,
._committed_offset, ._paused_partitions, ._get_active_partitions(), ._is_changelog_tp();
Conductor._tp_index; Channel._queue; aiokafka's AIOKafkaConsumer._fetch_max_wait_ms and
._fetcher, Fetcher._fetch_max_wait_ms.

T1  tests/unit/test_transport.py::test_the_worker_consumer_fetches_with_the_configured_wait_not_faust_s
T2  tests/unit/test_transport.py::test_an_event_fetched_before_the_rebalance_is_released_but_not_recorded
T3  tests/unit/test_transport.py::test_an_event_acked_while_the_flow_is_stopped_is_not_recorded
T4  tests/unit/test_transport.py::test_a_gap_below_the_acked_events_is_read_again_once_it_outlives_a_commit
T5  tests/unit/test_transport.py::test_no_gap_no_seek
T6  tests/unit/test_transport.py::test_a_partition_left_unread_is_resumed_and_rewound_once_it_outlives_a_round
T7  tests/unit/test_transport.py::test_a_partition_with_an_event_in_flight_is_left_alone
T8  tests/unit/test_transport.py::test_a_partition_read_to_its_end_is_left_alone
T9  tests/integration/test_crash.py::test_one_of_two_workers_killed_the_other_takes_over
T10 tests/unit/test_faust_internals.py
T11 tests/unit/test_transport.py::test_the_fetch_wait_grows_after_a_quiet_second_shrinks_at_records
T12 tests/unit/test_transport.py::test_a_getmany_paces_the_fetcher_it_read_from"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from faust.types.tuples import Message, ack_lock
from mode import Service

log = logging.getLogger(__name__)


# A worker that fetched no event for this long waits longer per fetch (PipelineApp).
IDLE_AFTER_S = 1.0


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    _records_at = 0.0  # when a fetch last brought records (monotonic)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts (it builds its Fetcher then).
        consumer._fetch_max_wait_ms = cast("PipelineApp", self.app).fetch_max_wait_ms
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        self.pace(consumer._fetcher, bool(records), time.monotonic())
        return records

    def pace(self, fetcher: Any, got_records: bool, now: float) -> None:
        """The short wait while events come, the idle one after a second without any
        (never shorter than the short one: Apache Kafka may run with a long wait).
        Called after each getmany (faust asks for at most a second's records), on the
        consumer's own thread; the Fetcher reads the wait into every fetch it sends."""
        app = cast("PipelineApp", self.app)
        if got_records:
            self._records_at = now
        idle = now - self._records_at >= IDLE_AFTER_S
        idle_wait = max(app.idle_fetch_max_wait_ms, app.fetch_max_wait_ms)
        fetcher._fetch_max_wait_ms = idle_wait if idle else app.fetch_max_wait_ms


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
    """A faust App whose worker consumer waits at most `fetch_max_wait_ms` per fetch while
    events come, and `idle_fetch_max_wait_ms` once none came for IDLE_AFTER_S.
    `on_app_start`: coroutines run as the app starts, before its consumer joins the group
    and recovers the tables (faust's services start only after that)."""

    def __init__(
        self, *args: Any, fetch_max_wait_ms: int, idle_fetch_max_wait_ms: int, **kwargs: Any
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.idle_fetch_max_wait_ms = idle_fetch_max_wait_ms
        self.on_app_start: list[Callable[[], Awaitable[None]]] = []
        super().__init__(*args, **kwargs)

    async def on_start(self) -> None:
        await super().on_start()
        for hook in self.on_app_start:
            await hook()

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
