"""faust's aiokafka transport with a configurable fetch wait, and offsets that a
rebalance cannot commit past unhandled events.

faust hard-codes fetch_max_wait_ms=1500 for its worker consumer. Apache Kafka answers a
waiting fetch as soon as data arrives, so that costs nothing there; Tansu holds the fetch
for the full wait, which made every hop cost up to 1.5 s (a 4-hop query took 2.9 s; with
20 ms it took 0.1 s). This transport makes the wait a setting (worker.fetch_max_wait_ms).

During a rebalance faust's streams skip the events they still hold (fetched before it,
to be fetched again after the seek to the committed offset) and ack them, so the offsets
of events nobody handled were committed and the seek went past them: a question was lost
when one of two workers died. Here such an ack releases the event without marking its
offset done, so it is handled after the seek (at least once, never zero times)."""

from __future__ import annotations

from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as driver
from faust.types.tuples import Message, ack_lock


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts (it builds its Fetcher then).
        consumer._fetch_max_wait_ms = cast("PipelineApp", self.app).fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message: Message) -> bool:
        if fetched_before_rebalance(self.app, message):
            with ack_lock:  # what faust's ack does, less recording the offset as done
                message.acked = True
                self._unacked_messages.discard(message)
            return False
        return cast(bool, super().ack(message))


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
