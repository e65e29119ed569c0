"""Consumer lag per stage: each sample reads, for every consumer group of the system,
its topics' end offsets and the group's committed offsets; a stage's lag is the sum over
its partitions of end minus committed. Samples go to the analytics store; a stage whose
lag grew in each of the last N samples, or that is more than a threshold of seconds of
its own recent input behind, is one LagBreached incident until its lag clears. The
incidents share the monitor's book (agents.monitor.IncidentBook), so its hysteresis,
cooldown and pick-up after a restart apply to them as to the monitor's own."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from agents.monitor import Finding, IncidentBook
from connectors.ports import LagWrites, OffsetReads, PartitionLag, PartitionOffsets
from schemas import utc_now
from schemas.alerts import Alert, LagBreached

log = logging.getLogger(__name__)
STAGE = "lag"
CHECK = "consumer_lag"


class LagSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    enabled: bool = Field(default=True, description="Sample consumer lag (and alert on it).")
    every_s: float = Field(default=10.0, gt=0, description="How often the analytics leader samples the lag.")
    grow_samples: int = Field(
        default=6, ge=1, description="A stage whose lag grew in this many consecutive samples alerts."
    )
    max_behind_s: float = Field(
        default=60.0,
        gt=0,
        description="So does one more than this many seconds of its recent input behind (lag ÷ input rate).",
    )
    min_lag: int = Field(
        default=100,
        ge=0,
        description="Messages of lag below which a stage never alerts (and its alert clears).",
    )
    rate_window_s: float = Field(
        default=60.0, gt=0, description="The input rate is the end offsets' growth over this many seconds."
    )
    read_tail: bool = Field(
        default=True,
        description="Read each partition's last batch to find its end: Tansu 0.6 reports the first offset of "
        "the last batch (+1) as a partition's end. Apache Kafka reports it right: false saves a fetch.",
    )


@dataclass(frozen=True)
class Watched:
    """A stage and what its consumers read: a topic, in a consumer group."""

    stage: str
    group: str
    topic: str


@dataclass(frozen=True)
class StageLag:
    stage: str
    partitions: int
    total: int
    largest: int  # the most behind partition's lag
    end: int  # the end offsets' sum: its growth is the input rate


def partition_lag(o: PartitionOffsets, stage: str) -> PartitionLag:
    """A group that committed nothing starts at the log's start (faust reads from the
    earliest offset), so all of it is lag."""
    done = o.start if o.committed is None else o.committed
    committed = -1 if o.committed is None else o.committed
    return PartitionLag(stage, o.group, o.topic, o.partition, o.end, committed, max(0, o.end - done))


def per_stage(rows: Sequence[PartitionLag]) -> list[StageLag]:
    by_stage: dict[str, list[PartitionLag]] = {}
    for r in rows:
        by_stage.setdefault(r.stage, []).append(r)
    return [
        StageLag(
            stage,
            len(parts),
            sum(p.lag for p in parts),
            max(p.lag for p in parts),
            sum(p.end for p in parts),
        )
        for stage, parts in sorted(by_stage.items())
    ]


@dataclass(frozen=True)
class Sample:
    at: datetime
    total: int
    end: int


def _window_start(history: Sequence[Sample], window_s: float) -> Sample:
    """The oldest sample within `window_s` of the last one (at least the one before it)."""
    last = history[-1]
    inside = [s for s in history if (last.at - s.at).total_seconds() <= window_s]
    return inside[0] if len(inside) > 1 else history[-2]


def input_rate(history: Sequence[Sample], window_s: float) -> float | None:
    """Messages per second into the stage's topic over the last `window_s` seconds;
    None with fewer than two samples."""
    if len(history) < 2:
        return None
    first, last = _window_start(history, window_s), history[-1]
    seconds = (last.at - first.at).total_seconds()
    if seconds <= 0:
        return None
    return max(0.0, (last.end - first.end) / seconds)


def seconds_behind(history: Sequence[Sample], window_s: float) -> float | None:
    """Lag ÷ recent input rate: the seconds of input the stage's consumers are behind.
    With no input in the window: infinite when the lag did not shrink either (nothing is
    read), 0 while it drains. None: not known yet."""
    rate = input_rate(history, window_s)
    if rate is None:
        return None
    lag = history[-1].total
    if lag == 0:
        return 0.0
    if rate > 0:
        return lag / rate
    return math.inf if lag >= _window_start(history, window_s).total else 0.0


def growing(history: Sequence[Sample], n: int) -> bool:
    """The lag grew in each of the last n samples."""
    if len(history) < n + 1:
        return False
    last = [s.total for s in history][-(n + 1) :]
    return all(b > a for a, b in zip(last, last[1:], strict=False))


def lag_finding(lag: StageLag, history: Sequence[Sample], s: LagSettings) -> Finding:
    """Firing: more than `min_lag` messages behind, and either growing for
    `grow_samples` samples or more than `max_behind_s` seconds of input behind."""
    behind = seconds_behind(history, s.rate_window_s)
    grew = growing(history, s.grow_samples)
    over = behind is not None and behind > s.max_behind_s
    firing = lag.total > s.min_lag and (grew or over)
    if behind is None:
        how = "input rate not known yet"
    elif math.isinf(behind):
        how = f"no input and no progress in {s.rate_window_s:.0f} s"
    else:
        how = f"about {behind:.0f} s of its input behind"
    why = f", growing for {s.grow_samples} samples" if grew else ""
    return Finding(
        CHECK,
        lag.stage,
        LagBreached,
        firing,
        float(lag.total),
        s.max_behind_s,
        f"{lag.stage} is {lag.total} messages behind ({how}{why}; {lag.partitions} partitions, "
        f"at most {lag.largest} on one)",
    )


class LagWatch:
    """Samples the lag of every watched stage, stores each sample, and announces the
    incidents that open or clear."""

    def __init__(
        self,
        offsets: OffsetReads,
        store: LagWrites,
        settings: LagSettings,
        watched: Sequence[Watched],
        book: IncidentBook,
        publish: Callable[[Alert], Awaitable[None]] | None = None,
        on_sample: Callable[[Sequence[PartitionLag]], None] | None = None,
    ) -> None:
        self.offsets = offsets
        self.store = store
        self.settings = settings
        self.watched = list(watched)
        self.book = book
        self.publish = publish
        self.on_sample = on_sample  # the process's metrics (topology/metrics.py)
        self.history: dict[str, deque[Sample]] = {}
        self.latest: list[PartitionLag] = []
        self._stage_of = {(w.group, w.topic): w.stage for w in watched}

    def groups(self) -> Mapping[str, list[str]]:
        found: dict[str, list[str]] = {}
        for w in self.watched:
            found.setdefault(w.group, []).append(w.topic)
        return found

    async def sample(self, now: datetime | None = None) -> list[Alert]:
        """One sample: read, store, judge, announce (the leader timer calls this)."""
        now = now or utc_now()
        offsets = await self.offsets.offsets(self.groups())
        rows = [
            partition_lag(o, self._stage_of[(o.group, o.topic)])
            for o in offsets
            if (o.group, o.topic) in self._stage_of
        ]
        await self.store.store_lag(now, rows)
        self.latest = rows
        if self.on_sample is not None:
            self.on_sample(rows)
        findings = []
        keep = max(self.settings.grow_samples + 1, 2)
        for lag in per_stage(rows):
            history = self.history.setdefault(lag.stage, deque())
            history.append(Sample(now, lag.total, lag.end))
            while len(history) > keep and (now - history[0].at).total_seconds() > self.settings.rate_window_s:
                history.popleft()
            findings.append(lag_finding(lag, history, self.settings))
        alerts = self._announce(findings, now)
        for alert in alerts:
            log.warning("%s %s/%s: %s", type(alert).__name__, alert.check, alert.subject, alert.message)
            if self.publish is not None:
                await self.publish(alert)
        return alerts

    def _announce(self, findings: Sequence[Finding], now: datetime) -> list[Alert]:
        return [
            finding.announce(alert_id, raised, STAGE, self.history[finding.subject][0].at, now)
            for finding, alert_id, raised in self.book.update(findings, now)
        ]
