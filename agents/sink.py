"""The analytics sink: decode a batch, dead-letter what is malformed, turn the rest into
rows and write them, retrying until the store takes them. The caller acknowledges the
batch (commits its offsets) only when `process` returns, so a store outage delays rows
but loses none.

Idempotency: a batch can be delivered again (a crash after the write, before the
commit). The store's `insert_new` first asks the table which of the batch's event ids it
already holds, by primary key, and inserts only the others; the tables are
ReplacingMergeTree on (key, event_id) as a backstop. Skipping, rather than relying on
merges, is what keeps the materialized-view rollups from counting a redelivered event
twice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.runtime import Backoff, Incoming, accept_flat_backoff, dead_letter_for, until_done
from connectors.ports import SinkWrites
from schemas import Event, decode, encode
from schemas.errors import InvalidEvent

log = logging.getLogger(__name__)
Row = dict[str, Any]
# Rows for a batch of events: one row, or the error that event is dead-lettered with.
RowBuilder = Callable[[Sequence[Any]], Awaitable[Sequence[Row | BaseException]]]
Hook = Callable[[Sequence[Any]], Awaitable[None]]


class SinkSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_max: int = Field(default=2_000, ge=1, description="Events per insert, at most.")
    batch_within_s: float = Field(
        default=3.0,
        gt=0,
        description="Longest wait to fill a batch, so how late the rows can be: each insert costs the "
        "store a fixed amount of CPU (a part per table and materialized view), so a longer wait "
        "costs less at a steady rate (docs/scaling.md).",
    )
    fetch_max_wait_ms: int = Field(
        default=200,
        ge=1,
        description="The analytics process's fetch wait while events flow (the worker's is "
        "LLMOPS_WORKER__FETCH_MAX_WAIT_MS): its sinks wait up to batch_within_s to fill a batch "
        "anyway, and a short wait on a broker that holds every fetch (Tansu) costs a fetch per "
        "wait.",
    )
    fetch_min_bytes: int = Field(
        default=256 * 1024,
        ge=1,
        description="What Apache Kafka gathers for the sinks before it answers a fetch inside "
        "fetch_max_wait_ms; at 1 it answers at the first event, a fetch per event or two at a low "
        "rate. Tansu holds every fetch for the whole wait anyway.",
    )
    # The longest wait between retries is also how late the rows can be after the store is
    # back, so it stays short.
    backoff: Backoff = Field(
        default=Backoff(first_s=0.5, max_s=5.0), description="Between tries of a failed write."
    )

    _flat = model_validator(mode="before")(accept_flat_backoff)


@dataclass(frozen=True)
class SinkRunner:
    name: str
    table: str
    input_model: type[Event]
    rows: RowBuilder
    data: SinkWrites
    dead_letter: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]
    settings: SinkSettings
    # Runs after each batch is stored (with all its rows, redelivered ones too). A failure
    # is logged, not retried: the rows are safe, and what the hook does can be redone.
    after_write: Hook | None = None
    # Runs with the events whose rows were new (never for a redelivered one): delivery of
    # what must be announced once. Failures are logged as for after_write.
    after_new: Hook | None = None
    # The column the table's primary key starts with.
    key: str = "trace_id"
    # Decodes one message; None: as input_model.
    decoder: Callable[[bytes | None], Event] | None = None

    async def process(self, batch: Sequence[Incoming]) -> int:
        """Store one batch; returns the number of rows written (redeliveries write none).
        Returns only once the rows are stored and every dead letter is acknowledged."""
        deliveries: list[Awaitable[Any]] = []
        decoded: list[tuple[Incoming, Event]] = []
        for message in batch:
            try:
                decoded.append((message, self._decode(message.value)))
            except InvalidEvent as exc:
                deliveries.append(await self._dead_letter(message, None, exc))
        events = [event for _, event in decoded]
        built = await self._until_done("build rows", lambda: self.rows(events)) if events else []
        rows: list[Row] = []
        stored: list[Event] = []
        for (message, event), row in zip(decoded, built, strict=True):
            if isinstance(row, BaseException):
                deliveries.append(await self._dead_letter(message, event, row))
            else:
                rows.append(row)
                stored.append(event)
        fresh = await self._until_done("insert", lambda: self.data.insert_new(self.table, rows, self.key))
        if rows:
            await self._after("after-write", self.after_write, rows)
        new_ids = {row["event_id"] for row in fresh}
        if new_ids:
            # A copy redelivered within this batch is new too: each event id goes once.
            new = {e.event_id: e for e in stored if e.event_id in new_ids}
            await self._after("after-new", self.after_new, list(new.values()))
        await asyncio.gather(*deliveries)
        return len(fresh)

    async def dispatch(self, batch: Sequence[Incoming]) -> list[Awaitable[Any]]:
        """`process` for the stage consumer: nothing is left outstanding once it returns."""
        await self.process(batch)
        return []

    def _decode(self, value: bytes | None) -> Event:
        return self.decoder(value) if self.decoder is not None else decode(value, self.input_model)

    async def _after(self, what: str, hook: Hook | None, items: Sequence[Any]) -> None:
        if hook is None:
            return
        try:
            await hook(items)
        except Exception as exc:
            log.warning("%s: %s step failed: %s", self.name, what, str(exc)[:300])

    async def _dead_letter(
        self, message: Incoming, event: Event | None, error: BaseException
    ) -> Awaitable[Any]:
        letter = dead_letter_for(self.name, message, event, error, attempts=1)
        return await self.dead_letter(letter.trace_id.encode(), encode(letter))

    async def _until_done(self, what: str, step: Callable[[], Awaitable[Any]]) -> Any:
        return await until_done(self.name, what, step, self.settings.backoff)
