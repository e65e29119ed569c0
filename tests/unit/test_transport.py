"""The worker consumer's acks: an event faust's stream skipped in a rebalance must not
count as handled, or the next commit goes past it and it is never handled (the failover
test's lost question)."""

from __future__ import annotations

import asyncio

from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from faust.types.tuples import Message

from topology.app import new_app, raw_topic
from topology.settings import Settings


def consumer_and_message(generation: int, offset: int = 7):  # type: ignore[no-untyped-def]
    settings = Settings()
    app = new_app(settings, "transport-test")
    topic = raw_topic(app, settings, "queries")
    app.topics.add(topic)  # an agent's subscription: acks are on for its topic
    asyncio.run(app.topics._update_indices())
    app.consumer_generation_id = 3
    message = Message(
        topic.get_topic_name(), 0, offset, 0.0, 0, None, b"k", b"v", None, generation_id=generation
    )
    return app, app.consumer, message, TP(topic.get_topic_name(), 0)


def test_an_event_of_this_generation_is_recorded_as_handled():
    app, consumer, message, tp = consumer_and_message(generation=3)
    app.flow_control.resume()
    assert consumer.ack(message)
    assert list(consumer._acked[tp]) == [7]


def test_an_event_fetched_before_the_rebalance_is_released_but_not_recorded():
    app, consumer, message, tp = consumer_and_message(generation=2)
    app.flow_control.resume()
    consumer._unacked_messages.add(message)
    assert not consumer.ack(message)
    assert message.acked  # released: the rebalance does not wait for it
    assert message not in consumer._unacked_messages
    assert not consumer._acked[tp]  # its offset will not be committed


def test_an_event_acked_while_the_flow_is_stopped_is_not_recorded():
    app, consumer, message, tp = consumer_and_message(generation=3)
    app.flow_control.suspend()
    assert not consumer.ack(message)
    assert not consumer._acked[tp]


def test_a_gap_below_the_acked_events_is_read_again_once_it_outlives_a_commit(monkeypatch):
    app, consumer, message, tp = consumer_and_message(generation=3)
    app.flow_control.resume()
    consumer._committed_offset[tp] = 6
    consumer._acked[tp].extend([9, 10, 11])  # 6, 7 and 8 were dropped in a rebalance
    asyncio.run(consumer._add_gap(tp, 6, 8))  # the fetch jumped over them: not counted as done
    assert not consumer._gap[tp]
    seeks = []

    async def seek(partition, offset):
        seeks.append((partition, offset))

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    asyncio.run(consumer._commit_tps([tp], start_new_transaction=False))
    assert seeks == []  # it may still close by itself
    asyncio.run(consumer._commit_tps([tp], start_new_transaction=False))
    assert seeks == [(tp, 6)]
    assert consumer._committed_offset[tp] == 6  # nothing committed over the gap


def test_no_gap_no_seek(monkeypatch):
    app, consumer, message, tp = consumer_and_message(generation=3)
    app.flow_control.resume()
    consumer._committed_offset[tp] = 9
    consumer._acked[tp].extend([9, 10, 11])
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    assert asyncio.run(consumer._next_unhandled(tp)) is None


def stalled_consumer(monkeypatch, end: int):  # type: ignore[no-untyped-def]
    """A consumer whose one partition was paused at committed offset 6 with events up to
    `end`, recording the watchdog's seeks."""
    app, consumer, message, tp = consumer_and_message(generation=3)
    app.flow_control.resume()
    consumer._committed_offset[tp] = 6
    consumer.pause_partitions({tp})
    seeks: list[tuple[TP, int]] = []

    async def seek(partition, offset):
        seeks.append((partition, offset))

    async def highwaters(*tps):
        return {t: end for t in tps}

    async def position(partition):
        return 6

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "highwaters", highwaters)
    monkeypatch.setattr(consumer, "position", position)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    return consumer, message, tp, seeks


def test_a_partition_left_unread_is_resumed_and_rewound_once_it_outlives_a_round(monkeypatch):
    consumer, _, tp, seeks = stalled_consumer(monkeypatch, end=17)
    asyncio.run(consumer.unstall())
    assert seeks == []  # a fetch may be on its way
    asyncio.run(consumer.unstall())
    assert seeks == [(tp, 6)]
    assert tp in consumer._get_active_partitions()
    assert tp not in consumer._paused_partitions


def test_a_partition_with_an_event_in_flight_is_left_alone(monkeypatch):
    consumer, message, tp, seeks = stalled_consumer(monkeypatch, end=17)
    consumer._unacked_messages.add(message)  # a slow handler holds offset 7
    for _ in range(3):
        asyncio.run(consumer.unstall())
    assert seeks == []


def test_a_partition_read_to_its_end_is_left_alone(monkeypatch):
    consumer, _, tp, seeks = stalled_consumer(monkeypatch, end=6)
    for _ in range(3):
        asyncio.run(consumer.unstall())
    assert seeks == []


def test_the_worker_consumer_fetches_with_the_configured_wait_not_faust_s():
    settings = Settings()
    worker = settings.worker.model_copy(update={"fetch_max_wait_ms": 37})
    app = new_app(settings.model_copy(update={"worker": worker}), "transport-test")

    async def build():  # type: ignore[no-untyped-def]
        # aiokafka's consumer wants a running loop; building it does no I/O.
        return app.consumer._thread._create_worker_consumer(app.transport)

    consumer = asyncio.run(build())
    assert consumer._fetch_max_wait_ms == 37  # faust alone would pass 1500


class Fetcher:
    _fetch_max_wait_ms = 1500  # aiokafka's: read into every fetch request it sends


def paced_thread():  # type: ignore[no-untyped-def]
    settings = Settings()
    worker = settings.worker.model_copy(update={"fetch_max_wait_ms": 10, "idle_fetch_max_wait_ms": 250})
    app = new_app(settings.model_copy(update={"worker": worker}), "transport-test")
    return app.consumer._thread


def test_the_fetch_wait_grows_after_a_quiet_second_shrinks_at_records():
    thread, fetcher = paced_thread(), Fetcher()
    thread.pace(fetcher, True, 100.0)
    assert fetcher._fetch_max_wait_ms == 10
    thread.pace(fetcher, False, 100.9)  # quiet, not for a second yet
    assert fetcher._fetch_max_wait_ms == 10
    thread.pace(fetcher, False, 101.0)
    assert fetcher._fetch_max_wait_ms == 250
    thread.pace(fetcher, False, 160.0)
    assert fetcher._fetch_max_wait_ms == 250
    thread.pace(fetcher, True, 160.5)  # the first records: the next fetch is short again
    assert fetcher._fetch_max_wait_ms == 10


def test_an_idle_wait_shorter_than_the_fetch_wait_never_shortens_it():
    """Apache Kafka answers a fetch as soon as data arrives, so it may run with a long
    fetch wait; going idle must not make that consumer fetch more often."""
    settings = Settings()
    worker = settings.worker.model_copy(update={"fetch_max_wait_ms": 500, "idle_fetch_max_wait_ms": 100})
    app = new_app(settings.model_copy(update={"worker": worker}), "transport-test")
    thread, fetcher = app.consumer._thread, Fetcher()
    thread.pace(fetcher, True, 100.0)
    assert fetcher._fetch_max_wait_ms == 500
    thread.pace(fetcher, False, 102.0)
    assert fetcher._fetch_max_wait_ms == 500


def test_a_getmany_paces_the_fetcher_it_read_from(monkeypatch):
    thread, fetcher = paced_thread(), Fetcher()
    answers = iter([{"tp": ["record"]}, {}])

    async def fetched(self, consumer, active_partitions, timeout=None, max_records=None):  # type: ignore[no-untyped-def]
        return next(answers)

    monkeypatch.setattr(driver.AIOKafkaConsumerThread, "_fetch_records", fetched)
    consumer = type("Consumer", (), {"_fetcher": fetcher})()
    assert asyncio.run(thread._fetch_records(consumer, set(), timeout=1.0)) == {"tp": ["record"]}
    assert fetcher._fetch_max_wait_ms == 10
    thread._records_at -= 2  # as if two quiet seconds had passed
    assert asyncio.run(thread._fetch_records(consumer, set(), timeout=1.0)) == {}
    assert fetcher._fetch_max_wait_ms == 250


def test_the_analytics_process_fetches_at_its_sinks_pace_and_waits_idle_as_long_as_they_fill_a_batch():
    from topology.analytics_app import create_analytics_app

    settings = Settings()
    sink = settings.sink.model_copy(update={"batch_within_s": 0.75, "fetch_max_wait_ms": 123})
    app = create_analytics_app(settings.model_copy(update={"sink": sink}))
    assert (app.fetch_max_wait_ms, app.idle_fetch_max_wait_ms) == (123, 750)
    worker = new_app(settings, "transport-test")
    assert (worker.fetch_max_wait_ms, worker.idle_fetch_max_wait_ms) == (
        settings.worker.fetch_max_wait_ms,
        settings.worker.idle_fetch_max_wait_ms,
    )
