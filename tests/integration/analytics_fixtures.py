"""Analytics stores for tests: chDB always (one directory per test process: chDB opens
one path per process, so each test gets its own database in it), a ClickHouse server
when LLMOPS_CLICKHOUSE__URL names one."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from connectors.clickhouse import AnalyticsStore, ClickHouseSettings, open_store
from connectors.migrations import apply
from schemas import StageCompleted, utc_now

SERVER_URL = os.environ.get("LLMOPS_CLICKHOUSE__URL")
SKIP_SERVER = (
    "ClickHouse server tier skipped: LLMOPS_CLICKHOUSE__URL is not set (no server can be "
    "installed on this machine; `docker compose -f docker/compose.yaml up clickhouse` and "
    "LLMOPS_CLICKHOUSE__URL=http://127.0.0.1:8123 run these tests against one)"
)


def store_settings(backend: str, chdb_dir: Path) -> ClickHouseSettings:
    database = f"test_{uuid.uuid4().hex[:12]}"
    if backend == "server":
        if not SERVER_URL:
            pytest.skip(SKIP_SERVER)
        return ClickHouseSettings(url=SERVER_URL, database=database)
    return ClickHouseSettings(path=chdb_dir, database=database)


async def opened(settings: ClickHouseSettings) -> AsyncIterator[AnalyticsStore]:
    store = open_store(settings)
    await store.open()
    await apply(store, settings.ddl_dir)
    try:
        yield store
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {settings.database}")
        await store.close()


def stage_event(
    trace: str,
    stage: str,
    latency_ms: float,
    *,
    tenant: str = "acme",
    started: datetime | None = None,
    status: str = "ok",
    **facts: object,
) -> StageCompleted:
    started = started or utc_now() - timedelta(seconds=5)
    return StageCompleted(
        trace_id=trace,
        tenant=tenant,
        producer=stage,
        stage=stage,
        started_at=started,
        ended_at=started + timedelta(milliseconds=latency_ms),
        latency_ms=latency_ms,
        status=status,
        **facts,  # type: ignore[arg-type]
    )
