"""Consumer lag: per-partition and per-stage sums, the input rate and seconds behind,
and the LagBreached incident opening and clearing on in-memory offsets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from agents.lag import (
    LagSettings,
    LagWatch,
    Sample,
    Watched,
    growing,
    input_rate,
    lag_finding,
    partition_lag,
    per_stage,
    seconds_behind,
)
from agents.monitor import IncidentBook, MonitorSettings
from connectors.ports import PartitionLag, PartitionOffsets
from schemas.alerts import Alert, AlertResolved, LagBreached

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_partition_lag_is_end_minus_committed_and_counts_from_the_start_without_a_commit():
    assert partition_lag(PartitionOffsets("g", "t", 0, 0, 50, 20), "s").lag == 30
    none = partition_lag(PartitionOffsets("g", "t", 1, 5, 50, None), "s")
    assert (none.lag, none.committed) == (45, -1)
    # A committed offset past a (misreported) end is no negative lag.
    assert partition_lag(PartitionOffsets("g", "t", 2, 0, 3, 9), "s").lag == 0


def test_per_stage_sums_partitions_and_keeps_the_largest():
    rows = [
        PartitionLag("a", "g", "t", 0, 10, 4, 6),
        PartitionLag("a", "g", "t", 1, 20, 19, 1),
        PartitionLag("b", "g", "u", 0, 7, 7, 0),
    ]
    a, b = per_stage(rows)
    assert (a.stage, a.partitions, a.total, a.largest, a.end) == ("a", 2, 7, 6, 30)
    assert (b.stage, b.total) == ("b", 0)


def test_input_rate_and_seconds_behind():
    history = [Sample(at(0), 0, 100), Sample(at(10), 50, 200), Sample(at(20), 100, 300)]
    assert input_rate(history[:1], 60) is None
    assert input_rate(history, 60) == 10.0  # 200 messages in 20 s
    assert seconds_behind(history, 60) == 10.0  # 100 behind at 10/s
    # Only the window counts: the last 10 s.
    assert input_rate(history, 10) == 10.0
    stalled = [Sample(at(0), 100, 300), Sample(at(10), 100, 300)]
    assert seconds_behind(stalled, 60) == math.inf
    draining = [Sample(at(0), 100, 300), Sample(at(10), 40, 300)]
    assert seconds_behind(draining, 60) == 0.0
    assert seconds_behind([Sample(at(0), 0, 0), Sample(at(10), 0, 0)], 60) == 0.0


def test_growing_needs_n_rises_in_a_row():
    totals = [Sample(at(i), t, 0) for i, t in enumerate([1, 2, 3, 4])]
    assert growing(totals, 3) and not growing(totals, 4)
    flat = [Sample(at(i), t, 0) for i, t in enumerate([1, 2, 2, 3])]
    assert not growing(flat, 3) and growing(flat, 1)


def test_the_finding_fires_on_growth_or_seconds_behind_and_never_below_min_lag():
    s = LagSettings(grow_samples=2, max_behind_s=30, min_lag=10, rate_window_s=60)
    lag = per_stage([PartitionLag("prompting", "g", "t", 0, 300, 100, 200)])[0]
    rising = [Sample(at(0), 50, 100), Sample(at(10), 100, 200), Sample(at(20), 200, 300)]
    f = lag_finding(lag, rising, s)
    assert f.firing and f.kind is LagBreached and f.subject == "prompting" and f.value == 200
    assert "prompting is 200 messages behind" in f.message and "s of its input behind" in f.message
    # Flat and 2 s behind: passing.
    steady = [Sample(at(0), 200, 0), Sample(at(10), 200, 1000), Sample(at(20), 200, 2000)]
    assert not lag_finding(lag, steady, s).firing
    # Far behind without growth: firing.
    slow = [Sample(at(0), 200, 0), Sample(at(10), 200, 20), Sample(at(20), 200, 40)]
    assert lag_finding(lag, slow, s).firing
    small = per_stage([PartitionLag("prompting", "g", "t", 0, 9, 0, 9)])[0]
    assert not lag_finding(small, [Sample(at(0), 1, 0), Sample(at(10), 5, 0), Sample(at(20), 9, 0)], s).firing


class Offsets:
    def __init__(self) -> None:
        self.end, self.committed = 0, 0
        self.asked: list[Mapping[str, Sequence[str]]] = []

    async def offsets(self, groups: Mapping[str, Sequence[str]]) -> list[PartitionOffsets]:
        self.asked.append(groups)
        return [PartitionOffsets("pipe", "q", 0, 0, self.end, self.committed)]

    async def close(self) -> None:
        pass


class Store:
    def __init__(self) -> None:
        self.samples: list[tuple[datetime, list[PartitionLag]]] = []

    async def store_lag(self, sampled_at: datetime, rows: Sequence[PartitionLag]) -> None:
        self.samples.append((sampled_at, list(rows)))


async def test_a_stalled_stage_raises_one_alert_that_resolves_when_its_lag_clears():
    offsets, store, published = Offsets(), Store(), []

    async def publish(alert: Alert) -> None:
        published.append(alert)

    settings = LagSettings(grow_samples=3, max_behind_s=1000, min_lag=10, rate_window_s=60)
    book = IncidentBook(MonitorSettings(resolve_after=2))
    watch = LagWatch(offsets, store, settings, [Watched("prompting", "pipe", "q")], book, publish)
    raised: list[list[Alert]] = []
    for i, end in enumerate([0, 20, 40, 60, 80, 100]):  # the worker is down: nothing committed
        offsets.end = end
        raised.append(await watch.sample(at(i * 10)))
    assert offsets.asked[0] == {"pipe": ["q"]}
    assert [len(r) for r in raised] == [0, 0, 0, 1, 0, 0]  # 3 rises after the first sample
    alert = raised[3][0]
    assert isinstance(alert, LagBreached) and alert.subject == "prompting" and alert.value == 60
    assert alert.window_end == at(30) and "growing for 3 samples" in alert.message
    assert store.samples[-1][1] == [PartitionLag("prompting", "pipe", "q", 0, 100, 0, 100)]
    offsets.committed = 100  # the worker is back and caught up
    assert await watch.sample(at(60)) == []  # one pass: still open (resolve_after=2)
    [resolved] = await watch.sample(at(70))
    assert isinstance(resolved, AlertResolved) and resolved.alert_id == alert.alert_id
    assert resolved.message.startswith("resolved: prompting is 0 messages behind")
    assert published == [alert, resolved]
