"""acked_batches: a micro-batch is acknowledged only once its processing returned, so a
crash or a rebalance mid-batch leaves it to be delivered again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from agents.runtime import Incoming
from topology.app import acked_batches


class Event:
    def __init__(self, offset: int) -> None:
        self.message = Incoming(topic="t", partition=0, offset=offset, key=None, value=b"")


class Stream:
    """What acked_batches uses of a faust stream: iteration that sets current_event,
    enable_acks, ack. Each event comes `gaps[i]` seconds after the one before (0 if not
    given); `fail` is raised after the last one."""

    def __init__(self, batches: int, gaps: list[float] | None = None, fail: Exception | None = None) -> None:
        self.batches = [[Event(2 * i), Event(2 * i + 1)] for i in range(batches)]
        self.gaps = gaps or []
        self.fail = fail
        self.acked: list[int] = []
        self.enable_acks = True
        self.current_event: Event | None = None
        self.acks_while_read: list[bool] = []

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._values()

    async def _values(self) -> AsyncIterator[bytes]:
        for i, event in enumerate(e for batch in self.batches for e in batch):
            if i < len(self.gaps):
                await asyncio.sleep(self.gaps[i])
            self.acks_while_read.append(self.enable_acks)
            self.current_event = event
            yield b""
            self.current_event = None
        if self.fail is not None:
            raise self.fail

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


def test_events_are_read_with_the_stream_s_acks_off_and_acks_restored_after():
    stream = Stream(batches=2)

    async def process(batch: list[Incoming]) -> None:
        pass

    asyncio.run(acked_batches(stream, 2, 0.01, process))  # type: ignore[arg-type]
    assert stream.acks_while_read == [False] * 4  # the stream acks nothing itself
    assert stream.enable_acks is True


def test_a_batch_waits_within_from_its_first_event_not_on_a_clock():
    # First event at 0.6 s, the next 0.3 s later, within 0.4 s: one batch. Windows on a
    # 0.4 s clock (faust's take) would close at 0.8 s and split them.
    stream = Stream(batches=1, gaps=[0.6, 0.3])
    seen: list[list[int]] = []

    async def process(batch: list[Incoming]) -> None:
        seen.append([m.offset for m in batch])

    asyncio.run(acked_batches(stream, 10, 0.4, process))  # type: ignore[arg-type]
    assert seen == [[0, 1]]


def test_an_idle_agent_sets_no_timers():
    class CountingLoop(asyncio.SelectorEventLoop):
        timers = 0

        def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
            self.timers += 1
            return super().call_at(when, callback, *args, context=context)

    stream, started = Stream(batches=1), asyncio.Event()
    timers_when_idle: list[int] = []

    async def idle_then_events() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(acked_batches(gated(stream, started), 2, 0.001, process))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)  # one timer of ours; a clocked take would set 300
        timers_when_idle.append(cast(CountingLoop, loop).timers)
        started.set()
        await task

    async def process(batch: list[Incoming]) -> None:
        pass

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        runner.run(idle_then_events())
    assert timers_when_idle == [1]
    assert stream.acked == [0, 1]


def gated(stream: Stream, gate: asyncio.Event) -> Stream:
    """`stream`, its first event held back until `gate` is set (no timer)."""
    values = stream._values

    async def after_gate() -> AsyncIterator[bytes]:
        await gate.wait()
        async for value in values():
            yield value

    stream._values = after_gate  # type: ignore[method-assign]
    return stream


def test_a_failure_of_the_stream_reaches_the_agent_after_the_events_before_it():
    stream = Stream(batches=1, fail=RuntimeError("consumer crashed"))
    seen: list[list[int]] = []

    async def process(batch: list[Incoming]) -> None:
        seen.append([m.offset for m in batch])

    with pytest.raises(RuntimeError, match="consumer crashed"):
        asyncio.run(acked_batches(stream, 2, 0.01, process))  # type: ignore[arg-type]
    assert seen == [[0, 1]]
    assert stream.acked == [0, 1]
