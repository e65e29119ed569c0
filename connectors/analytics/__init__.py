"""Reading the analytics store: named queries with bound parameters, and `query` for
analysts (one read-only SELECT, parameters bound by the engine).

Who reads what: with a ClickHouse server, everyone reads it directly. With chDB, the
directory opens in one process only, so while the stack runs, readers ask the analytics
process's query service (`ServiceStore`); when it is not running, they open the
directory themselves (`Analytics.connect` picks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connectors.analytics.common import PROBE_TENANT, when
from connectors.analytics.console import ConsoleQueries
from connectors.analytics.lag import LagQueries
from connectors.analytics.monitor import MonitorQueries
from connectors.analytics.reports import ReportQueries
from connectors.analytics.service import ServiceSettings, ServiceStore, read_only
from connectors.analytics.writes import StoreWrites
from connectors.clickhouse import (
    AnalyticsStore,
    ChdbStore,
    ClickHouseSettings,
    Rows,
    ServerStore,
    StoreUnavailable,
)

__all__ = ["PROBE_TENANT", "Analytics", "ServiceSettings", "ServiceStore", "read_only", "when"]


class Analytics(ReportQueries, ConsoleQueries, MonitorQueries, StoreWrites, LagQueries):
    """Every named query of the analytics store, by concern: reports (`reports.py`), the
    monitor's windows (`monitor.py`), the web console's (`console.py`), the sinks' writes
    and feedback links (`writes.py`), consumer lag samples (`lag.py`)."""

    def __init__(self, store: AnalyticsStore) -> None:
        self.store = store

    @classmethod
    async def connect(cls, clickhouse: ClickHouseSettings, service: ServiceSettings) -> Analytics:
        """The server when one is configured; else the running stack's query service;
        else the chDB directory itself."""
        store: AnalyticsStore
        if clickhouse.url:
            store = ServerStore(clickhouse)
            await store.open()
            return cls(store)
        remote = ServiceStore(service)
        try:
            await remote.health()
            return cls(remote)
        except StoreUnavailable:
            await remote.close()
        local = ChdbStore(clickhouse)
        try:
            await local.open()
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"{exc}. No analytics service answered at {service.url} either: "
                "is the stack (`llmops up`) or `llmops analytics` running with other settings?"
            ) from exc
        return cls(local)

    async def close(self) -> None:
        await self.store.close()

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Rows:
        return await self.store.query(read_only(sql), parameters)
