"""The monitor over real chDB windows: SLO, error-rate, budget, retrieval, response and
feedback checks, and query-embedding drift on real text embedded by the real ONNX model.
One incident is one alert until it resolves; resolving is an alert event too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents import telemetry
from agents.alerts import alert_row
from agents.monitor import Monitor, MonitorSettings, Window
from connectors.analytics import Analytics
from connectors.clickhouse import AnalyticsStore
from connectors.embedder import OnnxEmbedder
from schemas import Served, StageCompleted
from schemas.alerts import Alert, AlertResolved, BudgetExceeded, DriftDetected
from tests.integration.analytics_fixtures import opened, stage_event, store_settings
from topology.samples import python_reference

# Recent: query vectors older than their 14-day TTL are cleared as they are stored.
T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
WINDOW = 60
SETTINGS = MonitorSettings(window_s=WINDOW, reference_windows=5, min_samples=30, permutations=100)


@pytest.fixture
async def store(chdb_dir: Path) -> AsyncIterator[AnalyticsStore]:
    async for s in opened(store_settings("chdb", chdb_dir)):
        yield s


def window(n: int) -> Window:
    return Window(T0 + timedelta(seconds=WINDOW * n), T0 + timedelta(seconds=WINDOW * (n + 1)))


def event(n: int, i: int, stage: str, latency: float = 10.0, **facts: object) -> StageCompleted:
    """The i-th event of window n: its own trace, half a second after the previous one."""
    start = window(n).start + timedelta(milliseconds=500 * i)
    return stage_event(f"w{n}-{i}", stage, latency, started=start, **facts)  # type: ignore[arg-type]


async def write(store: AnalyticsStore, events: list[StageCompleted]) -> None:
    await Analytics(store).insert_new("telemetry", await telemetry.rows(events, store))


def monitor(store: AnalyticsStore, settings: MonitorSettings = SETTINGS) -> Monitor:
    """A monitor on the store whose alerts are stored as the alerts sink stores them."""
    analytics = Analytics(store)

    async def publish(alert: Alert) -> None:
        await analytics.insert_new("alerts", [alert_row(alert)], key="alert_id")

    return Monitor(analytics, settings, publish)


def kinds(alerts: list) -> list[tuple[str, str, str]]:
    return sorted((type(a).__name__, a.check, a.subject) for a in alerts)


async def test_an_slo_breach_is_one_alert_until_it_resolves(store):
    watch = monitor(store)
    slow = {1, 2, 3}  # windows where retrieval is slow and generation fails
    for n in range(7):
        await write(
            store,
            [event(n, i, "retrieval", latency=400.0 if n in slow else 20.0) for i in range(40)]
            + [
                event(n, i, "generation", status="error" if n in slow and i % 4 == 0 else "ok")
                for i in range(40)
            ],
        )
    raised = {n: kinds(await watch.run_window(window(n))) for n in range(7)}
    assert raised[0] == []
    assert raised[1] == [
        ("SloBreached", "error_rate", "generation"),
        ("SloBreached", "latency_slo", "retrieval"),
    ]
    assert raised[2] == raised[3] == []  # still the same incidents
    assert raised[4] == []  # one passing window is not enough (resolve_after=2)
    assert raised[5] == [
        ("AlertResolved", "error_rate", "generation"),
        ("AlertResolved", "latency_slo", "retrieval"),
    ]
    listed = (await Analytics(store).alerts(timedelta(days=3650))).dicts()
    assert sorted((r["check_name"], r["resolved"]) for r in listed) == [
        ("error_rate", True),
        ("latency_slo", True),
    ]


async def test_a_tenant_over_its_daily_budget_is_alerted(store):
    settings = SETTINGS.model_copy(
        update={"budgets_usd_per_day": {"acme": 0.05}, "default_budget_usd_per_day": 10.0}
    )
    spend = [
        event(0, i, "generation", tenant=t, model="gpt", cost_usd=0.01)
        for i, t in enumerate(["acme"] * 6 + ["beta"] * 6)
    ]
    await write(store, spend)
    alerts = await monitor(store, settings).run_window(window(0))
    assert kinds(alerts) == [("BudgetExceeded", "budget", "acme")]
    assert isinstance(alerts[0], BudgetExceeded) and alerts[0].value == pytest.approx(0.06)


async def test_retrieval_and_answers_drifting_are_detected_and_a_stable_stream_is_not(store):
    watch = monitor(store)
    for n in range(7):
        shifted = n == 6
        await write(
            store,
            [
                event(
                    n,
                    i,
                    "retrieval",
                    served=Served(prompt="rag", version="1", retrieval_mode="hybrid"),
                    passage_ids=["a"] if not (shifted and i % 3 == 0) else [],
                    # Hybrid: the passage's score is a fused rank and steady; the dense
                    # leg's top similarity is what drifts.
                    passage_scores=[2 / 11] if not (shifted and i % 3 == 0) else [],
                    dense_scores=[(0.45 if shifted else 0.70) + (i % 10) / 100]
                    if not (shifted and i % 3 == 0)
                    else [],
                )
                for i in range(60)
            ]
            + [
                event(
                    n,
                    i,
                    "generation",
                    answer="x" * ((80 if shifted else 300) + i % 20),
                    citations=["a"] if i % 5 else [],
                )
                for i in range(60)
            ],
        )
    for n in range(5, 6):  # a stable window after a stable reference: nothing
        assert await watch.run_window(window(n)) == []
    alerts = await watch.run_window(window(6))
    assert kinds(alerts) == [
        ("DriftDetected", "answer_length", "generation"),
        ("DriftDetected", "retrieval_empty", "retrieval"),
        ("DriftDetected", "retrieval_top1", "retrieval"),
    ]
    assert all(a.p_value is not None and a.p_value < 0.01 for a in alerts)


async def test_a_feedback_drop_on_one_prompt_version_is_detected(store):
    rows = []
    for n in range(7):
        for i in range(30):
            good = i % 10 != 0 if n < 6 else i % 2 == 0  # 90% thumbs up, then 50%
            rows.append(
                {
                    "event_id": f"f{n}-{i}",
                    "trace_id": f"w{n}-{i}",
                    "tenant": "acme",
                    "occurred_at": window(n).start + timedelta(seconds=i),
                    "name": "user",
                    "data_type": "BOOLEAN",
                    "score": float(good),
                    "category": "",
                    "comment": "",
                    "user": "",
                    "trace_seen": True,
                    "template_id": "rag",
                    "template_version": "3",
                    "model": "m",
                    "revision": 0,
                }
            )
    await Analytics(store).insert_new("feedback", rows)
    alerts = await monitor(store).run_window(window(6))
    assert kinds(alerts) == [("DriftDetected", "feedback_drop", "rag@3")]
    assert alerts[0].value == pytest.approx(0.5) and alerts[0].threshold == pytest.approx(0.9)


def questions(titles: set[str]) -> list[str]:
    """Real text: sentences from the sample corpus's topics, as queries."""
    out = []
    for doc in python_reference():
        if doc["title"] in titles:
            words = doc["text"].split()
            out += [" ".join(words[i : i + 14]) for i in range(0, min(len(words), 14 * 40), 14)]
    return out


async def test_query_embeddings_drifting_to_other_topics_are_detected(store, embedder: OnnxEmbedder):
    flow = questions({"for", "while", "if", "try", "with", "break", "continue", "return", "raise", "pass"})
    classes = questions({"class", "types", "specialnames", "customization"})
    reference, stable = flow[::2], flow[1::2]  # unseen sentences of the same topics
    assert len(reference) >= 60 and len(stable) >= 40 and len(classes) >= 40

    async def embed(n: int, texts: list[str]) -> None:
        vectors = embedder.embed(texts)
        await write(
            store,
            [
                event(n, i, "embedding", model=embedder.name, query_vector=v.tolist())
                for i, v in enumerate(vectors)
            ],
        )

    for n in range(5):  # the reference: control-flow questions spread over five windows
        await embed(n, reference[n::5])
    await embed(5, stable[:40])
    await embed(6, classes[:40])  # the topic mix moved
    watch = monitor(store)
    assert [a for a in await watch.run_window(window(5)) if a.check == "embedding_drift"] == []
    drift = [a for a in await watch.run_window(window(6)) if a.check == "embedding_drift"]
    assert len(drift) == 1 and isinstance(drift[0], DriftDetected)
    assert drift[0].p_value < 0.01 and drift[0].value > SETTINGS.min_centroid_distance


async def test_open_incidents_survive_a_restart(store):
    for n in range(2):
        await write(store, [event(n, i, "retrieval", latency=900.0) for i in range(20)])
    raised = await monitor(store).run_window(window(0))
    assert kinds(raised) == [("SloBreached", "latency_slo", "retrieval")]
    restarted = monitor(store)
    await restarted.load()
    assert await restarted.run_window(window(1)) == []  # still the same incident, not a new one
    for n in (2, 3):  # fast again: resolved after two passing windows, under the same alert id
        await write(store, [event(n, i, "retrieval", latency=20.0) for i in range(20)])
    assert await restarted.run_window(window(2)) == []
    resolved = await restarted.run_window(window(3))
    assert [type(a) for a in resolved] == [AlertResolved] and resolved[0].alert_id == raised[0].alert_id
