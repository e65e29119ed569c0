"""The sink's contract on an in-memory store: rows written once however often a batch is
delivered, malformed messages dead-lettered, a failing store retried with backoff, and
the after-write and after-new steps told what they need (new alerts announced once)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agents import alerts
from agents.runtime import Backoff, Incoming
from agents.sink import SinkRunner, SinkSettings
from schemas import DeadLetter, decode, encode
from schemas.alerts import Alert, SloBreached
from schemas.errors import TransientError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Tables:
    """An in-memory SinkWrites: rows by table, deduplicated by event id (within a batch
    too, as the analytics store's insert_new)."""

    def __init__(self, failures: int = 0) -> None:
        self.rows: dict[str, list[Mapping[str, Any]]] = {}
        self.failures = failures

    async def insert_new(
        self, table: str, rows: Sequence[Mapping[str, Any]], key: str = "trace_id"
    ) -> list[Mapping[str, Any]]:
        if self.failures:
            self.failures -= 1
            raise TransientError("the store is away")
        held = {r["event_id"] for r in self.rows.get(table, [])}
        unique = {r["event_id"]: r for r in rows}.values()
        fresh = [r for r in unique if r["event_id"] not in held and r[key]]
        self.rows.setdefault(table, []).extend(fresh)
        return fresh


def alert(n: int) -> SloBreached:
    return SloBreached(
        trace_id=f"a{n}",
        producer="monitor",
        alert_id=f"a{n}",
        check="latency_slo",
        subject="retrieval",
        value=900.0,
        threshold=250.0,
        window_start=T0,
        window_end=T0,
        message="slow",
    )


def alerts_sink(data: Tables) -> tuple[SinkRunner, list[DeadLetter], list[int], list[str]]:
    letters: list[DeadLetter] = []
    written: list[int] = []
    announced: list[str] = []

    async def dead_letter(key: bytes, value: bytes) -> Awaitable[Any]:
        letters.append(decode(value, DeadLetter))

        async def delivered() -> None:
            return None

        return delivered()

    async def after_write(rows: Sequence[Any]) -> None:
        written.append(len(rows))

    async def after_new(new: Sequence[Alert]) -> None:
        announced.extend(a.alert_id for a in new)

    async def rows(events: Sequence[Alert]) -> list[dict[str, Any]]:
        return await alerts.rows(events, data)

    runner = SinkRunner(
        alerts.STAGE,
        "alerts",
        Alert,
        rows,
        data,
        dead_letter,
        SinkSettings(backoff=Backoff(first_s=0.001, max_s=0.001)),
        after_write=after_write,
        after_new=after_new,
        key="alert_id",
        decoder=alerts.decode_alert,
    )
    return runner, letters, written, announced


def batch(*values: bytes) -> list[Incoming]:
    return [Incoming("alerts", 0, i, None, v) for i, v in enumerate(values)]


async def test_a_redelivered_batch_writes_and_announces_nothing_twice():
    data = Tables()
    runner, letters, written, announced = alerts_sink(data)
    messages = batch(encode(alert(1)), b"not json", encode(alert(2)))
    assert await runner.process(messages) == 2
    assert await runner.process(messages) == 0  # delivered again after a crash
    assert [r["alert_id"] for r in data.rows["alerts"]] == ["a1", "a2"]
    assert announced == ["a1", "a2"]
    assert written == [2, 2]  # the after-write step sees every stored batch
    assert [letter.stage for letter in letters] == ["alerts-sink", "alerts-sink"]


async def test_a_failing_store_is_retried_until_it_takes_the_rows():
    data = Tables(failures=3)
    runner, letters, _, announced = alerts_sink(data)
    assert await runner.process(batch(encode(alert(1)))) == 1
    assert data.failures == 0 and announced == ["a1"] and letters == []


def test_the_flat_backoff_settings_of_earlier_versions_still_apply():
    assert SinkSettings(backoff_s=0.2, backoff_max_s=3).backoff == Backoff(first_s=0.2, max_s=3)
    assert SinkSettings().backoff == Backoff(first_s=0.5, max_s=5.0)
    assert [Backoff(first_s=0.5, max_s=5).delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 4, 5]


async def test_a_copy_redelivered_within_one_batch_is_announced_once():
    # Both copies are new to the store; the store writes one row, and the alert is
    # announced once (a webhook would post it twice otherwise).
    data = Tables()
    runner, _, _, announced = alerts_sink(data)
    first = encode(alert(1))
    assert await runner.process(batch(first, first, encode(alert(2)))) == 2
    assert announced == ["a1", "a2"]
