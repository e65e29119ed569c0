"""acked_batches: a micro-batch is acknowledged only once its processing returned, so a
crash or a rebalance mid-batch leaves it to be delivered again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agents.runtime import Incoming
from topology.app import acked_batches


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


def test_each_batch_is_acked_after_its_processing_returns():
    stream = Stream(batches=2)
    seen: list[tuple[list[int], list[int]]] = []

    async def process(batch: list[Incoming]) -> None:
        seen.append(([m.offset for m in batch], list(stream.acked)))

    asyncio.run(acked_batches(stream, 2, 0.01, process))  # type: ignore[arg-type]
    assert seen == [([0, 1], []), ([2, 3], [0, 1])]  # the first batch was acked before the second ran
    assert stream.acked == [0, 1, 2, 3]


def test_a_batch_whose_processing_fails_is_not_acked():
    stream = Stream(batches=2)

    async def process(batch: list[Incoming]) -> None:
        if batch[0].offset == 2:
            raise RuntimeError("broker said no")

    with pytest.raises(RuntimeError, match="broker said no"):
        asyncio.run(acked_batches(stream, 2, 0.01, process))  # type: ignore[arg-type]
    assert stream.acked == [0, 1]
