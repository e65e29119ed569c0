"""The analytics sink: decode a batch, dead-letter what is malformed, turn the rest into
rows and write them, retrying until the store takes them. The caller acknowledges the
batch (commits its offsets) only when `process` returns, so a store outage delays rows
but loses none.

Idempotency: a batch can be delivered again (a crash after the write, before the
commit). `insert_new` first asks the table which of the batch's event ids it already
holds, by primary key, and inserts only the others; the tables are ReplacingMergeTree on
(trace_id, event_id) as a backstop. Skipping, rather than relying on merges, is what
keeps the materialized-view rollups from counting a redelivered event twice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from agents.runtime import Incoming, dead_letter_for
from connectors.clickhouse import AnalyticsStore, checked_table
from schemas import Event, decode, encode
from schemas.errors import InvalidEvent, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = dict[str, Any]
# Rows for a batch of events: one row, or the error that event is dead-lettered with.
RowBuilder = Callable[[Sequence[Any], AnalyticsStore], Awaitable[Sequence[Row | BaseException]]]


class SinkSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_max: int = Field(default=2_000, ge=1, description="Events per insert, at most.")
    batch_within_s: float = Field(default=1.0, gt=0, description="Longest wait to fill a batch.")
    backoff_s: float = Field(default=0.5, gt=0, description="First retry delay after a failed write.")
    # The longest wait between retries is also how late the rows can be after the store is
    # back: 30 s left a 30 s outage's rows waiting 22 s more, 5 s leaves them at most 5.
    backoff_max_s: float = Field(default=5.0, gt=0)


async def insert_new(store: AnalyticsStore, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert the rows whose event_id the table does not hold yet; returns how many."""
    unique = list({row["event_id"]: row for row in rows}.values())
    if not unique:
        return 0
    held = await store.query(
        f"SELECT event_id FROM {checked_table(table)} "  # noqa: S608  (a checked name; values are bound)
        "WHERE trace_id IN {traces:Array(String)} AND event_id IN {ids:Array(String)}",
        {"traces": sorted({r["trace_id"] for r in unique}), "ids": [r["event_id"] for r in unique]},
    )
    seen = {row[0] for row in held.rows}
    fresh = [row for row in unique if row["event_id"] not in seen]
    await store.insert(table, fresh)
    return len(fresh)


@dataclass(frozen=True)
class SinkRunner:
    name: str
    table: str
    input_model: type[Event]
    rows: RowBuilder
    store: AnalyticsStore
    dead_letter: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]
    settings: SinkSettings
    # Runs after each batch is stored (with all its rows, redelivered ones too). A failure
    # is logged, not retried: the rows are safe, and what the hook does can be redone.
    after_write: Callable[[Sequence[Row]], Awaitable[None]] | None = None

    async def process(self, batch: Sequence[Incoming]) -> int:
        """Store one batch; returns the number of rows written (redeliveries write none).
        Returns only once the rows are stored and every dead letter is acknowledged."""
        deliveries: list[Awaitable[Any]] = []
        decoded: list[tuple[Incoming, Event]] = []
        for message in batch:
            try:
                decoded.append((message, decode(message.value, self.input_model)))
            except InvalidEvent as exc:
                deliveries.append(await self._dead_letter(message, None, exc))
        events = [event for _, event in decoded]
        built = await self._until_done("build rows", lambda: self.rows(events, self.store)) if events else []
        rows: list[Row] = []
        for (message, event), row in zip(decoded, built, strict=True):
            if isinstance(row, BaseException):
                deliveries.append(await self._dead_letter(message, event, row))
            else:
                rows.append(row)
        written = await self._until_done("insert", lambda: insert_new(self.store, self.table, rows))
        if self.after_write is not None and rows:
            try:
                await self.after_write(rows)
            except Exception as exc:
                log.warning("%s: after-write step failed: %s", self.name, str(exc)[:300])
        await asyncio.gather(*deliveries)
        return written

    async def _dead_letter(
        self, message: Incoming, event: Event | None, error: BaseException
    ) -> Awaitable[Any]:
        letter = dead_letter_for(self.name, message, event, error, attempts=1)
        return await self.dead_letter(letter.trace_id.encode(), encode(letter))

    async def _until_done(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        return await until_done(self.name, what, step, self.settings)


async def until_done(name: str, what: str, step: Callable[[], Awaitable[T]], settings: SinkSettings) -> T:
    """Retry `step` with backoff until it succeeds. The sink's batches are not
    acknowledged meanwhile, so the broker keeps them. Errors in our own SQL are retried
    too (and logged as errors): an operator can fix them (apply migrations) without
    losing a batch."""
    attempt = 0
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = min(settings.backoff_s * 2**attempt, settings.backoff_max_s)
            level = logging.WARNING if isinstance(exc, TransientError) else logging.ERROR
            log.log(level, "%s: %s failed (%s); retrying in %.1fs", name, what, str(exc)[:300], delay)
            await asyncio.sleep(delay)
            attempt += 1
