"""The monitor: each window, compare what ClickHouse holds for the window with a
reference (the trailing windows, or a pinned baseline) and with the objectives in
settings, and turn what fails into alerts. One incident is one alert until its check
passes again; a check that fires again within the cooldown of its last alert is tracked
but not announced (flapping is one alert, not ten)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agents import drift
from connectors.analytics import when
from connectors.ports import AnalyticsStore
from schemas import new_id
from schemas.alerts import Alert, AlertResolved, BudgetExceeded, DriftDetected, SloBreached

log = logging.getLogger(__name__)
STAGE = "monitor"


class MonitorSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    enabled: bool = True
    window_s: int = Field(default=300, ge=1, description="Length of each evaluated window.")
    grace_s: float = Field(
        default=5.0, ge=0, description="Wait after a window closes (the sink writes ~1/s)."
    )
    reference_windows: int = Field(default=12, ge=1, description="Trailing windows that form the reference.")
    baseline_start: AwareDatetime | None = Field(default=None, description="Pinned reference instead.")
    baseline_end: AwareDatetime | None = None
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Significance level of every drift test.")
    min_samples: int = Field(default=30, ge=2, description="Per window and reference, or a check is skipped.")
    embedding_sample: int = Field(default=200, ge=10, description="Query vectors per side in the MMD test.")
    permutations: int = Field(default=200, ge=20)
    min_centroid_distance: float = Field(
        default=0.02, ge=0, description="Effect size an embedding drift needs."
    )
    min_relative_change: float = Field(
        default=0.10, ge=0, description="For means: top-1 score, answer length."
    )
    min_rate_change: float = Field(default=0.05, ge=0, description="For rates: empty results, citations.")
    slo_p95_ms: dict[str, float] = Field(
        default_factory=lambda: {
            "prompting": 100.0,
            "embedding": 250.0,
            "retrieval": 250.0,
            "generation": 10_000.0,
        }
    )
    slo_min_events: int = Field(default=10, ge=1)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    budgets_usd_per_day: dict[str, float] = Field(default_factory=dict, description="Per tenant.")
    default_budget_usd_per_day: float | None = Field(default=None, description="Tenants not listed.")
    feedback_min_ratings: int = Field(default=20, ge=2)
    feedback_max_drop: float = Field(default=0.10, ge=0, description="Drop of the mean score that alerts.")
    resolve_after: int = Field(default=2, ge=1, description="Passing windows before an incident resolves.")
    cooldown_s: float = Field(default=1800.0, ge=0)
    experiments_every_s: float = Field(
        default=30.0, gt=0, description="How often running experiments are judged for automatic rollback."
    )


@dataclass(frozen=True)
class Finding:
    """One check on one subject in one window: firing or passing."""

    check: str
    subject: str
    kind: type[Alert]
    firing: bool
    value: float
    threshold: float
    message: str
    p_value: float | None = None


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def params(self, prefix: str = "") -> dict[str, str]:
        return {f"{prefix}start": when(self.start), f"{prefix}end": when(self.end)}


SPAN = "started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}"
REF_SPAN = "started_at >= {ref_start:DateTime64(3, 'UTC')} AND started_at < {ref_end:DateTime64(3, 'UTC')}"


async def _vectors(store: AnalyticsStore, span: str, params: dict[str, Any], n: int) -> np.ndarray:
    rows = await store.query(
        f"SELECT query_vector FROM telemetry WHERE stage = 'embedding' AND notEmpty(query_vector) AND {span} "  # noqa: S608
        "ORDER BY cityHash64(trace_id) LIMIT {n:UInt32}",  # constant SQL; values are bound
        {**params, "n": n},
    )
    return np.array([r[0] for r in rows.rows], dtype=np.float32)


async def embedding_drift(store: AnalyticsStore, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    params = {**w.params(), **ref.params("ref_")}
    current = await _vectors(store, SPAN, params, s.embedding_sample)
    reference = await _vectors(store, REF_SPAN, params, s.embedding_sample)
    if min(len(current), len(reference)) < s.min_samples:
        return []
    # Half a second of numpy at 200 vs 200: off the event loop the sink shares.
    test = await asyncio.to_thread(drift.mmd_test, current, reference, s.permutations)
    distance = drift.centroid_distance(current, reference)
    firing = test.p_value < s.alpha and distance >= s.min_centroid_distance
    return [
        Finding(
            "embedding_drift",
            "queries",
            DriftDetected,
            firing,
            distance,
            s.min_centroid_distance,
            f"query embeddings moved: centroid cosine distance {distance:.3f}, MMD² {test.current:.4f} "
            f"(permutation p={test.p_value:.3f}, {len(current)} vs {len(reference)} queries)",
            test.p_value,
        )
    ]


# Per side (the window: cur, the reference: NOT cur): moments of a value over the rows
# where it is defined, and a flag's count over all rows. VALUE, VALID and FLAG are
# expressions from this module; the stage and times are bound.
MOMENTS = f"""
SELECT avgIf(x, cur AND valid) AS m, varSampIf(x, cur AND valid) AS v, countIf(cur AND valid) AS n,
       avgIf(x, NOT cur AND valid) AS rm, varSampIf(x, NOT cur AND valid) AS rv,
       countIf(NOT cur AND valid) AS rn,
       countIf(cur) AS total, countIf(NOT cur) AS ref_total,
       sumIf(flag, cur) AS hits, sumIf(flag, NOT cur) AS ref_hits
FROM (
    SELECT VALUE AS x, VALID AS valid, FLAG AS flag, ({SPAN}) AS cur
    FROM telemetry
    WHERE stage = {{stage:String}} AND status = 'ok' AND (({SPAN}) OR ({REF_SPAN}))
)
"""  # noqa: S608  (constant SQL; values bound)


async def _moments(
    store: AnalyticsStore, stage: str, value: str, valid: str, flag: str, w: Window, ref: Window
) -> dict[str, Any]:
    sql = MOMENTS.replace("VALUE", value).replace("VALID", valid).replace("FLAG", flag)
    return (await store.query(sql, {**w.params(), **ref.params("ref_"), "stage": stage})).dicts()[0]


def _mean_finding(
    check: str, subject: str, what: str, m: dict[str, Any], s: MonitorSettings
) -> list[Finding]:
    if min(m["n"], m["rn"]) < s.min_samples:
        return []
    test = drift.compare_means(m["m"], m["v"] or 0.0, m["n"], m["rm"], m["rv"] or 0.0, m["rn"])
    relative = abs(test.change) / max(abs(test.reference), 1e-9)
    firing = test.p_value < s.alpha and relative >= s.min_relative_change
    return [
        Finding(
            check,
            subject,
            DriftDetected,
            firing,
            test.current,
            test.reference,
            f"{what} {test.current:.3f} vs {test.reference:.3f} in the reference ({relative:.0%} change, "
            f"p={test.p_value:.3g})",
            test.p_value,
        )
    ]


def _rate_finding(
    check: str, subject: str, what: str, m: dict[str, Any], s: MonitorSettings
) -> list[Finding]:
    if min(m["total"], m["ref_total"]) < s.min_samples:
        return []
    test = drift.compare_rates(int(m["hits"]), int(m["total"]), int(m["ref_hits"]), int(m["ref_total"]))
    firing = test.p_value < s.alpha and abs(test.change) >= s.min_rate_change
    return [
        Finding(
            check,
            subject,
            DriftDetected,
            firing,
            test.current,
            test.reference,
            f"{what} {test.current:.1%} vs {test.reference:.1%} in the reference (p={test.p_value:.3g})",
            test.p_value,
        )
    ]


async def retrieval_drift(store: AnalyticsStore, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    # Mean top-1 embedding similarity (the dense leg's, whatever the mode fused) over searches
    # that ran it and found something; the empty-result rate over all searches.
    m = await _moments(
        store, "retrieval", "dense_scores[1]", "notEmpty(dense_scores)", "empty(passage_scores)", w, ref
    )
    return _mean_finding("retrieval_top1", "retrieval", "mean top-1 similarity", m, s) + _rate_finding(
        "retrieval_empty", "retrieval", "empty-result rate", m, s
    )


async def response_drift(store: AnalyticsStore, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    m = await _moments(store, "generation", "lengthUTF8(answer)", "1", "notEmpty(citations)", w, ref)
    return _mean_finding("answer_length", "generation", "mean answer length", m, s) + _rate_finding(
        "citation_rate", "generation", "citation rate", m, s
    )


async def latency_and_errors(
    store: AnalyticsStore, w: Window, ref: Window, s: MonitorSettings
) -> list[Finding]:
    rows = await store.query(
        f"""
        SELECT stage, count() AS n, countIf(status = 'error') AS errors, quantile(0.95)(latency_ms) AS p95
        FROM telemetry WHERE {SPAN} AND stage != 'indexing' GROUP BY stage
        """,  # noqa: S608  (constant SQL; values bound)
        w.params(),
    )
    found = []
    for r in rows.dicts():
        if r["n"] < s.slo_min_events:
            continue
        objective = s.slo_p95_ms.get(r["stage"])
        if objective is not None:
            found.append(
                Finding(
                    "latency_slo",
                    r["stage"],
                    SloBreached,
                    r["p95"] > objective,
                    r["p95"],
                    objective,
                    f"{r['stage']} p95 {r['p95']:.1f} ms against an objective of {objective:.0f} ms "
                    f"({r['n']} events)",
                )
            )
        rate = r["errors"] / r["n"]
        found.append(
            Finding(
                "error_rate",
                r["stage"],
                SloBreached,
                rate > s.max_error_rate,
                rate,
                s.max_error_rate,
                f"{r['stage']} error rate {rate:.1%} against a limit of {s.max_error_rate:.1%} "
                f"({r['n']} events)",
            )
        )
    return found


async def budget(store: AnalyticsStore, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    if not s.budgets_usd_per_day and s.default_budget_usd_per_day is None:
        return []
    rows = await store.query(
        "SELECT tenant, sum(cost_usd) AS spent FROM cost_days WHERE day = toDate({end:DateTime64(3, 'UTC')}) "
        "GROUP BY tenant",
        w.params(),
    )
    found = []
    for r in rows.dicts():
        limit = s.budgets_usd_per_day.get(r["tenant"], s.default_budget_usd_per_day)
        if limit is None:
            continue
        found.append(
            Finding(
                "budget",
                r["tenant"],
                BudgetExceeded,
                r["spent"] > limit,
                r["spent"],
                limit,
                f"tenant {r['tenant']} spent ${r['spent']:.4f} today against a daily budget of ${limit:.2f}",
            )
        )
    return found


async def feedback_drop(store: AnalyticsStore, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    rows = await store.query(
        """
        SELECT concat(template_id, '@', template_version) AS version,
               avgIf(score, cur) AS m, varSampIf(score, cur) AS v, countIf(cur) AS n,
               avgIf(score, NOT cur) AS rm, varSampIf(score, NOT cur) AS rv, countIf(NOT cur) AS rn
        FROM (
            SELECT template_id, template_version, score,
                   occurred_at >= {start:DateTime64(3, 'UTC')} AS cur
            FROM feedback FINAL
            WHERE trace_seen AND score IS NOT NULL AND name = 'user'
              AND ((occurred_at >= {start:DateTime64(3, 'UTC')}
                    AND occurred_at < {end:DateTime64(3, 'UTC')})
                OR (occurred_at >= {ref_start:DateTime64(3, 'UTC')}
                    AND occurred_at < {ref_end:DateTime64(3, 'UTC')}))
        )
        GROUP BY version
        """,
        {**w.params(), **ref.params("ref_")},
    )
    found = []
    for r in rows.dicts():
        if min(r["n"], r["rn"]) < s.feedback_min_ratings:
            continue
        test = drift.compare_means(r["m"], r["v"] or 0.0, r["n"], r["rm"], r["rv"] or 0.0, r["rn"])
        one_sided = test.p_value / 2 if test.change < 0 else 1 - test.p_value / 2
        firing = -test.change >= s.feedback_max_drop and one_sided < s.alpha
        found.append(
            Finding(
                "feedback_drop",
                r["version"],
                DriftDetected,
                firing,
                test.current,
                test.reference,
                f"prompt {r['version']}: mean user score {test.current:.2f} vs {test.reference:.2f} "
                f"({r['n']} vs {r['rn']} ratings, one-sided p={one_sided:.3g})",
                one_sided,
            )
        )
    return found


CHECKS: tuple[Callable[[AnalyticsStore, Window, Window, MonitorSettings], Awaitable[list[Finding]]], ...] = (
    embedding_drift,
    retrieval_drift,
    response_drift,
    latency_and_errors,
    budget,
    feedback_drop,
)


@dataclass
class Incident:
    alert_id: str
    last_alert_at: datetime
    announced: bool = True
    passes: int = 0


@dataclass
class IncidentBook:
    """Which incidents are open: the dedup, hysteresis and cooldown rules, and nothing else."""

    settings: MonitorSettings
    open: dict[tuple[str, str], Incident] = field(default_factory=dict)
    last_alert: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def update(self, findings: Sequence[Finding], now: datetime) -> list[tuple[Finding, str, bool]]:
        """(finding, alert id, True to raise / False to resolve) for what must be announced."""
        out = []
        for f in findings:
            key = (f.check, f.subject)
            incident = self.open.get(key)
            if f.firing:
                if incident is not None:
                    incident.passes = 0
                    continue
                last = self.last_alert.get(key)
                cooling = last is not None and (now - last).total_seconds() < self.settings.cooldown_s
                self.open[key] = Incident(new_id(), now, announced=not cooling)
                if not cooling:
                    self.last_alert[key] = now
                    out.append((f, self.open[key].alert_id, True))
            elif incident is not None:
                incident.passes += 1
                if incident.passes >= self.settings.resolve_after:
                    del self.open[key]
                    if incident.announced:
                        out.append((f, incident.alert_id, False))
        return out


class Monitor:
    def __init__(
        self,
        store: AnalyticsStore,
        settings: MonitorSettings,
        publish: Callable[[Alert], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.publish = publish
        self.book = IncidentBook(settings)
        self.evaluated_until: datetime | None = None

    async def load(self) -> None:
        """Pick up the incidents still open from the alerts table (after a restart)."""
        rows = await self.store.query(
            """
            SELECT alert_id, check_name, subject, argMax(event_type, occurred_at) AS last,
                   max(occurred_at) AS at
            FROM alerts GROUP BY alert_id, check_name, subject
            """
        )
        for r in rows.dicts():
            at = datetime.fromisoformat(r["at"]).replace(tzinfo=UTC)
            key = (r["check_name"], r["subject"])
            if r["last"] != "AlertResolved":
                self.book.open[key] = Incident(r["alert_id"], at)
            self.book.last_alert[key] = max(self.book.last_alert.get(key, at), at)

    def reference(self, w: Window) -> Window:
        s = self.settings
        if s.baseline_start is not None and s.baseline_end is not None:
            return Window(s.baseline_start, s.baseline_end)
        return Window(w.start - timedelta(seconds=s.window_s * s.reference_windows), w.start)

    async def evaluate(self, w: Window) -> list[Finding]:
        ref = self.reference(w)
        findings: list[Finding] = []
        for check in CHECKS:
            findings += await check(self.store, w, ref, self.settings)
        return findings

    async def run_window(self, w: Window) -> list[Alert]:
        """Evaluate one window and announce what changed: alerts raised and resolved."""
        findings = await self.evaluate(w)
        alerts = []
        for finding, alert_id, raised in self.book.update(findings, w.end):
            kind = finding.kind if raised else AlertResolved
            message = finding.message if raised else f"resolved: {finding.message}"
            alerts.append(
                kind(
                    trace_id=alert_id,
                    producer=STAGE,
                    alert_id=alert_id,
                    check=finding.check,
                    subject=finding.subject,
                    value=finding.value,
                    threshold=finding.threshold,
                    p_value=finding.p_value,
                    window_start=w.start,
                    window_end=w.end,
                    message=message,
                )
            )
        if alerts:
            await self.store.insert("alerts", [alert_row(a) for a in alerts])
            for alert in alerts:
                log.warning("%s %s/%s: %s", type(alert).__name__, alert.check, alert.subject, alert.message)
                if self.publish is not None:
                    await self.publish(alert)
        return alerts

    async def tick(self, now: datetime | None = None) -> list[Alert]:
        """Evaluate the last closed window, once (the timer calls this)."""
        now = now or datetime.now(UTC)
        size = self.settings.window_s
        end_ts = (now.timestamp() - self.settings.grace_s) // size * size
        end = datetime.fromtimestamp(end_ts, UTC)
        if self.evaluated_until is not None and end <= self.evaluated_until:
            return []
        alerts = await self.run_window(Window(end - timedelta(seconds=size), end))
        self.evaluated_until = end  # only now: a window that failed is tried again
        return alerts


def alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "event_id": alert.event_id,
        "alert_id": alert.alert_id,
        "event_type": type(alert).__name__,
        "check_name": alert.check,
        "subject": alert.subject,
        "value": alert.value,
        "threshold": alert.threshold,
        "p_value": alert.p_value,
        "window_start": alert.window_start,
        "window_end": alert.window_end,
        "message": alert.message,
        "occurred_at": alert.occurred_at,
    }


def slack_payload(alert: Alert) -> dict[str, Any]:
    """Slack-compatible incoming-webhook JSON (`text`, plus blocks for richer clients)."""
    icon = ":white_check_mark:" if isinstance(alert, AlertResolved) else ":rotating_light:"
    title = f"{icon} {type(alert).__name__}: {alert.check} / {alert.subject}"
    return {
        "text": f"{title}\n{alert.message}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{alert.message}"}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": json.dumps({"alert_id": alert.alert_id})}],
            },
        ],
    }
