"""The stage consumer's decisions, with no I/O: which offsets a finished batch may store
(`OffsetBook`, generations per partition), and its idle mode's (`Quiet`: when to go idle;
`read_positions` and `grown`: when a probe of the log ends should wake it)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agents.runtime import Incoming

TP = tuple[str, int]  # (topic, partition)

# Nothing handed over for this long (and nothing in flight): the consumer goes idle.
IDLE_AFTER_S = 1.0


@dataclass
class Chunk:
    """Messages of one stage handed over together, with the generation of each of their
    partitions when they were fetched."""

    messages: list[Incoming]
    generations: dict[TP, int] = field(default_factory=dict)


class OffsetBook:
    """Which partitions this consumer holds, in which generation. A partition's generation
    grows at each assignment and each revoke, so a batch fetched under an older one is
    known to be stale: its offsets are not stored and, if not yet processed, it is dropped.
    Not thread-safe: the caller serialises the consumer thread's assign/revoke with the
    event loop's `to_store`."""

    def __init__(self) -> None:
        self._generation: dict[TP, int] = {}
        self._held: set[TP] = set()

    def assign(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._generation[tp] = self._generation.get(tp, 0) + 1
            self._held.add(tp)

    def revoke(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._generation[tp] = self._generation.get(tp, 0) + 1
            self._held.discard(tp)

    def stamp(self, messages: Sequence[Incoming]) -> dict[TP, int]:
        """The current generation of each partition of `messages`."""
        return {(m.topic, m.partition): self._generation.get((m.topic, m.partition), 0) for m in messages}

    def current(self, chunk: Chunk) -> bool:
        """Whether every partition of `chunk` is still held in the generation it was fetched in."""
        return all(tp in self._held and self._generation.get(tp) == g for tp, g in chunk.generations.items())

    def to_store(self, chunks: Sequence[Chunk]) -> list[tuple[str, int, int]]:
        """(topic, partition, offset to store) once `chunks` are handled: one past the
        highest offset of each partition still held in its chunk's generation."""
        best: dict[TP, int] = {}
        for chunk in chunks:
            for m in chunk.messages:
                tp = (m.topic, m.partition)
                if tp in self._held and self._generation.get(tp) == chunk.generations.get(tp):
                    best[tp] = max(best.get(tp, -1), m.offset + 1)
        return [(topic, partition, offset) for (topic, partition), offset in sorted(best.items())]


class Quiet:
    """Whether the stage consumer may go idle: nothing handed over for `after_s` (and
    nothing since an assignment or a backpressure pause, which count as busy), nothing
    handed over and not finished. The caller passes the time."""

    def __init__(self, after_s: float, now: float) -> None:
        self._after_s = after_s
        self._busy_at = now

    def busy(self, now: float) -> None:
        self._busy_at = now

    def idle(self, now: float, in_flight: int) -> bool:
        return in_flight == 0 and now - self._busy_at >= self._after_s


def read_positions(
    delivered: dict[TP, int], committed: dict[TP, int], earliest: dict[TP, int]
) -> dict[TP, int]:
    """Where the consumer reads next in each partition: past the last message it delivered;
    for one it delivered nothing from, the committed offset, else the log's start
    (auto.offset.reset=earliest). Negative offsets are librdkafka's "unknown"."""
    result = {}
    for tp in delivered.keys() | committed.keys() | earliest.keys():
        for known in (delivered.get(tp, -1), committed.get(tp, -1), earliest.get(tp, -1)):
            if known >= 0:
                result[tp] = known
                break
    return result


def grown(ends: dict[TP, int | None], positions: dict[TP, int]) -> bool:
    """Whether a partition's log end is past where the consumer reads next. A partition
    whose end is unknown (None: the broker did not say) or whose position is unknown
    counts as grown: waking to fetch costs a second of fetching, sleeping past a message
    costs an answer."""
    return any(end is None or tp not in positions or end > positions[tp] for tp, end in ends.items())
