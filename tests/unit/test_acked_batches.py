"""acked_batches: a batch is acknowledged only once the broker has its outputs, while up
to `in_flight` batches wait for that and the next ones are handled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.runtime import Incoming
from topology.app import acked_batches, completed


class Event:
    def __init__(self, offset: int) -> None:
        self.message = Incoming(topic="t", partition=0, offset=offset, key=None, value=b"")


class Stream:
    """The two things acked_batches uses of a faust stream."""

    def __init__(self, batches: int) -> None:
        self.batches = [[Event(2 * i), Event(2 * i + 1)] for i in range(batches)]
        self.acked: list[int] = []

    async def noack_take(self, most: int, within: float) -> AsyncIterator[list[Event]]:
        for batch in self.batches:
            yield batch

    async def ack(self, event: Event) -> None:
        self.acked.append(event.message.offset)


def test_batches_are_acked_only_after_their_outputs_while_the_next_are_handled():
    stream = Stream(batches=3)
    outputs: list[asyncio.Future[None]] = []
    handled: list[list[int]] = []

    async def handle(batch: list[Incoming]) -> Any:
        handled.append([m.offset for m in batch])
        outputs.append(asyncio.get_running_loop().create_future())
        return outputs[-1]

    async def run() -> None:
        task = asyncio.create_task(acked_batches(stream, 2, 0.01, handle, 2))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert handled == [[0, 1], [2, 3], [4, 5]]  # all three handled: two may wait
        assert stream.acked == []  # nothing on the broker yet
        outputs[1].set_result(None)
        await asyncio.sleep(0.01)
        assert stream.acked == [2, 3]  # out of order: the commit still stops at offset 0
        outputs[0].set_result(None)
        outputs[2].set_result(None)
        await task
        assert sorted(stream.acked) == [0, 1, 2, 3, 4, 5]

    asyncio.run(run())


def test_no_more_than_in_flight_batches_wait():
    stream = Stream(batches=3)
    outputs: list[asyncio.Future[None]] = []

    async def handle(batch: list[Incoming]) -> Any:
        outputs.append(asyncio.get_running_loop().create_future())
        return outputs[-1]

    async def run() -> None:
        task = asyncio.create_task(acked_batches(stream, 2, 0.01, handle, 1))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert len(outputs) == 2  # the third waits until the first is on the broker
        outputs[0].set_result(None)
        await asyncio.sleep(0.01)
        assert len(outputs) == 3
        for o in outputs[1:]:
            o.set_result(None)
        await task

    asyncio.run(run())


def test_a_failed_delivery_ends_the_agent_with_its_batch_unacked():
    stream = Stream(batches=2)

    async def handle(batch: list[Incoming]) -> Any:
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(RuntimeError("broker said no"))
        return failed

    with pytest.raises(RuntimeError, match="broker said no"):
        asyncio.run(acked_batches(stream, 2, 0.01, handle, 4))  # type: ignore[arg-type]
    assert stream.acked == []


def test_completed_work_is_acked_in_order_one_batch_at_a_time():
    stream = Stream(batches=2)
    stored: list[list[int]] = []

    async def store(batch: list[Incoming]) -> int:
        stored.append([m.offset for m in batch])
        return len(batch)

    asyncio.run(acked_batches(stream, 2, 0.01, completed(store), 0))  # type: ignore[arg-type]
    assert stored == [[0, 1], [2, 3]]
    assert stream.acked == [0, 1, 2, 3]
