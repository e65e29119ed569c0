"""The monitor: each window, compare what ClickHouse holds for the window with a
reference (the trailing windows, or a pinned baseline) and with the objectives in
settings, and turn what fails into alerts. One incident is one alert until its check
passes again; a check that fires again within the cooldown of its last alert is tracked
but not announced (flapping is one alert, not ten)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agents import drift
from connectors.ports import Moments, MonitorReads, StageLoad, Window
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

    @property
    def tick_every_s(self) -> float:
        """How often the timer asks whether a window has closed: often enough to evaluate
        each soon after it closes, at most every 30 s, at least every second."""
        return max(1.0, min(30.0, self.window_s / 5))


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

    def announce(
        self, alert_id: str, raised: bool, producer: str, window_start: datetime, window_end: datetime
    ) -> Alert:
        """The event that says this finding was raised (its kind) or resolved."""
        kind = self.kind if raised else AlertResolved
        return kind(
            trace_id=alert_id,
            producer=producer,
            alert_id=alert_id,
            check=self.check,
            subject=self.subject,
            value=self.value,
            threshold=self.threshold,
            p_value=self.p_value,
            window_start=window_start,
            window_end=window_end,
            message=self.message if raised else f"resolved: {self.message}",
        )


async def embedding_drift(data: MonitorReads, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    current = await data.query_vectors(w, s.embedding_sample)
    reference = await data.query_vectors(ref, s.embedding_sample)
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


def mean_finding(check: str, subject: str, what: str, m: Moments, s: MonitorSettings) -> list[Finding]:
    if min(m.n, m.ref_n) < s.min_samples:
        return []
    test = drift.compare_means(m.mean, m.variance, m.n, m.ref_mean, m.ref_variance, m.ref_n)
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


def rate_finding(check: str, subject: str, what: str, m: Moments, s: MonitorSettings) -> list[Finding]:
    if min(m.total, m.ref_total) < s.min_samples:
        return []
    test = drift.compare_rates(m.hits, m.total, m.ref_hits, m.ref_total)
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


async def retrieval_drift(data: MonitorReads, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    # Mean top-1 embedding similarity over searches that ran the dense leg and found
    # something; the empty-result rate over all searches.
    m = await data.stage_moments("retrieval", w, ref)
    return mean_finding("retrieval_top1", "retrieval", "mean top-1 similarity", m, s) + rate_finding(
        "retrieval_empty", "retrieval", "empty-result rate", m, s
    )


async def response_drift(data: MonitorReads, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    m = await data.stage_moments("response", w, ref)
    return mean_finding("answer_length", "generation", "mean answer length", m, s) + rate_finding(
        "citation_rate", "generation", "citation rate", m, s
    )


def load_findings(loads: Sequence[StageLoad], s: MonitorSettings) -> list[Finding]:
    found = []
    for r in loads:
        if r.events < s.slo_min_events:
            continue
        objective = s.slo_p95_ms.get(r.stage)
        if objective is not None:
            found.append(
                Finding(
                    "latency_slo",
                    r.stage,
                    SloBreached,
                    r.p95_ms > objective,
                    r.p95_ms,
                    objective,
                    f"{r.stage} p95 {r.p95_ms:.1f} ms against an objective of {objective:.0f} ms "
                    f"({r.events} events)",
                )
            )
        rate = r.errors / r.events
        found.append(
            Finding(
                "error_rate",
                r.stage,
                SloBreached,
                rate > s.max_error_rate,
                rate,
                s.max_error_rate,
                f"{r.stage} error rate {rate:.1%} against a limit of {s.max_error_rate:.1%} "
                f"({r.events} events)",
            )
        )
    return found


async def latency_and_errors(data: MonitorReads, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    return load_findings(await data.stage_loads(w), s)


def budget_findings(spent: Mapping[str, float], s: MonitorSettings) -> list[Finding]:
    found = []
    for tenant, amount in spent.items():
        limit = s.budgets_usd_per_day.get(tenant, s.default_budget_usd_per_day)
        if limit is None:
            continue
        found.append(
            Finding(
                "budget",
                tenant,
                BudgetExceeded,
                amount > limit,
                amount,
                limit,
                f"tenant {tenant} spent ${amount:.4f} today against a daily budget of ${limit:.2f}",
            )
        )
    return found


async def budget(data: MonitorReads, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    if not s.budgets_usd_per_day and s.default_budget_usd_per_day is None:
        return []
    return budget_findings(await data.spend_by_tenant(w.end), s)


def feedback_findings(by_version: Mapping[str, Moments], s: MonitorSettings) -> list[Finding]:
    found = []
    for version, m in by_version.items():
        if min(m.n, m.ref_n) < s.feedback_min_ratings:
            continue
        test = drift.compare_means(m.mean, m.variance, m.n, m.ref_mean, m.ref_variance, m.ref_n)
        one_sided = test.p_value / 2 if test.change < 0 else 1 - test.p_value / 2
        firing = -test.change >= s.feedback_max_drop and one_sided < s.alpha
        found.append(
            Finding(
                "feedback_drop",
                version,
                DriftDetected,
                firing,
                test.current,
                test.reference,
                f"prompt {version}: mean user score {test.current:.2f} vs {test.reference:.2f} "
                f"({m.n} vs {m.ref_n} ratings, one-sided p={one_sided:.3g})",
                one_sided,
            )
        )
    return found


async def feedback_drop(data: MonitorReads, w: Window, ref: Window, s: MonitorSettings) -> list[Finding]:
    return feedback_findings(await data.rating_moments(w, ref), s)


CHECKS: tuple[Callable[[MonitorReads, Window, Window, MonitorSettings], Awaitable[list[Finding]]], ...] = (
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
    """Evaluates windows and publishes what changed; the alerts sink stores and delivers
    the alerts (the monitor writes nothing)."""

    def __init__(
        self,
        data: MonitorReads,
        settings: MonitorSettings,
        publish: Callable[[Alert], Awaitable[None]] | None = None,
    ) -> None:
        self.data = data
        self.settings = settings
        self.publish = publish
        self.book = IncidentBook(settings)
        self.evaluated_until: datetime | None = None

    async def load(self) -> None:
        """Pick up the incidents still open from the alerts table (after a restart)."""
        for state in await self.data.alert_states():
            key = (state.check, state.subject)
            if state.last_event_type != "AlertResolved":
                self.book.open[key] = Incident(state.alert_id, state.at)
            self.book.last_alert[key] = max(self.book.last_alert.get(key, state.at), state.at)

    def reference(self, w: Window) -> Window:
        s = self.settings
        if s.baseline_start is not None and s.baseline_end is not None:
            return Window(s.baseline_start, s.baseline_end)
        return Window(w.start - timedelta(seconds=s.window_s * s.reference_windows), w.start)

    async def evaluate(self, w: Window) -> list[Finding]:
        ref = self.reference(w)
        findings: list[Finding] = []
        for check in CHECKS:
            findings += await check(self.data, w, ref, self.settings)
        return findings

    async def run_window(self, w: Window) -> list[Alert]:
        """Evaluate one window and announce what changed: alerts raised and resolved."""
        findings = await self.evaluate(w)
        alerts = [
            finding.announce(alert_id, raised, STAGE, w.start, w.end)
            for finding, alert_id, raised in self.book.update(findings, w.end)
        ]
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
