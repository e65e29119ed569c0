"""The HTML report as a person sees it: rendered by headless Chromium (Debian's
`chromium`), with every chart drawn. The text report and the page come from the same
named queries over real chDB."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from agents import feedback, telemetry
from agents.feedback import FeedbackSettings
from connectors.analytics import Analytics
from connectors.clickhouse import AnalyticsStore
from schemas import FeedbackReceived, Served, utc_now
from tests.integration.analytics_fixtures import opened, stage_event, store_settings
from topology import report
from topology.charts import PALETTE

STAGES = ("prompting", "embedding", "retrieval", "generation")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("LLMOPS_REQUIRE_CHROMIUM") == "1":
            pytest.fail("LLMOPS_REQUIRE_CHROMIUM=1 but chromium is not installed")
        pytest.skip("HTML rendering test skipped: no chromium (apt-get install chromium)")
    return found


@pytest.fixture
async def store(chdb_dir: Path) -> AsyncIterator[AnalyticsStore]:
    async for s in opened(store_settings("chdb", chdb_dir)):
        yield s


async def fill(store: AnalyticsStore) -> None:
    """Thirty minutes of traffic from two tenants, with feedback on two prompt versions."""
    now = utc_now()
    events, ratings = [], []
    for n in range(120):
        start = now - timedelta(minutes=30) + timedelta(seconds=15 * n)
        tenant, version = ("acme", "1") if n % 3 else ("beta", "2")
        for i, stage in enumerate(STAGES):
            began = start + timedelta(milliseconds=50 * i)
            latency = (5 + i * 10 + n % 7) * (1 + (n > 80))
            generation = stage == "generation"
            events.append(
                stage_event(
                    f"t{n}",
                    stage,
                    latency,
                    tenant=tenant,
                    started=began,
                    served=Served(prompt="rag", version=version),
                    model="gpt" if generation else "",
                    input_tokens=300 if generation else 0,
                    output_tokens=40 if generation else 0,
                    cost_usd=0.0004 if generation else 0.0,
                )
            )
        ratings.append(
            FeedbackReceived(
                trace_id=f"t{n}",
                tenant=tenant,
                producer="test",
                data_type="BOOLEAN",
                value=n % 4 != 0,
                occurred_at=start + timedelta(seconds=5),
            )
        )
    analytics = Analytics(store)
    await analytics.insert_new("telemetry", await telemetry.rows(events, store))
    built = await feedback.rows(ratings, analytics, FeedbackSettings())
    await analytics.insert_new("feedback", [r for r in built if isinstance(r, dict)])


async def test_the_page_renders_every_chart_in_chromium(store, tmp_path):
    browser = chromium()
    await fill(store)
    data = await report.collect(Analytics(store), timedelta(hours=1))

    printed = report.text(data)
    for stage in STAGES:
        assert stage in printed
    assert "acme" in printed and "beta" in printed and "rag@1" in printed and "rag@2" in printed

    page = tmp_path / "report.html"
    page.write_text(report.html(data))
    html = page.read_text()
    # Self-contained: nothing to fetch, nothing to run.
    assert not any(marker in html for marker in ("<script", "src=", "href=", "url(", "@import"))

    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for chart in ("latency", "cost", "tokens", "feedback"):
        assert f'<figure class="chart" id="{chart}">' in dom, f"chart {chart} is missing or empty"
    assert dom.count('class="series"') == len(STAGES) + 2  # 4 stage lines, 2 prompt versions

    shot = Path(os.environ.get("LLMOPS_REPORT_SCREENSHOT", tmp_path / "report.png"))
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1600,1200",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    colors = {color: count for count, color in Image.open(shot).convert("RGB").getcolors(1 << 24) or []}
    painted = {c: colors.get(tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)), 0) for c in PALETTE[:4]}
    # Each of the first four series colours covers a visible area (lines, dots, bars).
    assert all(count > 150 for count in painted.values()), painted
