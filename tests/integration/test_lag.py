"""Consumer lag on the embedded stack (Tansu): with the worker stopped, 200 questions
show as the prompting stage's lag in ClickHouse and raise one LagBreached alert, which
the alerts sink stores and posts to the webhook; once the worker is back, every question
is answered, the lag clears and the alert resolves."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connectors.analytics import Analytics
from connectors.clickhouse import AnalyticsStore
from connectors.client import Client
from connectors.lag import KafkaOffsets
from connectors.ports import PartitionLag
from schemas import utc_now
from tests.integration.analytics_fixtures import opened, store_settings
from tests.integration.conftest import stack_settings
from tests.integration.test_pipeline import tenant
from topology.analytics_app import watched
from topology.settings import Settings
from topology.stack import LocalStack, free_port

QUESTIONS = 200
RECENT = timedelta(minutes=10)


@pytest.fixture
async def store(chdb_dir: Path) -> AsyncIterator[AnalyticsStore]:
    async for opened_store in opened(store_settings("chdb", chdb_dir)):
        yield opened_store


async def test_the_report_shows_each_stages_last_sample_and_its_peak(store: AnalyticsStore):
    data = Analytics(store)
    now = utc_now()
    for seconds, lags in ((-20, (5, 0)), (-10, (40, 2)), (0, (7, 1))):
        await data.store_lag(
            now + timedelta(seconds=seconds),
            [PartitionLag("prompting", "g", "q", p, 100, 100 - lag, lag) for p, lag in enumerate(lags)]
            + [PartitionLag("telemetry-sink", "a", "t", 0, 9, 9, 0)],
        )
    rows = {r["stage"]: r for r in (await data.lag(timedelta(minutes=1))).dicts()}
    prompting = rows["prompting"]
    assert (prompting["partitions"], prompting["total_lag"], prompting["max_lag"]) == (2, 8, 7)
    assert prompting["peak_lag"] == 42 and rows["telemetry-sink"]["total_lag"] == 0
    [recent] = [r for r in (await data.lag(timedelta(seconds=5))).dicts() if r["stage"] == "prompting"]
    assert recent["peak_lag"] == 8  # the window holds the last sample only


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.5)


async def webhook() -> tuple[web.AppRunner, str, list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook", received


async def test_a_stopped_worker_shows_as_lag_and_one_alert_and_both_clear_when_it_is_back(
    base_settings: Settings, tmp_path: Path
):
    runner, url, posted = await webhook()
    env = {
        # Sample every second; alert on more than 50 messages not read for 2 s of input (the
        # alert needs the window to pass the moment the questions were sent: short here).
        "LLMOPS_LAG__EVERY_S": "1",
        "LLMOPS_LAG__MIN_LAG": "50",
        "LLMOPS_LAG__MAX_BEHIND_S": "2",
        "LLMOPS_LAG__RATE_WINDOW_S": "2",
        "LLMOPS_WEBHOOK__URL": url,
    }
    owner = tenant("lag")
    try:
        stack = LocalStack(stack_settings(base_settings, tmp_path), worker=False, env=env)
        try:
            # (in threads: the stack's start and stop run event loops of their own)
            await asyncio.to_thread(stack.start)
            # Run the worker once so its group has committed offsets, then stop it.
            await asyncio.to_thread(stack.start_worker)
            await asyncio.to_thread(stack.stop_process, "worker")
            analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
            try:
                await check_lag_and_alert(stack, analytics, owner, posted)
            finally:
                await analytics.close()
        finally:
            await asyncio.to_thread(stack.stop)
    finally:
        await runner.cleanup()


def stage_lag(rows: Any, stage: str) -> dict[str, Any] | None:
    return next((r for r in rows.dicts() if r["stage"] == stage), None)


async def lag_alert(analytics: Analytics) -> dict[str, Any] | None:
    rows = (await analytics.alerts(RECENT)).dicts()
    return next((r for r in rows if r["check_name"] == "consumer_lag" and r["subject"] == "prompting"), None)


async def check_lag_and_alert(
    stack: LocalStack, analytics: Analytics, owner: str, posted: list[dict[str, Any]]
) -> None:
    async with Client(stack.settings) as client:
        asks = [
            asyncio.ensure_future(client.ask(f"What is item {i}?", tenant=owner, timeout=180))
            for i in range(QUESTIONS)
        ]
        try:
            await lag_then_clear(stack, analytics, asks, posted)
        finally:
            for ask in asks:
                ask.cancel()
            await asyncio.gather(*asks, return_exceptions=True)


async def lag_then_clear(
    stack: LocalStack, analytics: Analytics, asks: list[asyncio.Future[Any]], posted: list[dict[str, Any]]
) -> None:
    await asyncio.sleep(0.5)  # the client publishes them all within this
    sent = time.monotonic()

    async def lagging() -> dict[str, Any] | None:
        row = stage_lag(await analytics.lag(RECENT), "prompting")
        return row if row is not None and row["total_lag"] >= QUESTIONS else None

    behind = await until("prompting's lag in ClickHouse", lagging, 30)
    alert = await until("a LagBreached alert for prompting", lambda: lag_alert(analytics), 30)
    detected_s = time.monotonic() - sent
    assert alert["kind"] == "LagBreached" and not alert["resolved"], alert
    assert "prompting is" in alert["message"] and "messages behind" in alert["message"]
    # A readiness probe sent as the worker stopped may also wait: a few, not hundreds.
    assert QUESTIONS <= behind["total_lag"] <= QUESTIONS + 5, behind
    assert behind["partitions"] == stack.settings.kafka.partitions

    async def delivered() -> list[dict[str, Any]]:
        return [p for p in posted if "prompting is" in str(p)]

    await until("the webhook post of the lag alert", delivered, 30)

    restarted = time.monotonic()
    await asyncio.to_thread(stack.start_worker)
    answers = await asyncio.gather(*asks)
    assert len({a.trace_id for a in answers}) == QUESTIONS

    async def cleared() -> bool:
        rows = await analytics.lag(timedelta(seconds=3))
        return bool(rows.rows) and all(r["total_lag"] == 0 for r in rows.dicts())

    await until("every stage's lag back to 0", cleared, 60)
    resolved = await until("the lag alert resolved", lambda: resolved_alert(analytics), 60)
    assert resolved["alert_id"] == alert["alert_id"]
    cleared_s = time.monotonic() - restarted
    cost = await sampling_cost(stack.settings)
    print(
        f"lag: {behind['total_lag']} behind on {behind['partitions']} partitions; LagBreached stored "
        f"{detected_s:.1f}s after the questions were sent; after the restart the lag cleared and the "
        f"alert resolved in {cleared_s:.1f}s; one sample of {cost['partitions']} partitions read in "
        f"{cost['median_ms']:.1f} ms median (CPU {cost['cpu_ms']:.1f} ms)"
    )


async def resolved_alert(analytics: Analytics) -> dict[str, Any] | None:
    alert = await lag_alert(analytics)
    return alert if alert is not None and alert["resolved"] else None


async def sampling_cost(settings: Settings) -> dict[str, float]:
    """What one sample costs the analytics process: the broker reads, timed here with the
    same reader (the store's insert of a few dozen rows comes on top)."""
    reader = KafkaOffsets(settings.kafka, client_id="lag-cost", read_tail=settings.lag.read_tail)
    groups: dict[str, list[str]] = {}
    for w in watched(settings):
        groups.setdefault(w.group, []).append(w.topic)
    walls, cpus, found = [], [], []
    try:
        for _ in range(10):
            wall, cpu = time.perf_counter(), time.process_time()
            found = await reader.offsets(groups)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    finally:
        await reader.close()
    return {
        "partitions": len(found),
        "median_ms": 1000 * statistics.median(walls),
        "cpu_ms": 1000 * statistics.median(cpus),
    }
