"""One stage's side of the stage consumer (topology/stage_consumer.py), on the event loop:
it merges the chunks the consumer thread handed over into micro-batches, dispatches them
in order, goes on while up to `ahead` batches wait for the broker to acknowledge their
outputs (taking the next batch only when there is room for it, so what queued meanwhile
joins it), and leaves a batch's offsets to be stored only once they are acknowledged, in
the order the batches were dispatched. A batch that failed, or whose delivery did, is
handled again (after a backoff) before any later batch may store: later batches of a
partition must not store past it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.runtime import Backoff, Incoming
from topology.stage_bookkeeping import Chunk

log = logging.getLogger(__name__)

# A stage's batch handler: handles the messages and queues what they send; returns the
# deliveries still outstanding (StageRunner.dispatch), awaited before offsets are stored.
Dispatch = Callable[[list[Incoming]], Awaitable[Sequence[Awaitable[Any]]]]


@dataclass(frozen=True)
class Batching:
    """`fill_within_s`: how long a batch waits after its first messages for more, up to
    `batch_max` (the analytics sinks: fewer, larger inserts); 0 takes only what is already
    queued. `ahead`: how many batches may wait for their deliveries while the next ones
    are handled (1: each batch's outputs are acknowledged before the next is handled)."""

    batch_max: int
    backoff: Backoff
    fill_within_s: float = 0.0
    ahead: int = 1


@dataclass
class Sent:
    """A dispatched batch: its live chunks, the deliveries it waits for (None: it failed
    and is to be handled again) and how many messages were handed over in it."""

    chunks: list[Chunk]
    deliveries: Sequence[Awaitable[Any]] | None
    size: int


class StageBatches:
    """`live` keeps the chunks whose partitions are still held in the generation they
    were fetched in; `store` leaves handled chunks' offsets to the consumer thread;
    `release` gives back the room of messages that are done (stored or dropped)."""

    def __init__(
        self,
        stage: str,
        dispatch: Dispatch,
        batching: Batching,
        *,
        live: Callable[[list[Chunk]], list[Chunk]],
        store: Callable[[Sequence[Chunk]], None],
        release: Callable[[int], None],
    ) -> None:
        self.stage, self._dispatch, self._batching = stage, dispatch, batching
        self._live, self._store, self._release = live, store, release

    async def drive(self, queue: asyncio.Queue[Chunk]) -> None:
        """Dispatch the queued batches in order, at most `ahead` with deliveries
        outstanding; `settle` waits for those in the same order. A batch is taken from
        the queue only once there is room for it."""
        room = asyncio.Semaphore(self._batching.ahead)
        sent: asyncio.Queue[Sent] = asyncio.Queue()
        settle = asyncio.create_task(self.settle(sent, room), name=f"stage-{self.stage}-acks")
        settle.add_done_callback(_log_failure)
        try:
            while True:
                # Room first, then the batch: what queued while the earlier batches
                # held the room joins this one (larger batches under load, no timer).
                await room.acquire()
                chunks = await self.next_batch(queue)
                size = sum(len(c.messages) for c in chunks)
                live = self._live(chunks)
                deliveries: Sequence[Awaitable[Any]] | None = []
                if live:
                    try:
                        deliveries = await self._dispatch([m for c in live for m in c.messages])
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # settle handles it again, in its turn
                        log.warning("%s: batch failed (%s)", self.stage, str(exc)[:300])
                        deliveries = None
                sent.put_nowait(Sent(live, deliveries, size))
        finally:
            settle.cancel()
            await asyncio.gather(settle, return_exceptions=True)

    async def settle(self, sent: asyncio.Queue[Sent], room: asyncio.Semaphore) -> None:
        """In dispatch order: once a batch's deliveries are all acknowledged, leave its
        offsets to be stored; a batch that failed (or whose delivery did) is handled again
        here, before any later batch stores an offset."""
        while True:
            batch = await sent.get()
            try:
                if batch.deliveries is not None:
                    try:
                        await asyncio.gather(*batch.deliveries)
                        self._store(batch.chunks)
                        continue
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("%s: a delivery failed (%s)", self.stage, str(exc)[:300])
                await asyncio.sleep(self._batching.backoff.delay(1))
                await self.handle(batch.chunks, attempt=2)
            finally:
                room.release()
                self._release(batch.size)

    async def next_batch(self, queue: asyncio.Queue[Chunk]) -> list[Chunk]:
        """The queued chunks, from the first one on, up to `batch_max` messages, waiting up
        to `fill_within_s` after the first for more."""
        chunks = [await queue.get()]
        size = len(chunks[0].messages)
        deadline = time.monotonic() + self._batching.fill_within_s
        while size < self._batching.batch_max:
            if queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    chunks.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                chunks.append(queue.get_nowait())
            size += len(chunks[-1].messages)
        return chunks

    async def handle(self, chunks: list[Chunk], attempt: int = 1) -> None:
        """Handle `chunks` until they and their deliveries succeed (or are revoked), then
        leave their offsets to be stored."""
        while True:
            live = self._live(chunks)
            if not live:
                return  # revoked: their new owner reads them again
            try:
                await asyncio.gather(*await self._dispatch([m for c in live for m in c.messages]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not stored, and later batches must not pass it: again
                delay = self._batching.backoff.delay(attempt)
                log.warning("%s: batch failed (%s); again in %.1fs", self.stage, str(exc)[:300], delay)
                await asyncio.sleep(delay)
                attempt += 1
                chunks = live
                continue
            self._store(live)
            return


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended", task.get_name(), exc_info=task.exception())
