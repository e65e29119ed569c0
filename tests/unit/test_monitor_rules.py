"""The monitor's pure parts: the incident rules, the two-sample tests, and its decisions on
windows given as plain numbers (an in-memory MonitorReads; the SQL is tested on chDB)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agents import drift
from agents.monitor import Finding, IncidentBook, Monitor, MonitorSettings, mean_finding, rate_finding
from connectors.ports import AlertState, Moments, StageLoad, Window
from connectors.webhook import slack_payload
from schemas.alerts import Alert, AlertResolved, SloBreached

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def finding(firing: bool, subject: str = "retrieval") -> Finding:
    return Finding("latency_slo", subject, SloBreached, firing, 1.0, 0.5, "m")


def run(book: IncidentBook, states: list[bool], step_s: int = 60) -> list[str]:
    out = []
    for n, firing in enumerate(states):
        for _, _, raised in book.update([finding(firing)], T0 + timedelta(seconds=step_s * n)):
            out.append(f"{n}:{'raise' if raised else 'resolve'}")
    return out


def test_an_incident_is_announced_once_and_resolved_after_enough_passing_windows():
    book = IncidentBook(MonitorSettings(resolve_after=2, cooldown_s=0))
    assert run(book, [False, True, True, True, False, True, False, False]) == ["1:raise", "7:resolve"]


def test_flapping_within_the_cooldown_is_tracked_but_not_announced_again():
    book = IncidentBook(MonitorSettings(resolve_after=1, cooldown_s=600))
    assert run(book, [True, False, True, False, True, False], step_s=60) == ["0:raise", "1:resolve"]
    later = IncidentBook(MonitorSettings(resolve_after=1, cooldown_s=60))
    assert run(later, [True, False, True, False], step_s=120) == [
        "0:raise",
        "1:resolve",
        "2:raise",
        "3:resolve",
    ]


def test_subjects_are_separate_incidents_and_one_alert_id_ties_raise_to_resolve():
    book = IncidentBook(MonitorSettings(resolve_after=1, cooldown_s=0))
    raised = book.update([finding(True, "retrieval"), finding(True, "generation")], T0)
    assert len({alert_id for _, alert_id, _ in raised}) == 2
    resolved = book.update([finding(False, "retrieval")], T0 + timedelta(minutes=1))
    assert resolved[0][1] == raised[0][1] and resolved[0][2] is False


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mmd_separates_shifted_clusters_and_not_samples_of_one():
    rng = np.random.default_rng(7)
    centre, other = rng.normal(size=64), rng.normal(size=64)
    a, b = (unit(centre + 3 * rng.normal(size=(80, 64))) for _ in range(2))
    c = unit(other + 3 * rng.normal(size=(80, 64)))
    assert drift.mmd_test(a, b, 100).p_value > 0.05
    assert drift.mmd_test(a, c, 100).p_value < 0.02
    assert drift.centroid_distance(a, c) > drift.centroid_distance(a, b)


def test_means_and_rates():
    same = drift.compare_means(10.0, 4.0, 100, 10.1, 4.0, 100)
    moved = drift.compare_means(12.0, 4.0, 100, 10.0, 4.0, 100)
    assert same.p_value > 0.5 and moved.p_value < 1e-6 and moved.change == pytest.approx(2.0)
    assert drift.compare_rates(30, 300, 10, 300).p_value < 0.01
    assert drift.compare_rates(10, 300, 10, 300).p_value == pytest.approx(1.0)


def test_slack_payload_has_text_and_blocks():
    alert = AlertResolved(
        trace_id="a1",
        producer="monitor",
        alert_id="a1",
        check="latency_slo",
        subject="retrieval",
        value=1,
        threshold=2,
        window_start=T0,
        window_end=T0,
        message="resolved: p95 fine",
    )
    payload = slack_payload(alert)
    assert "AlertResolved: latency_slo / retrieval" in payload["text"] and payload["blocks"]


class Windows:
    """The monitor's reads as plain numbers: an in-memory MonitorReads."""

    def __init__(
        self,
        loads: list[StageLoad] = (),  # type: ignore[assignment]
        spend: dict[str, float] | None = None,
        ratings: dict[str, Moments] | None = None,
        moments: dict[str, Moments] | None = None,
        states: list[AlertState] = (),  # type: ignore[assignment]
    ) -> None:
        self.loads, self.spend, self.ratings = list(loads), spend or {}, ratings or {}
        self.moments, self.states = moments or {}, list(states)
        self.asked: list[Window] = []

    async def query_vectors(self, window: Window, n: int) -> np.ndarray:
        return np.zeros((0, 4), dtype=np.float32)

    async def stage_moments(self, measure: str, window: Window, reference: Window) -> Moments:
        return self.moments.get(measure, Moments(0, 0, 0, 0, 0, 0))

    async def stage_loads(self, window: Window) -> list[StageLoad]:
        self.asked.append(window)
        return self.loads

    async def spend_by_tenant(self, day_of: datetime) -> dict[str, float]:
        return self.spend

    async def rating_moments(self, window: Window, reference: Window) -> dict[str, Moments]:
        return self.ratings

    async def alert_states(self) -> list[AlertState]:
        return self.states


def evaluate(data: Windows, settings: MonitorSettings | None = None, n: int = 0) -> list[Alert]:
    published: list[Alert] = []

    async def publish(alert: Alert) -> None:
        published.append(alert)

    monitor = Monitor(data, settings or MonitorSettings(), publish)
    returned = asyncio.run(monitor.run_window(Window(T0, T0 + timedelta(minutes=5))))
    assert returned == published  # the monitor publishes what it raises, and writes nothing
    return published


def test_a_slow_stage_breaches_its_objective_and_a_thin_window_is_skipped():
    slow = StageLoad("retrieval", events=10, errors=0, p95_ms=903.5)
    alerts = evaluate(Windows([slow, StageLoad("generation", 9, 9, 1e6)]))
    assert [(type(a).__name__, a.check, a.subject) for a in alerts] == [
        ("SloBreached", "latency_slo", "retrieval")
    ]
    assert alerts[0].message == "retrieval p95 903.5 ms against an objective of 250 ms (10 events)"
    assert alerts[0].producer == "monitor"


def test_error_rate_budget_and_feedback_drop_from_plain_numbers():
    settings = MonitorSettings(budgets_usd_per_day={"acme": 1.0}, feedback_min_ratings=20)
    data = Windows(
        [StageLoad("generation", 100, 10, 5.0)],
        spend={"acme": 1.5, "beta": 9.0},
        ratings={
            "rag@3": Moments(0.5, 0.25, 30, 0.9, 0.09, 180),
            "rag@4": Moments(0.9, 0.09, 30, 0.9, 0.09, 30),
        },
    )
    found = sorted((a.check, a.subject) for a in evaluate(data, settings))
    assert found == [("budget", "acme"), ("error_rate", "generation"), ("feedback_drop", "rag@3")]


def test_rates_and_means_need_enough_samples_and_a_real_change():
    s = MonitorSettings(min_samples=30)
    moved = Moments(0.45, 0.01, 60, 0.70, 0.01, 300, total=60, ref_total=300, hits=20, ref_hits=0)
    assert [f.firing for f in mean_finding("c", "s", "w", moved, s)] == [True]
    assert [f.firing for f in rate_finding("c", "s", "w", moved, s)] == [True]
    same = Moments(0.70, 0.01, 60, 0.70, 0.01, 300, total=60, ref_total=300, hits=0, ref_hits=0)
    assert [f.firing for f in mean_finding("c", "s", "w", same, s)] == [False]
    thin = Moments(0.45, 0.01, 29, 0.70, 0.01, 300, total=29, ref_total=300)
    assert mean_finding("c", "s", "w", thin, s) == [] and rate_finding("c", "s", "w", thin, s) == []


def test_open_incidents_are_picked_up_from_the_alerts_they_left():
    states = [
        AlertState("a1", "latency_slo", "retrieval", "SloBreached", T0),
        AlertState("a2", "error_rate", "generation", "AlertResolved", T0),
    ]
    monitor = Monitor(Windows(states=states), MonitorSettings())
    asyncio.run(monitor.load())
    assert list(monitor.book.open) == [("latency_slo", "retrieval")]
    assert set(monitor.book.last_alert) == {("latency_slo", "retrieval"), ("error_rate", "generation")}
