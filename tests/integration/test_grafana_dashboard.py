"""The Grafana dashboard's SQL (docker/grafana/dashboards/llmops.json) runs on chDB with
the project's DDL, its macros expanded as the ClickHouse data source plugin expands them,
and finds the rows written for it: a changed table or column breaks this test, not a
dashboard nobody looks at."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from agents import telemetry
from agents.alerts import alert_row
from connectors.analytics import Analytics
from connectors.clickhouse import AnalyticsStore
from connectors.ports import PartitionLag
from schemas import utc_now
from schemas.alerts import LagBreached
from tests.integration.analytics_fixtures import opened, stage_event, store_settings

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dashboards" / "llmops.json"


def expand(sql: str, since_s: int = 3600) -> str:
    """grafana-clickhouse-datasource's macros, for the last `since_s` seconds."""
    now = int(utc_now().timestamp())
    start, end = f"toDateTime({now - since_s})", f"toDateTime({now + 60})"
    sql = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 >= {start} AND \1 <= {end}", sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(toDateTime(\1), INTERVAL 60 second)", sql)
    sql = sql.replace("$__fromTime", start).replace("$__toTime", end)
    assert "$__" not in sql, sql
    return sql


@pytest.fixture
async def store(chdb_dir: Path) -> AsyncIterator[AnalyticsStore]:
    async for opened_store in opened(store_settings("chdb", chdb_dir)):
        yield opened_store


async def test_every_panel_query_runs_and_finds_its_rows(store: AnalyticsStore):
    data = Analytics(store)
    events = [
        stage_event("t1", "prompting", 3.0),
        stage_event("t1", "generation", 900.0, model="m", input_tokens=10, output_tokens=5, cost_usd=0.01),
    ]
    await data.insert_new("telemetry", await telemetry.rows(events, store))
    await data.store_lag(utc_now(), [PartitionLag("prompting", "g", "q", 0, 10, 4, 6)])
    now = utc_now()
    alert = LagBreached(
        trace_id="a1",
        producer="lag",
        alert_id="a1",
        check="consumer_lag",
        subject="prompting",
        value=6,
        threshold=60,
        window_start=now - timedelta(seconds=10),
        window_end=now,
        message="prompting is 6 messages behind",
    )
    await data.insert_new("alerts", [alert_row(alert)], key="alert_id")
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert {p["title"] for p in panels} >= {"Alerts", "Consumer lag per stage (messages)"}
    for panel in panels:
        [target] = panel["targets"]
        rows = await store.query(expand(target["rawSql"]))
        if panel["title"] != "Mean user rating per prompt version":  # no ratings written
            assert rows.rows, panel["title"]
