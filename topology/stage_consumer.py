"""The pipeline stages' and the analytics sinks' topics read through librdkafka
(confluent-kafka) instead of faust.

faust stays the application framework (worker lifecycle, the conversation table, leader
timers, web views); this is only the data path of the stages that keep no table and of
the sinks. One librdkafka Consumer per worker process reads every such stage's topic in
its own consumer group, `<app id>-stages` (faust's group, `<app id>`, still holds the
conversation stage and the tables: two groups, since faust's assignor and librdkafka's
cannot share one); one per analytics process reads the sinks' topics in
`<app id>-analytics-sinks` (faust's `<app id>-analytics` elects the timers' leader).

- A dedicated thread blocks in librdkafka (C, no Python wake-ups while idle) for the first
  message, takes what else is already fetched up to `batch_max`, and hands the messages,
  grouped by topic, to the event loop.
- One asyncio task per stage handles its messages in order (so each partition's order
  is kept), merging what queued meanwhile into one micro-batch of at most `batch_max`.
  It goes on to the next batch while up to `ahead` batches wait for the broker to
  acknowledge their outputs: a hop is bound by that round trip, not by the CPU
  (topology/stage_batches.py).
- Offsets are stored (`enable.auto.offset.store=false`) only once a batch's every output
  is acknowledged by the broker, in the order the batches were handled (a batch that
  failed, or whose delivery did, is handled again before any later batch stores), by the
  consumer thread between two consumes (librdkafka makes a call from another thread wait
  for a running consume); librdkafka commits the stored offsets every
  `auto.commit.interval.ms`, on a revoke and at close. A crash
  delivers again what was handled but not yet committed: at least once, as before.
- A rebalance bumps the generation of every revoked partition (on the consumer thread,
  inside consume, so between two rounds of storing): a batch of a revoked partition, in
  flight or still queued, never stores an offset afterwards (its new owner reads it
  again) and a queued one is dropped.
- At most `in_flight` messages are handed over and not yet done; beyond that the
  assignment is paused (the thread keeps polling, so the group keeps it as a member).
  librdkafka's fetcher looks at a resumed partition only when it next wakes, up to a
  second later, so a request to the broker follows each resume to wake it.
- Idle mode. librdkafka's fetch wait is fixed while it runs (faust's consumer lengthens
  it while idle, topology/transport.py), and Tansu answers a fetch only when the wait is
  over, so a consumer fetching all the time keeps the broker answering a fetch every
  `fetch.wait.max.ms`. Once nothing was handed over for IDLE_AFTER_S, nothing is in
  flight and the assignment is not paused for backpressure, the consumer pauses its
  assignment and, every `idle_probe_ms`, asks the partitions' log ends (ListOffsets, one
  request per broker) instead of fetching; at the first log end past its read position it
  resumes and fetches as before. It never relies on a fetch window: a paused partition's
  fetched messages are discarded and librdkafka's fetcher looks at a resumed partition
  only at its next wake-up (up to a second later), which likely starved the earlier idle
  rounds (short fetch windows) under load. Off when `idle_probe_ms` is not longer than the
  fetch wait (Apache Kafka with a long wait answers a fetch as soon as data arrives).

Its decisions with no I/O (which offsets a finished batch may store, when to go idle and
when to wake) are in topology/stage_bookkeeping.py."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mode import Service

from agents.runtime import Backoff, Incoming
from connectors.kafka import KafkaSettings, librdkafka_config
from topology.settings import WorkerSettings
from topology.stage_batches import Batching, Dispatch, StageBatches
from topology.stage_bookkeeping import IDLE_AFTER_S, TP, Chunk, OffsetBook, Quiet, grown, read_positions

log = logging.getLogger(__name__)


# ListOffsets timestamps: the log's end, the log's start.
LATEST, EARLIEST = -1, -2


def consumer_config(
    kafka: KafkaSettings,
    worker: WorkerSettings,
    group_id: str,
    *,
    fetch_max_wait_ms: int,
    fetch_min_bytes: int = 1,
    commit_interval_ms: int = 1000,
) -> dict[str, Any]:
    """The stage consumer's librdkafka configuration; the group's timings are the worker's
    (`worker.session_timeout_s` and the like), whichever process the consumer runs in.
    `fetch_min_bytes`: what Apache Kafka waits for (up to the fetch wait) before it answers
    a fetch; Tansu holds every fetch for the whole wait anyway."""
    session_ms = int(worker.session_timeout_s * 1000)
    return librdkafka_config(
        kafka,
        **{
            "group.id": group_id,
            "client.id": f"{group_id}-consumer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": commit_interval_ms,
            "enable.auto.offset.store": False,
            # Tansu answers a fetch only when this wait is over, data or not; Apache Kafka
            # answers as soon as data arrives. The same wait as faust's worker consumer.
            "fetch.wait.max.ms": fetch_max_wait_ms,
            "fetch.min.bytes": fetch_min_bytes,
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": int(worker.heartbeat_interval_s * 1000),
            # librdkafka sends this as the group's rebalance timeout: Tansu holds a joining
            # group about that long (faust's worker uses rebalance_timeout_s likewise). It
            # must not be below the session timeout; the thread polls at least every 0.2 s.
            "max.poll.interval.ms": max(int(worker.rebalance_timeout_s * 1000), session_ms),
        },
    )


class StageConsumer:
    """Reads the topics of the stages added with `add` and hands them to their `dispatch`
    (StageRunner.dispatch: returns the deliveries of what it sent). `start` and `stop`
    run on the event loop; the consumer itself lives on its own thread."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        batch_max: int,
        in_flight: int,
        ready: Callable[[], Awaitable[None]],
        backoff: Backoff | None = None,
        poll_timeout_s: float = 0.5,
        idle_probe_ms: int | None = None,
        fill_within_s: float = 0.0,
        ahead: int = 1,
    ) -> None:
        """`idle_probe_ms`: how often an idle consumer asks for the log ends (None, or not
        longer than the config's fetch wait: never idle). `fill_within_s` and `ahead`: as
        in topology/stage_batches.Batching."""
        self._config = config
        fetch_wait_ms = int(config.get("fetch.wait.max.ms", 500))  # librdkafka's default
        self._idle_probe_s = (
            idle_probe_ms / 1000 if idle_probe_ms is not None and idle_probe_ms > fetch_wait_ms else None
        )
        self._rebalances = 0  # assignments, revokes and losses seen (consumer thread only)
        self._batch_max = batch_max
        self._in_flight_max = in_flight
        self._ready = ready
        self._backoff = backoff or Backoff()
        self._poll_timeout_s = poll_timeout_s
        self._fill_within_s = fill_within_s
        self._ahead = ahead
        self._stages: dict[str, tuple[str, Dispatch]] = {}  # topic -> (stage, dispatch)
        self._queues: dict[str, asyncio.Queue[Chunk]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._book = OffsetBook()
        self._lock = threading.Lock()  # the book and the handled chunks
        self._handled: list[Chunk] = []  # handled, offsets not yet stored
        self._room = threading.Condition()
        self._in_flight = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = asyncio.Event()

    def add(self, stage: str, topic: str, dispatch: Dispatch) -> None:
        if topic in self._stages:
            raise ValueError(f"{topic} is already read by {self._stages[topic][0]}")
        self._stages[topic] = (stage, dispatch)

    @property
    def topics(self) -> list[str]:
        return list(self._stages)

    async def start(self) -> None:
        """Join the group and fetch; the stages wait for `open`."""
        if self._thread is not None or not self._stages:
            return
        from confluent_kafka import Consumer

        self._loop = asyncio.get_running_loop()
        self._consumer = Consumer(self._config)
        for topic, (stage, dispatch) in self._stages.items():
            queue: asyncio.Queue[Chunk] = asyncio.Queue()
            self._queues[topic] = queue
            task = asyncio.create_task(self._drive(stage, dispatch, queue), name=f"stage-{stage}")
            task.add_done_callback(_log_end)
            self._tasks.append(task)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="stage-consumer", daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Let the stages process (once the app's tables are recovered: prompting reads the
        prompt registry). Joining the group before saves a rebalance's wait at start."""
        self._opened.set()

    async def stop(self) -> None:
        """Stop handing over, cancel the stages (what they had in flight is not stored, so
        it is read again), then close the consumer: it commits the stored offsets."""
        self._stopping.set()
        with self._room:
            self._room.notify_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    # The consumer thread -------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        paused = False
        quiet = Quiet(IDLE_AFTER_S, time.monotonic())
        rebalances = self._rebalances
        try:
            while not self._stopping.is_set():
                self._store_handled()
                if self._full():
                    # Keep polling (the group's liveness, rebalances) but fetch nothing.
                    consumer.pause(consumer.assignment())
                    paused = True
                    with self._room:
                        self._room.wait(0.2)
                    messages = consumer.consume(self._batch_max, timeout=0)
                    quiet.busy(time.monotonic())
                else:
                    if paused:
                        self._resume(consumer)
                        paused = False
                    if self._rebalances != rebalances:  # a new assignment: fetch a while first
                        rebalances = self._rebalances
                        quiet.busy(time.monotonic())
                    if self._idle_probe_s is not None and quiet.idle(time.monotonic(), self._in_flight_now()):
                        messages = self._idle(consumer)
                        rebalances = self._rebalances
                        quiet.busy(time.monotonic())
                    else:
                        # Wait for one in C, then take what is already fetched without
                        # waiting (consume waits its full timeout unless num_messages arrive).
                        messages = consumer.consume(1, timeout=self._poll_timeout_s)
                    if messages and len(messages) < self._batch_max:
                        messages += consumer.consume(self._batch_max - len(messages), timeout=0)
                if messages:
                    quiet.busy(time.monotonic())
                    self._hand_over(messages)
        except Exception:
            log.exception("stage consumer stopped")
            raise
        finally:
            try:
                self._store_handled()
                consumer.close()  # commits the stored offsets and leaves the group
            except Exception:
                log.exception("closing the stage consumer failed")

    def _full(self) -> bool:
        with self._room:
            return self._in_flight >= self._in_flight_max

    def _in_flight_now(self) -> int:
        with self._room:
            return self._in_flight

    def _idle(self, consumer: Any) -> list[Any]:
        """Paused, ask the log ends every `idle_probe_s` until one is past the read
        position (or a rebalance, a message, a failed request, stop); then resume.
        Returns what a consume returned meanwhile (after a rebalance, say)."""
        from confluent_kafka import KafkaException

        assignment = consumer.assignment()
        if not assignment:
            return list(consumer.consume(1, timeout=self._poll_timeout_s))
        rebalances = self._rebalances
        consumer.pause(assignment)
        messages: list[Any] = []
        try:
            positions = self._read_positions(consumer, assignment)
            log.debug("stage consumer idle at %s", positions)
            while not self._stopping.is_set() and self._rebalances == rebalances:
                # Paused: this serves the group's callbacks and fetches nothing.
                messages = consumer.consume(1, timeout=self._idle_probe_s)
                if messages or self._rebalances != rebalances:
                    break
                self._store_handled()
                if grown(self._log_ends(consumer, assignment), positions):
                    break
        except KafkaException as exc:  # the broker did not answer: fetch as before
            log.debug("stage consumer idle mode left: %s", exc)
        self._resume(consumer)
        return list(messages)

    def _resume(self, consumer: Any) -> None:
        """Resume the assignment and wake librdkafka's fetcher: it looks at a resumed
        partition only when it next wakes (up to a second later), and any request to the
        partitions' brokers wakes it."""
        from confluent_kafka import KafkaException

        current = consumer.assignment()
        consumer.resume(current)
        if current and not self._stopping.is_set():
            try:
                self._log_ends(consumer, current)
            except KafkaException as exc:
                log.debug("stage consumer wake-up request: %s", exc)

    def _read_positions(self, consumer: Any, tps: list[Any]) -> dict[TP, int]:
        from confluent_kafka import TopicPartition

        delivered = {(p.topic, p.partition): p.offset for p in consumer.position(tps)}
        unknown = [TopicPartition(t, p) for (t, p), o in delivered.items() if o < 0]
        committed: dict[TP, int] = {}
        earliest: dict[TP, int] = {}
        if unknown:
            committed = {(p.topic, p.partition): p.offset for p in consumer.committed(unknown, timeout=5)}
            empty = [TopicPartition(t, p, EARLIEST) for (t, p), o in committed.items() if o < 0]
            if empty:
                earliest = {
                    (p.topic, p.partition): p.offset if p.error is None else -1
                    for p in consumer.offsets_for_times(empty, timeout=5)
                }
        return read_positions(delivered, committed, earliest)

    def _log_ends(self, consumer: Any, tps: list[Any]) -> dict[TP, int | None]:
        """Each partition's end (one ListOffsets request per leader); None where the
        broker gave an error."""
        from confluent_kafka import TopicPartition

        asked = [TopicPartition(p.topic, p.partition, LATEST) for p in tps]
        return {
            (p.topic, p.partition): p.offset if p.error is None and p.offset >= 0 else None
            for p in consumer.offsets_for_times(asked, timeout=5)
        }

    def _hand_over(self, messages: list[Any]) -> None:
        by_topic: dict[str, list[Incoming]] = {}
        for m in messages:
            error = m.error()
            if error is not None:
                log.warning("stage consumer: %s", error)
                continue
            by_topic.setdefault(m.topic(), []).append(
                Incoming(
                    topic=m.topic(), partition=m.partition(), offset=m.offset(), key=m.key(), value=m.value()
                )
            )
        if not by_topic:
            return
        handed = sum(len(batch) for batch in by_topic.values())
        with self._room:
            self._in_flight += handed
        assert self._loop is not None
        for topic, batch in by_topic.items():
            # The book changes only on this thread (rebalance callbacks run inside consume).
            chunk = Chunk(batch, self._book.stamp(batch))
            self._loop.call_soon_threadsafe(self._queues[topic].put_nowait, chunk)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._rebalances += 1
        with self._lock:
            self._book.assign((p.topic, p.partition) for p in partitions)
        log.info("stage consumer assigned %s", _names(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import KafkaException

        self._rebalances += 1
        self._store_handled()  # what is done is committed below, not read again
        with self._lock:  # no batch stores an offset of these partitions after this
            self._book.revoke((p.topic, p.partition) for p in partitions)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:  # nothing stored since the last commit, say
            log.debug("commit on revoke: %s", exc)
        log.info("stage consumer revoked %s", _names(partitions))

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._rebalances += 1
        with self._lock:  # someone else owns them already: nothing to commit
            self._book.revoke((p.topic, p.partition) for p in partitions)
        log.warning("stage consumer lost %s", _names(partitions))

    # The event loop ------------------------------------------------------------------

    def batches(self, stage: str, dispatch: Dispatch) -> StageBatches:
        """The event loop's side of one stage (topology/stage_batches.py)."""
        batching = Batching(self._batch_max, self._backoff, self._fill_within_s, self._ahead)
        return StageBatches(
            stage, dispatch, batching, live=self._live, store=self._store, release=self._release
        )

    async def _drive(self, stage: str, dispatch: Dispatch, queue: asyncio.Queue[Chunk]) -> None:
        await self._opened.wait()
        await self._ready()
        await self.batches(stage, dispatch).drive(queue)

    def _live(self, chunks: list[Chunk]) -> list[Chunk]:
        """The chunks whose partitions are still held in the generation they were fetched in."""
        with self._lock:
            return [c for c in chunks if self._book.current(c)]

    def _release(self, handed: int) -> None:
        """`handed` messages are done (stored or dropped): room for more."""
        with self._room:
            self._in_flight -= handed
            self._room.notify_all()

    def _store(self, chunks: Sequence[Chunk]) -> None:
        """Leave the offsets of handled `chunks` to the consumer thread: librdkafka makes
        any other thread's call on the consumer wait until a running consume returns."""
        with self._lock:
            self._handled.extend(chunks)

    def _store_handled(self) -> None:
        """On the consumer thread: store the offsets of the handled chunks whose partitions
        are still held in the generation they were fetched in."""
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            handled, self._handled = self._handled, []
            offsets = [TopicPartition(t, p, o) for t, p, o in self._book.to_store(handled)]
        if not offsets:
            return
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:  # not assigned any more: the new owner reads them again
            log.info("offsets not stored: %s", exc)


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended", task.get_name(), exc_info=task.exception())


def _names(partitions: list[Any]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"


class StageConsumerService(Service):
    """Opens a StageConsumer once the faust app has started (tables recovered; added with
    `app.service(...)`) and stops it with the app. It is started earlier, with the app
    (PipelineApp.on_app_start), so that both groups are joined at the same time."""

    def __init__(self, consumer: StageConsumer, **kwargs: Any) -> None:
        self.consumer = consumer
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.consumer.start()  # if the app did not
        self.consumer.open()

    async def on_stop(self) -> None:
        await self.consumer.stop()
