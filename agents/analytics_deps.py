"""What the analytics process's sinks and leader timers may use, and the small steps
they run (the graph names these, as it names the stage handlers). Built by the
composition root (topology/analytics_app.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents import alerts, feedback, telemetry
from agents.experiments import ExperimentGuard
from agents.feedback import FeedbackSettings, Linker
from agents.lag import LagWatch
from agents.monitor import Monitor
from agents.telemetry import TextMode
from connectors.ports import AnalyticsPort, TelemetryMetrics
from schemas.alerts import Alert
from schemas.feedback import FeedbackReceived
from schemas.telemetry import StageCompleted


@dataclass(frozen=True)
class AnalyticsDeps:
    data: AnalyticsPort
    feedback: FeedbackSettings
    text: TextMode
    linker: Linker
    monitor: Monitor
    guard: ExperimentGuard
    # Delivers one stored alert to people (the webhook); False when it could not.
    deliver: Callable[[Alert], Awaitable[bool]]
    lag: LagWatch | None = None
    metrics: TelemetryMetrics | None = None


# --- the sinks' row builders and hooks (each takes the deps first) ----------------------


async def telemetry_rows(deps: AnalyticsDeps, events: Sequence[StageCompleted]) -> list[dict[str, Any]]:
    return await telemetry.rows(events, deps.data)


async def feedback_rows(
    deps: AnalyticsDeps, events: Sequence[FeedbackReceived]
) -> list[dict[str, Any] | BaseException]:
    return await feedback.rows(events, deps.data, deps.feedback, deps.text)


async def alert_rows(deps: AnalyticsDeps, events: Sequence[Alert]) -> list[dict[str, Any]]:
    return await alerts.rows(events, deps.data)


async def link_arrived_traces(deps: AnalyticsDeps, rows: Sequence[Mapping[str, Any]]) -> None:
    await deps.linker.telemetry_stored(rows)


async def record_metrics(deps: AnalyticsDeps, stored: Sequence[StageCompleted]) -> None:
    if deps.metrics is not None:
        deps.metrics.observe(stored)


async def link_new_feedback(deps: AnalyticsDeps, rows: Sequence[Mapping[str, Any]]) -> None:
    await deps.linker.feedback_stored(rows)


async def deliver_alerts(deps: AnalyticsDeps, stored: Sequence[Alert]) -> None:
    for alert in stored:
        await deps.deliver(alert)


# --- the leader timers ---------------------------------------------------------------------


async def sweep_feedback_links(deps: AnalyticsDeps) -> None:
    await deps.linker.link(sweep=True)


async def evaluate_window(deps: AnalyticsDeps) -> None:
    await deps.monitor.tick()


async def guard_experiments(deps: AnalyticsDeps) -> None:
    await deps.guard.check()


async def sample_lag(deps: AnalyticsDeps) -> None:
    if deps.lag is not None:
        await deps.lag.sample()
