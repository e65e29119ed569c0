"""Judging experiment arms (the one-sided Welch test of non-inferiority with a margin), the
guard's decision on arm statistics given as plain rows, and alert events as the alerts sink
decodes them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from agents.alerts import alert_row, decode_alert
from agents.experiments import ArmStats, ExperimentGuard, judge
from agents.routing import Registry
from connectors.ports import Rows
from schemas import encode
from schemas.alerts import Alert, ExperimentRolledBack
from schemas.errors import InvalidEvent
from schemas.prompts import Arm, Experiment, LabelMoved, PromptVersion, record_key

EXP = Experiment(
    name="e",
    arms=[Arm(label="production", weight=90), Arm(label="canary", weight=10)],
    margin=0.05,
    min_samples=50,
)


def bernoulli(arm: str, n: int, p: float) -> ArmStats:
    return ArmStats(arm, queries=n, ratings=n, mean=p, variance=p * (1 - p) * n / (n - 1))


def verdict(control: ArmStats, canary: ArmStats):
    found = judge(EXP, [control, canary])
    assert found[0].state == "control"
    return found[1]


def test_a_clearly_worse_canary_is_worse():
    v = verdict(bernoulli("production", 400, 0.8), bernoulli("canary", 100, 0.4))
    assert v.state == "worse" and v.p_worse is not None and v.p_worse < 0.05 and "canary" not in v.message


def test_an_equal_canary_with_enough_ratings_is_not_worse():
    assert verdict(bernoulli("production", 2000, 0.8), bernoulli("canary", 2000, 0.8)).state == "not_worse"


def test_a_small_drop_inside_the_margin_is_never_worse():
    v = verdict(bernoulli("production", 5000, 0.80), bernoulli("canary", 5000, 0.77))
    assert v.state != "worse" and abs(v.difference - 0.03) < 1e-9


def test_too_few_ratings_collects_and_a_close_call_is_inconclusive():
    assert verdict(bernoulli("production", 400, 0.8), bernoulli("canary", 49, 0.1)).state == "collecting"
    assert verdict(bernoulli("production", 60, 0.8), bernoulli("canary", 60, 0.72)).state == "inconclusive"


def test_the_interval_narrows_with_ratings():
    wide, narrow = bernoulli("a", 50, 0.5).interval(), bernoulli("a", 5000, 0.5).interval()
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


class ArmRows:
    """The guard's read as plain rows: an in-memory ExperimentReads."""

    def __init__(self, arms: list[ArmStats]) -> None:
        self.arms = arms

    async def experiment_arms(self, experiment: str, since: datetime) -> Rows:
        columns = ["arm", "queries", "failed", "p95_ms", "cost_per_query", "ratings", "mean", "variance"]
        rows = [[getattr(a, c) for c in columns] for a in self.arms]
        return Rows(columns, ["String"] * len(columns), rows)


def test_the_guard_rolls_a_worse_arm_back_and_only_publishes_its_alert():
    v1 = PromptVersion(name="rag", system="s", template="$context $question")
    v2 = PromptVersion(name="rag", system="s2", template="$context $question")
    experiment = EXP.model_copy(update={"auto_rollback": True})
    records = [
        v1,
        v2,
        LabelMoved(label="production", version=v1.version),
        LabelMoved(label="canary", version=v2.version),
        experiment,
    ]
    registry = Registry({record_key(r).encode(): r.model_dump_json().encode() for r in records})
    written: list = []
    published: list[Alert] = []

    async def read() -> Registry:
        return registry

    async def write(new: list) -> None:
        written.extend(new)

    async def publish(alert: Alert) -> None:
        published.append(alert)

    data = ArmRows([bernoulli("production", 400, 0.8), bernoulli("canary", 100, 0.4)])
    alerts = asyncio.run(ExperimentGuard(data, read, write, publish).check())
    assert alerts == published and [type(a) for a in alerts] == [ExperimentRolledBack]
    assert alerts[0].producer == "experiment-guard" and alerts[0].subject == "e/canary"
    moved, ended = written
    assert isinstance(moved, LabelMoved) and (moved.label, moved.version) == ("canary", v1.version)
    assert isinstance(ended, Experiment) and ended.status == "rolled_back"


def test_alert_events_decode_as_their_own_kind_and_anything_else_is_refused():
    alert = ExperimentRolledBack(
        trace_id="a",
        producer="experiment-guard",
        alert_id="a",
        check="experiment_rollback",
        subject="e/canary",
        value=0.4,
        threshold=0.05,
        window_start=datetime(2026, 1, 1, tzinfo=UTC),
        window_end=datetime(2026, 1, 1, tzinfo=UTC),
        message="m",
    )
    assert decode_alert(encode(alert)) == alert
    assert alert_row(decode_alert(encode(alert)))["event_type"] == "ExperimentRolledBack"
    for bad in (b"", b"[]", b'{"event_type": "QueryReceived"}', b'{"event_type": "SloBreached"}'):
        with pytest.raises(InvalidEvent):
            decode_alert(bad)
