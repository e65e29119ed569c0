"""The monitor's pure parts: the incident rules and the two-sample tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agents import drift
from agents.monitor import Finding, IncidentBook, MonitorSettings, slack_payload
from schemas.alerts import AlertResolved, SloBreached

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
