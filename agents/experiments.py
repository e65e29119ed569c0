"""Judging an experiment's arms against its control, and the guard that rolls a worse
arm back by itself.

The test: a one-sided Welch test of non-inferiority on the mean user rating, with the
normal approximation (every arm needs `min_samples` ratings first). For a challenger
arm, d = mean(control) - mean(arm) and se = sqrt(var_c/n_c + var_a/n_a):

- worse: H0 "d <= margin" is rejected, z = (d - margin) / se, P(Z >= z) < alpha. The
  arm is worse than the control by more than the margin: roll it back.
- not worse: H0 "d >= margin" is rejected, z = (margin - d) / se, P(Z >= z) < alpha.
- inconclusive: neither, yet; collecting: too few ratings."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agents.drift import normal_sf
from agents.routing import Registry, move_label
from connectors.ports import ExperimentReads
from schemas import utc_now
from schemas.alerts import Alert, ExperimentRolledBack
from schemas.prompts import Experiment, LabelMoved

log = logging.getLogger(__name__)
# The producer of its alert events. The labels it moves keep `moved_by="monitor"`, as
# label histories recorded before.
STAGE = "experiment-guard"
Z95 = 1.959964


@dataclass(frozen=True)
class ArmStats:
    arm: str
    queries: int = 0
    failed: int = 0
    p95_ms: float = 0.0
    cost_per_query: float = 0.0
    ratings: int = 0
    mean: float = 0.0
    variance: float = 0.0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ArmStats:
        def number(key: str) -> float:
            value = row.get(key)
            return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

        return cls(
            arm=row["arm"],
            queries=int(number("queries")),
            failed=int(number("failed")),
            p95_ms=number("p95_ms"),
            cost_per_query=number("cost_per_query"),
            ratings=int(number("ratings")),
            mean=number("mean"),
            variance=number("variance"),
        )

    def interval(self) -> tuple[float, float]:
        """95% confidence interval of the mean rating (normal approximation)."""
        half = Z95 * math.sqrt(self.variance / self.ratings) if self.ratings > 1 else math.inf
        return self.mean - half, self.mean + half


State = Literal["control", "collecting", "worse", "not_worse", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    arm: str
    state: State
    difference: float = 0.0  # control mean minus this arm's mean
    p_worse: float | None = None
    p_not_worse: float | None = None
    message: str = ""


def judge(experiment: Experiment, stats: Sequence[ArmStats]) -> list[Verdict]:
    by_arm = {s.arm: s for s in stats}
    control = by_arm.get(experiment.control, ArmStats(experiment.control))
    verdicts = [Verdict(control.arm, "control", message=f"{control.ratings} ratings")]
    for arm in experiment.arms[1:]:
        s = by_arm.get(arm.label, ArmStats(arm.label))
        need = experiment.min_samples
        if min(s.ratings, control.ratings) < need:
            verdicts.append(
                Verdict(
                    s.arm,
                    "collecting",
                    message=f"{s.ratings} vs {control.ratings} ratings; each arm needs {need}",
                )
            )
            continue
        d = control.mean - s.mean
        se = math.sqrt(s.variance / s.ratings + control.variance / control.ratings)
        if se == 0:
            p_worse = 0.0 if d > experiment.margin else 1.0
            p_ok = 0.0 if d < experiment.margin else 1.0
        else:
            p_worse = normal_sf((d - experiment.margin) / se)
            p_ok = normal_sf((experiment.margin - d) / se)
        state: State = "inconclusive"
        if p_worse < experiment.alpha:
            state = "worse"
        elif p_ok < experiment.alpha:
            state = "not_worse"
        verdicts.append(
            Verdict(
                s.arm,
                state,
                d,
                p_worse,
                p_ok,
                f"mean rating {s.mean:.3f} vs control {control.mean:.3f} (difference {d:+.3f}, margin "
                f"{experiment.margin}; {s.ratings} vs {control.ratings} ratings; one-sided Welch "
                f"p(worse)={p_worse:.3g}, p(not worse)={p_ok:.3g}, alpha {experiment.alpha})",
            )
        )
    return verdicts


async def arm_stats(analytics: ExperimentReads, experiment: Experiment) -> list[ArmStats]:
    rows = await analytics.experiment_arms(experiment.name, experiment.started_at)
    return [ArmStats.from_row(r) for r in rows.dicts()]


Records = Sequence[LabelMoved | Experiment]


class ExperimentGuard:
    """For each running experiment with auto_rollback: judge its arms; point every worse
    arm's label at the control's version, end the experiment as rolled_back, and publish
    an ExperimentRolledBack alert (the alerts sink stores and delivers it, as the
    monitor's)."""

    def __init__(
        self,
        analytics: ExperimentReads,
        read: Callable[[], Awaitable[Registry]],
        write: Callable[[Records], Awaitable[None]],
        publish: Callable[[Alert], Awaitable[None]] | None = None,
    ) -> None:
        self.analytics = analytics
        self.read = read
        self.write = write
        self.publish = publish

    async def check(self) -> list[Alert]:
        registry = await self.read()
        alerts: list[Alert] = []
        for experiment in registry.experiments():
            if experiment.status == "running" and experiment.auto_rollback:
                alerts += await self._check(registry, experiment)
        return alerts

    async def _check(self, registry: Registry, experiment: Experiment) -> list[Alert]:
        verdicts = judge(experiment, await arm_stats(self.analytics, experiment))
        worse = [v for v in verdicts if v.state == "worse"]
        if not worse:
            return []
        control, _ = registry.resolve(experiment.control)
        now = utc_now()
        reason = "; ".join(f"{v.arm}: {v.message}" for v in worse)
        records: list[LabelMoved | Experiment] = [
            move_label(registry, v.arm, control.version, by="monitor", reason=f"experiment {experiment.name}")
            for v in worse
        ]
        ended = {"status": "rolled_back", "ended_at": now, "reason": reason}
        records.append(experiment.model_copy(update=ended))
        await self.write(records)
        alerts: list[Alert] = [
            ExperimentRolledBack(
                trace_id=f"{experiment.name}-{v.arm}-{int(now.timestamp())}",
                producer=STAGE,
                alert_id=f"{experiment.name}-{v.arm}-{int(now.timestamp())}",
                check="experiment_rollback",
                subject=f"{experiment.name}/{v.arm}",
                value=v.difference,
                threshold=experiment.margin,
                p_value=v.p_worse,
                window_start=experiment.started_at,
                window_end=now,
                message=f"rolled back {v.arm} to {experiment.control} ({control.version}): {v.message}",
            )
            for v in worse
        ]
        for alert in alerts:
            log.warning("experiment %s: %s", experiment.name, alert.message)
            if self.publish is not None:
                await self.publish(alert)
        return alerts
