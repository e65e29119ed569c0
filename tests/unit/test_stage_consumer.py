"""The librdkafka stage consumer's bookkeeping: which offset a finished batch stores, and
that a batch of a revoked partition never stores one (its new owner reads it again); its
idle mode's decisions (when to pause, where it reads next, when to wake)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from agents.runtime import Backoff, Incoming
from topology.stage_bookkeeping import Chunk, OffsetBook, Quiet, grown, read_positions
from topology.stage_consumer import (
    LATEST,
    StageConsumer,
    StageConsumerService,
)


def msgs(topic: str, partition: int, *offsets: int) -> list[Incoming]:
    return [Incoming(topic=topic, partition=partition, offset=o, key=b"k", value=b"v") for o in offsets]


def chunk(book: OffsetBook, messages: list[Incoming]) -> Chunk:
    return Chunk(messages, book.stamp(messages))


def test_a_finished_batch_stores_one_past_its_highest_offset_per_partition() -> None:
    book = OffsetBook()
    book.assign([("a", 0), ("a", 1)])
    done = [chunk(book, msgs("a", 0, 5, 6)), chunk(book, msgs("a", 1, 9) + msgs("a", 0, 7))]
    assert book.to_store(done) == [("a", 0, 8), ("a", 1, 10)]


def test_a_revoked_partition_stores_nothing_the_others_do() -> None:
    book = OffsetBook()
    book.assign([("a", 0), ("a", 1)])
    fetched = chunk(book, msgs("a", 0, 1) + msgs("a", 1, 1))
    book.revoke([("a", 0)])
    assert not book.current(fetched)
    assert book.to_store([fetched]) == [("a", 1, 2)]


def test_a_partition_assigned_again_does_not_store_what_was_fetched_before() -> None:
    """Revoked and given back to the same consumer: it reads from the committed offset
    again, so a batch of the old generation must not store past what the new one handles."""
    book = OffsetBook()
    book.assign([("a", 0)])
    old = chunk(book, msgs("a", 0, 40))
    book.revoke([("a", 0)])
    book.assign([("a", 0)])
    new = chunk(book, msgs("a", 0, 10))
    assert not book.current(old)
    assert book.current(new)
    assert book.to_store([old]) == []
    assert book.to_store([new]) == [("a", 0, 11)]


def test_nothing_is_stored_for_a_partition_never_assigned() -> None:
    book = OffsetBook()
    stray = chunk(book, msgs("a", 3, 1))
    assert book.to_store([stray]) == []


class Recorder:
    """What the stage consumer calls on a librdkafka Consumer from the event loop."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, int, int]] = []
        self.commits: list[list[tuple[str, int, int]]] = []

    def store_offsets(self, offsets: list[Any]) -> None:
        self.stored += [(o.topic, o.partition, o.offset) for o in offsets]

    def commit(self, asynchronous: bool) -> None:
        self.commits.append(list(self.stored))


async def ready() -> None:
    return None


async def nothing_sent(batch: list[Incoming]) -> list[Any]:
    return []


def consumer_with(book_tps: list[tuple[str, int]]) -> tuple[StageConsumer, Recorder]:
    consumer = StageConsumer({}, batch_max=10, in_flight=100, ready=ready, backoff=Backoff(first_s=0))
    recorder = Recorder()
    consumer._consumer = recorder
    consumer._book.assign(book_tps)
    return consumer, recorder


def test_a_batch_revoked_while_in_flight_stores_no_offset() -> None:
    consumer, recorder = consumer_with([("a", 0)])
    handled: list[int] = []

    async def process(batch: list[Incoming]) -> list[Any]:
        handled.extend(m.offset for m in batch)
        consumer._on_lost(None, [_TP("a", 0)])  # the rebalance lands while the outputs are sent
        return []

    asyncio.run(consumer.batches("s", process).handle([chunk(consumer._book, msgs("a", 0, 1, 2))]))
    consumer._store_handled()
    assert handled == [1, 2]
    assert recorder.stored == []


def test_a_revoke_commits_what_was_handled_before_it_and_nothing_after() -> None:
    consumer, recorder = consumer_with([("a", 0)])
    before, after = chunk(consumer._book, msgs("a", 0, 3)), chunk(consumer._book, msgs("a", 0, 4))
    consumer._store([before])  # handled, not yet stored: the consumer thread was in consume
    consumer._on_revoke(recorder, [_TP("a", 0)])
    consumer._store([after])
    consumer._store_handled()
    assert recorder.commits == [[("a", 0, 4)]]
    assert recorder.stored == [("a", 0, 4)]


def test_a_queued_batch_of_a_revoked_partition_is_dropped_unhandled() -> None:
    consumer, recorder = consumer_with([("a", 0), ("a", 1)])
    stale, kept = chunk(consumer._book, msgs("a", 0, 1)), chunk(consumer._book, msgs("a", 1, 4))
    consumer._book.revoke([("a", 0)])
    handled: list[Incoming] = []

    async def process(batch: list[Incoming]) -> list[Any]:
        handled.extend(batch)
        return []

    asyncio.run(consumer.batches("s", process).handle([stale, kept]))
    consumer._store_handled()
    assert [(m.partition, m.offset) for m in handled] == [(1, 4)]
    assert recorder.stored == [("a", 1, 5)]


def test_a_failed_batch_is_processed_again_and_stored_only_once_it_succeeds() -> None:
    consumer, recorder = consumer_with([("a", 0)])
    calls: list[list[int]] = []

    async def process(batch: list[Incoming]) -> list[Any]:
        calls.append([m.offset for m in batch])
        consumer._store_handled()
        assert recorder.stored == []  # nothing stored while it fails
        if len(calls) < 3:
            raise RuntimeError("not delivered")
        return []

    asyncio.run(consumer.batches("s", process).handle([chunk(consumer._book, msgs("a", 0, 7, 8))]))
    consumer._store_handled()
    assert calls == [[7, 8]] * 3
    assert recorder.stored == [("a", 0, 9)]


def test_queued_chunks_merge_into_batches_of_at_most_batch_max_and_release_their_room() -> None:
    consumer, recorder = consumer_with([("a", 0)])
    consumer._batch_max = 3
    batches: list[list[int]] = []

    async def process(batch: list[Incoming]) -> list[Any]:
        batches.append([m.offset for m in batch])
        return []

    async def run() -> None:
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        for offsets in ((0, 1), (2,), (3, 4), (5,)):
            queue.put_nowait(chunk(consumer._book, msgs("a", 0, *offsets)))
        consumer._in_flight = 6
        consumer.open()
        task = asyncio.create_task(consumer._drive("s", process, queue))
        while consumer._in_flight:
            await asyncio.sleep(0.01)
            consumer._store_handled()
        task.cancel()

    asyncio.run(run())
    consumer._store_handled()
    assert batches == [[0, 1, 2], [3, 4, 5]]
    assert recorder.stored[-1] == ("a", 0, 6)


def run_pipelined(
    consumer: StageConsumer,
    dispatch: Any,
    offsets: list[tuple[int, ...]],
    until: Any,
    arriving: Sequence[tuple[float, tuple[int, ...]]] = (),
) -> None:
    """Drive one stage over chunks of partition a/0 until `until()` holds; `arriving`:
    chunks queued that many seconds after the start."""

    async def run() -> None:
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        for chunk_offsets in offsets:
            queue.put_nowait(chunk(consumer._book, msgs("a", 0, *chunk_offsets)))
        for delay, chunk_offsets in arriving:
            later = chunk(consumer._book, msgs("a", 0, *chunk_offsets))
            asyncio.get_running_loop().call_later(delay, queue.put_nowait, later)
        consumer._in_flight = sum(len(o) for o in offsets) + sum(len(o) for _, o in arriving)
        consumer.open()
        task = asyncio.create_task(consumer._drive("s", dispatch, queue))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if until():
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())


def test_the_next_batch_is_handled_while_the_last_ones_deliveries_wait_and_offsets_follow_in_order() -> None:
    consumer, recorder = consumer_with([("a", 0)])
    consumer._batch_max, consumer._ahead = 1, 2
    acks: list[asyncio.Future[None]] = []
    handled: list[int] = []
    stored_when: list[list[tuple[str, int, int]]] = []

    async def dispatch(batch: list[Incoming]) -> list[Any]:
        handled.extend(m.offset for m in batch)
        consumer._store_handled()
        stored_when.append(list(recorder.stored))
        acks.append(asyncio.get_running_loop().create_future())
        if len(acks) == 2:  # both outstanding; the second is acknowledged first
            acks[1].set_result(None)
            asyncio.get_running_loop().call_later(0.05, acks[0].set_result, None)
        if len(acks) == 3:
            acks[2].set_result(None)
        return [acks[-1]]

    run_pipelined(consumer, dispatch, [(0,), (1,), (2,)], lambda: consumer._in_flight == 0)
    consumer._store_handled()
    # Batch 1 was handled before batch 0 was acknowledged; the third waited for room.
    assert handled == [0, 1, 2]
    assert stored_when[:2] == [[], []]
    assert recorder.stored[-1] == ("a", 0, 3)
    # Never an offset past a batch whose deliveries were outstanding.
    assert all(o <= 1 for _, _, o in stored_when[2]) if stored_when[2] else True


def test_what_queues_while_the_room_is_full_joins_the_next_batch() -> None:
    consumer, recorder = consumer_with([("a", 0)])
    consumer._batch_max, consumer._ahead = 8, 1
    batches: list[list[int]] = []

    async def dispatch(batch: list[Incoming]) -> list[Any]:
        batches.append([m.offset for m in batch])
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Batch 0 holds the room until after chunks 1, 2 and 3 came, one by one.
        asyncio.get_running_loop().call_later(0.1 if len(batches) == 1 else 0, acked.set_result, None)
        return [acked]

    arriving = [(0.01, (1,)), (0.02, (2,)), (0.03, (3,))]
    run_pipelined(consumer, dispatch, [(0,)], lambda: consumer._in_flight == 0, arriving)
    consumer._store_handled()
    assert batches == [[0], [1, 2, 3]]  # not [1] alone, taken before there was room for it
    assert recorder.stored[-1] == ("a", 0, 4)


def test_a_failed_delivery_is_handled_again_before_any_later_batch_stores_its_offset() -> None:
    consumer, recorder = consumer_with([("a", 0)])
    consumer._batch_max, consumer._ahead = 1, 4
    calls: list[int] = []

    async def dispatch(batch: list[Incoming]) -> list[Any]:
        calls.extend(m.offset for m in batch)
        consumer._store_handled()
        assert not [o for _, _, o in recorder.stored if o > 1 and calls.count(1) < 2]
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if batch[0].offset == 1 and calls.count(1) == 1:
            delivered.set_exception(RuntimeError("not delivered"))
        else:
            delivered.set_result(None)
        return [delivered]

    run_pipelined(consumer, dispatch, [(0,), (1,), (2,), (3,)], lambda: consumer._in_flight == 0)
    consumer._store_handled()
    assert calls.count(1) == 2  # handled again
    assert calls.index(1, calls.index(1) + 1) > calls.index(3)  # after the later ones were sent
    assert recorder.stored[-1] == ("a", 0, 4)


def test_a_batch_waits_up_to_fill_within_for_more_and_stops_at_batch_max() -> None:
    """The sinks' batches: what arrives within `fill_within_s` of the first chunk joins
    it; a full batch does not wait; a late chunk starts the next batch."""
    consumer, _ = consumer_with([("a", 0)])
    consumer._batch_max, consumer._fill_within_s = 4, 0.3

    async def run() -> list[list[int]]:
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        queue.put_nowait(chunk(consumer._book, msgs("a", 0, 0)))
        loop.call_later(0.05, queue.put_nowait, chunk(consumer._book, msgs("a", 0, 1)))
        loop.call_later(0.6, queue.put_nowait, chunk(consumer._book, msgs("a", 0, 2)))
        batches = consumer.batches("s", nothing_sent)
        first = await batches.next_batch(queue)  # 0 and 1, then 0.3 s with nothing more
        second = await batches.next_batch(queue)  # 2 alone, after its own wait
        for offsets in ((3, 4), (5, 6), (7,)):
            queue.put_nowait(chunk(consumer._book, msgs("a", 0, *offsets)))
        started = loop.time()
        full = await batches.next_batch(queue)  # 4 messages: no wait
        assert loop.time() - started < 0.25
        return [[m.offset for c in b for m in c.messages] for b in (first, second, full)]

    assert asyncio.run(run()) == [[0, 1], [2], [3, 4, 5, 6]]


def test_without_fill_within_a_batch_takes_only_what_is_queued() -> None:
    consumer, _ = consumer_with([("a", 0)])

    async def run() -> list[int]:
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        queue.put_nowait(chunk(consumer._book, msgs("a", 0, 0)))
        asyncio.get_running_loop().call_later(0.05, queue.put_nowait, chunk(consumer._book, msgs("a", 0, 1)))
        batch = await consumer.batches("s", nothing_sent).next_batch(queue)
        return [m.offset for c in batch for m in c.messages]

    assert asyncio.run(run()) == [0]


class _TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


def test_the_worker_reads_every_stage_without_a_table_through_librdkafka_and_the_rest_through_faust() -> None:
    from topology.app import create_app
    from topology.graph import STAGES
    from topology.settings import Settings

    settings = Settings(llm={"backend": "extractive"})
    assert settings.worker.stage_consumer == "librdkafka"
    app = create_app(settings)  # constructors do no I/O: nothing starts
    [service] = [s for s in app._extra_services if isinstance(s, StageConsumerService)]
    consumer = cast(StageConsumerService, service).consumer
    names = settings.kafka.topics
    assert sorted(consumer.topics) == sorted(getattr(names, s.consumes) for s in STAGES if not s.keeps)
    assert sorted(app.agents) == sorted(s.name for s in STAGES if s.keeps)
    assert consumer._config["group.id"] == f"{settings.worker.app_id}-stages"
    assert consumer._config["fetch.min.bytes"] == 1  # each hop answered as soon as it is sent

    faust_only = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"stage_consumer": "faust"})}
    )
    app = create_app(faust_only)
    assert sorted(app.agents) == sorted(s.name for s in STAGES)
    assert not [s for s in app._extra_services if isinstance(s, StageConsumerService)]


def test_the_consumer_stores_offsets_itself_and_fetches_with_the_worker_s_wait() -> None:
    from topology.app import librdkafka_stages
    from topology.settings import Settings

    settings = Settings()
    config = librdkafka_stages(settings, ready)._config
    assert config["enable.auto.offset.store"] is False
    assert config["enable.auto.commit"] is True
    assert config["fetch.wait.max.ms"] == settings.worker.fetch_max_wait_ms
    # librdkafka refuses a poll interval below the session timeout.
    assert config["max.poll.interval.ms"] >= config["session.timeout.ms"]


# The idle mode's decisions --------------------------------------------------------------


def test_quiet_goes_idle_a_second_after_the_last_message_and_only_with_nothing_in_flight() -> None:
    quiet = Quiet(1.0, now=100.0)
    assert not quiet.idle(100.9, in_flight=0)
    assert quiet.idle(101.0, in_flight=0)
    assert not quiet.idle(105.0, in_flight=1)  # a batch still being handled: not idle
    quiet.busy(105.0)  # a message, an assignment or a backpressure pause
    assert not quiet.idle(105.5, in_flight=0)
    assert quiet.idle(106.0, in_flight=0)


def test_the_read_position_is_past_the_last_delivered_else_committed_else_the_log_start() -> None:
    positions = read_positions(
        delivered={("a", 0): 8, ("a", 1): -1001, ("a", 2): -1001, ("a", 3): -1001},
        committed={("a", 1): 5, ("a", 2): -1001, ("a", 3): -1001},
        earliest={("a", 2): 3, ("a", 3): -1},
    )
    assert positions == {("a", 0): 8, ("a", 1): 5, ("a", 2): 3}  # ("a", 3): unknown


def test_a_log_end_past_the_read_position_wakes_and_one_at_it_does_not() -> None:
    positions = {("a", 0): 8, ("a", 1): 5}
    assert not grown({("a", 0): 8, ("a", 1): 5}, positions)
    # Tansu reports the end as one past the last batch's first offset: never past ours.
    assert not grown({("a", 0): 6, ("a", 1): 5}, positions)
    assert grown({("a", 0): 9, ("a", 1): 5}, positions)


def test_an_unknown_end_or_position_wakes_the_consumer() -> None:
    assert grown({("a", 0): None}, {("a", 0): 8})
    assert grown({("a", 3): 0}, {("a", 0): 8})


def test_no_idle_mode_unless_its_probe_is_longer_than_the_fetch_wait() -> None:
    """Apache Kafka with a long fetch wait answers a fetch as soon as data arrives: fetching
    costs as little as asking for the log ends."""

    def probe_s(fetch_wait_ms: int, idle_probe_ms: int | None) -> float | None:
        config = {"fetch.wait.max.ms": fetch_wait_ms}
        return StageConsumer(
            config, batch_max=1, in_flight=1, ready=ready, idle_probe_ms=idle_probe_ms
        )._idle_probe_s

    assert probe_s(10, 100) == 0.1
    assert probe_s(500, 100) is None
    assert probe_s(10, None) is None


class IdleBroker:
    """A librdkafka Consumer as the idle mode uses it: a partition's log end grows after
    `grows_after` probes; records what was paused, resumed and asked."""

    def __init__(self, grows_after: int) -> None:
        self.tps = [_Part("a", 0, -1000), _Part("a", 1, -1000)]
        self.grows_after = grows_after
        self.calls: list[str] = []
        self.probes = 0

    def assignment(self) -> list[_Part]:
        return self.tps

    def pause(self, tps: list[_Part]) -> None:
        self.calls.append("pause")

    def resume(self, tps: list[_Part]) -> None:
        self.calls.append("resume")

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls.append("consume")
        return []

    def position(self, tps: list[_Part]) -> list[_Part]:
        return [_Part("a", 0, 8), _Part("a", 1, -1001)]  # nothing delivered from a[1]

    def committed(self, tps: list[Any], timeout: float) -> list[_Part]:
        assert [(p.topic, p.partition) for p in tps] == [("a", 1)]
        return [_Part("a", 1, 5)]

    def offsets_for_times(self, tps: list[Any], timeout: float) -> list[_Part]:
        assert {p.offset for p in tps} == {LATEST}
        self.calls.append("ends")
        self.probes += 1
        grew = 1 if self.probes > self.grows_after else 0
        return [_Part("a", 0, 8), _Part("a", 1, 5 + grew)]


class _Part(_TP):
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        super().__init__(topic, partition)
        self.offset, self.error = offset, None


def test_idle_it_stays_paused_asking_for_log_ends_until_one_grows_then_resumes_and_wakes() -> None:
    consumer = StageConsumer({}, batch_max=10, in_flight=10, ready=ready, idle_probe_ms=1)
    broker = IdleBroker(grows_after=3)
    consumer._consumer = broker
    assert consumer._idle(broker) == []
    rounds = ["consume", "ends"]
    # paused, three probes finding nothing, the fourth finds a[1] grown; then a request
    # after the resume wakes librdkafka's fetcher
    assert broker.calls == ["pause", *rounds * 4, "resume", "ends"]


def test_idle_a_rebalance_ends_the_idle_mode_at_once() -> None:
    consumer = StageConsumer({}, batch_max=10, in_flight=10, ready=ready, idle_probe_ms=1)
    broker = IdleBroker(grows_after=100)

    def consume(num_messages: int, timeout: float) -> list[Any]:
        broker.calls.append("consume")
        consumer._on_lost(broker, [_TP("a", 0)])  # the callback runs inside consume
        return []

    broker.consume = consume  # type: ignore[method-assign]
    consumer._consumer = broker
    assert consumer._idle(broker) == []
    assert broker.calls == ["pause", "consume", "resume", "ends"]


def test_the_analytics_process_reads_every_sink_through_librdkafka_in_its_own_group() -> None:
    from topology.analytics_app import create_analytics_app, watched
    from topology.graph import SINKS
    from topology.settings import Settings

    settings = Settings(llm={"backend": "extractive"})
    app = create_analytics_app(settings)  # constructors do no I/O: nothing starts
    [service] = [s for s in app._extra_services if isinstance(s, StageConsumerService)]
    consumer = cast(StageConsumerService, service).consumer
    names = settings.kafka.topics
    assert sorted(consumer.topics) == sorted(getattr(names, s.consumes) for s in SINKS)
    assert not app.agents  # faust keeps the timers' leader election, web and services
    group = f"{settings.worker.app_id}-analytics-sinks"
    assert consumer._config["group.id"] == group
    # Apache Kafka holds the sinks' fetches for a batch's worth, not the first event
    assert consumer._config["fetch.min.bytes"] == settings.sink.fetch_min_bytes > 1
    assert consumer._fill_within_s == settings.sink.batch_within_s
    sink_names = {s.name for s in SINKS}
    assert {w.group for w in watched(settings) if w.stage in sink_names} == {group}
