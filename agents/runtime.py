"""The one runtime that turns a handler into an agent: decode -> handle -> emit (always
with the trace id as key) -> dead-letter. Errors are caught per event inside the loop:
permanent ones are dead-lettered at once, transient ones retried with bounded backoff
first. A request that fails also gets a RequestFailed reply, so no client waits for a
timeout. Nothing here knows which stage it runs."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.telemetry import TelemetrySettings, stage_completed
from schemas import DeadLetter, Event, RequestFailed, decode, encode, new_id, utc_now
from schemas.deadletter import ORIGINAL_KEPT
from schemas.envelope import TENANT_PATTERN
from schemas.errors import InvalidEvent, LLMOpsError, TransientError

log = logging.getLogger(__name__)

In = TypeVar("In", bound=Event)
Out = TypeVar("Out", bound=Event)
D = TypeVar("D")
T = TypeVar("T")
# A batch handler returns one result per input, in order: an event to emit, None for
# nothing to emit, or the exception that this input failed with.
Result = Event | None | BaseException
BatchHandler = Callable[[Sequence[Any], Any], Awaitable[Sequence[Result]]]
# (the event a stage took or None, its output or error) -> the deliveries of what it sent.
Announce = Callable[[Event | None, Event | BaseException], Awaitable[list[Awaitable[Any]]]]
# A StageCompleted report as sent: (key, value).
Report = tuple[bytes, bytes]


class Backoff(BaseModel):
    """Retry delays: `first_s`, doubling each attempt, never more than `max_s`."""

    model_config = ConfigDict(frozen=True)

    first_s: float = Field(default=0.2, ge=0, description="First retry delay; doubles each time.")
    max_s: float = Field(default=5.0, ge=0, description="Longest delay between two tries.")

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1 for the first)."""
        return min(self.first_s * 2 ** (attempt - 1), self.max_s)


def accept_flat_backoff(data: Any) -> Any:
    """Accept the flat keys of earlier versions (LLMOPS_SINK__BACKOFF_S, ..._BACKOFF_MAX_S,
    and the runtime's) as the nested `backoff` section."""
    if not isinstance(data, dict) or not ({"backoff_s", "backoff_max_s"} & data.keys()):
        return data
    data = dict(data)
    nested = data.get("backoff")
    merged = dict(nested) if isinstance(nested, dict) else (nested.model_dump() if nested else {})
    if "backoff_s" in data:
        merged["first_s"] = data.pop("backoff_s")
    if "backoff_max_s" in data:
        merged["max_s"] = data.pop("backoff_max_s")
    data["backoff"] = merged
    return data


async def until_done(name: str, what: str, step: Callable[[], Awaitable[T]], backoff: Backoff) -> T:
    """Retry `step` with backoff until it succeeds (for work that must not be dropped:
    a sink's batch stays unacknowledged meanwhile, so the broker keeps it). Every error is
    retried; ones not marked transient (our own SQL, say) are logged as errors, since an
    operator can fix them (apply migrations) without losing a batch."""
    attempt = 1
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = backoff.delay(attempt)
            level = logging.WARNING if isinstance(exc, TransientError) else logging.ERROR
            log.log(level, "%s: %s failed (%s); retrying in %.1fs", name, what, str(exc)[:300], delay)
            await asyncio.sleep(delay)
            attempt += 1


class RuntimeSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_max: int = Field(default=64, ge=1, description="Events per micro-batch.")
    batch_within_s: float = Field(
        default=0.005, gt=0, description="Longest wait to fill a micro-batch (adds latency)."
    )
    max_attempts: int = Field(default=4, ge=1, description="Tries before a transient error dead-letters.")
    max_event_bytes: int = Field(
        default=1_000_000, ge=1024, description="Larger messages are dead-lettered unread (poison guard)."
    )
    backoff: Backoff = Field(default=Backoff(), description="Between tries of a transient error.")

    _flat = model_validator(mode="before")(accept_flat_backoff)


def per_event(handler: Callable[[In, D], Awaitable[Out | None]]) -> BatchHandler:
    """Run a one-event handler over a batch, concurrently, one result per event."""

    async def batch(events: Sequence[In], deps: D) -> Sequence[Result]:
        results = await asyncio.gather(*(handler(e, deps) for e in events), return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
        return results

    batch.__name__ = getattr(handler, "__name__", "handler")
    batch.__module__ = getattr(handler, "__module__", __name__)
    return batch


class StageObserver(Protocol):
    """Process-local facts about a stage's batches (the worker's /metrics)."""

    def batch(self, stage: str, events: int) -> None:
        """A micro-batch of `events` messages came in."""

    def handled(self, stage: str, seconds: float) -> None:
        """One handler call (one attempt over the batch's pending events) took `seconds`."""

    def outcome(self, stage: str, outcome: str) -> None:
        """An event's outcome: "ok", "retried" (once per retry) or "dead_lettered"."""


@dataclass(frozen=True)
class Incoming:
    """One consumed message, as the runtime needs it (faust's EventT adapts to this)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class StageRunner:
    name: str
    input_model: type[Event]
    handler: BatchHandler
    deps: Any
    emit: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]
    dead_letter: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]
    reply: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]] | None
    settings: RuntimeSettings
    # Where StageCompleted reports go (the telemetry topic); None: not reported.
    telemetry: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]] | None = None
    telemetry_settings: TelemetrySettings = TelemetrySettings()
    # Topics that carry more than one event type decode with their own function.
    decoder: Callable[[bytes | None], Event] | None = None
    # What else an outcome (an output event or the error an event failed with) makes the
    # stage send, after its output: the awaitables of those deliveries.
    announce: Announce | None = None
    observer: StageObserver | None = None
    # The stage that reads this one's output topic, when it runs in the same process and
    # takes the outputs in-process instead (chained): no encode, broker hop or decode.
    then: StageRunner | None = None
    topic: str = ""  # the topic this stage reads: where its chained events' dead letters point

    async def process(self, batch: Sequence[Incoming]) -> None:
        """Handle one micro-batch; returns once every output is acknowledged by the broker,
        so the caller may commit the batch's offsets."""
        await asyncio.gather(*await self.dispatch(batch))

    async def dispatch(self, batch: Sequence[Incoming]) -> list[Awaitable[Any]]:
        """Handle one micro-batch and queue its outputs; returns their deliveries, which
        must all succeed before the batch's offsets may be committed."""
        deliveries: list[Awaitable[Any]] = []
        pending: list[tuple[Incoming | None, Event]] = []
        started_at = utc_now()
        if self.observer is not None:
            self.observer.batch(self.name, len(batch))
        for message in batch:
            try:
                size = len(message.value or b"")
                if size > self.settings.max_event_bytes:
                    raise InvalidEvent(
                        f"{size} bytes where at most {self.settings.max_event_bytes} are accepted "
                        "(LLMOPS_WORKER__RUNTIME__MAX_EVENT_BYTES)"
                    )
                if self.decoder is not None:
                    pending.append((message, self.decoder(message.value)))
                else:
                    pending.append((message, decode(message.value, self.input_model)))
            except InvalidEvent as exc:
                deliveries += await self._fail(message, None, exc, 1, started_at)
        return deliveries + await self._handle(pending, started_at, [])

    async def take(self, events: Sequence[Event], held: Sequence[Report] = ()) -> list[Awaitable[Any]]:
        """Handle the outputs of the stage chained before this one, as `dispatch` handles
        a micro-batch read from the topic (they are decoded already). `held`: the earlier
        stages' StageCompleted reports, sent with the chain's last outputs."""
        if self.observer is not None:
            self.observer.batch(self.name, len(events))
        return await self._handle([(None, event) for event in events], utc_now(), list(held))

    async def _handle(
        self, pending: list[tuple[Incoming | None, Event]], started_at: datetime, held: list[Report]
    ) -> list[Awaitable[Any]]:
        deliveries: list[Awaitable[Any]] = []
        chained: list[Event] = []
        attempt = 1
        while pending:
            started = time.perf_counter()
            results = await self._call([event for _, event in pending])
            elapsed_ms = (time.perf_counter() - started) * 1000
            if self.observer is not None:
                self.observer.handled(self.name, elapsed_ms / 1000)
            retry: list[tuple[Incoming | None, Event]] = []
            for (message, event), result in zip(pending, results, strict=True):
                if isinstance(result, TransientError) and attempt < self.settings.max_attempts:
                    retry.append((message, event))
                    self._observe("retried")
                elif isinstance(result, BaseException):
                    deliveries += await self._fail(message, event, result, attempt, started_at, held)
                elif result is not None:
                    self._observe("ok")
                    result = _with_timing(result, event, self.name, elapsed_ms)
                    if self.then is None:
                        deliveries.append(await self.emit(result.trace_id.encode(), encode(result)))
                    else:
                        chained.append(result)
                    deliveries += await self._report(
                        event, result, event.trace_id, event.tenant, started_at, held
                    )
                    deliveries += await self._announce(event, result)
                else:
                    self._observe("ok")
                    deliveries += await self._report(
                        event, None, event.trace_id, event.tenant, started_at, held
                    )
            if self.then is None and held:  # the last stage: reports in the order of the stages
                assert self.telemetry is not None
                deliveries += [await self.telemetry(key, value) for key, value in held]
                held.clear()
            pending = retry
            if pending:
                delay = self.settings.backoff.delay(attempt)
                log.warning("%s: retrying %d event(s) in %.2fs", self.name, len(pending), delay)
                await asyncio.sleep(delay)
                attempt += 1
        if chained:
            # A delivery like the others: the batch's offsets wait for the whole chain's
            # outputs, while this stage goes on to its next batch.
            deliveries.append(asyncio.ensure_future(self._hand_on(chained, held)))
        elif held:
            assert self.telemetry is not None
            deliveries += [await self.telemetry(key, value) for key, value in held]
        return deliveries

    async def _hand_on(self, events: list[Event], held: list[Report]) -> None:
        assert self.then is not None
        await asyncio.gather(*await self.then.take(events, held))

    def _observe(self, outcome: str) -> None:
        if self.observer is not None:
            self.observer.outcome(self.name, outcome)

    async def _call(self, events: list[Event]) -> Sequence[Result]:
        try:
            results = await self.handler(events, self.deps)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the whole batch failed
            if len(events) > 1 and not isinstance(exc, TransientError):
                # One poison event must not sink its batch-mates: find it by going one by one.
                return [result for event in events for result in await self._call([event])]
            return [exc] * len(events)
        if len(results) != len(events):
            error = RuntimeError(f"{self.name} returned {len(results)} results for {len(events)} events")
            return [error] * len(events)
        return results

    async def _fail(
        self,
        message: Incoming | None,
        event: Event | None,
        error: BaseException,
        attempts: int,
        started_at: datetime,
        held: list[Report] | None = None,
    ) -> list[Awaitable[Any]]:
        if message is None:  # handed over in-process: never on a partition
            assert event is not None
            message = Incoming(self.topic, -1, -1, event.trace_id.encode(), encode(event))
        letter = dead_letter_for(self.name, message, event, error, attempts)
        self._observe("dead_lettered")
        known_trace = _identify(message, event)[0]
        trace_id, tenant = letter.trace_id, letter.tenant
        sent = [await self.dead_letter(trace_id.encode(), encode(letter))]
        sent += await self._report(event, error, trace_id, tenant, started_at, held)
        if self.reply is not None and known_trace is not None:
            failed = RequestFailed(
                trace_id=trace_id,
                tenant=tenant,
                producer=self.name,
                stage=self.name,
                error_type=letter.error_type,
                reason=letter.reason,
            )
            sent.append(await self.reply(trace_id.encode(), encode(failed)))
        return sent + await self._announce(event, error)

    async def _announce(self, source: Event | None, outcome: Event | BaseException) -> list[Awaitable[Any]]:
        if self.announce is None:
            return []
        try:
            return await self.announce(source, outcome)
        except Exception:  # the event itself went on; what it announces is logged as lost
            trace = getattr(source, "trace_id", "?")
            log.exception("%s: announcing the outcome of trace %s failed", self.name, trace)
            return []

    async def _report(
        self,
        source: Event | None,
        outcome: Event | BaseException | None,
        trace_id: str,
        tenant: str,
        started_at: datetime,
        held: list[Report] | None = None,
    ) -> list[Awaitable[Any]]:
        """Send the StageCompleted report, or hold it (`held`): a batch's reports go after
        its outputs, a chain's with its last stage's, in the order of the stages (the
        OTLP request span is built when the last stage's report comes): one produce
        request, not one per stage."""
        if self.telemetry is None or not self.telemetry_settings.enabled:
            return []
        try:
            completed = stage_completed(
                self.name, source, outcome, started_at, utc_now(), trace_id, tenant, self.telemetry_settings
            )
        except Exception:  # a bug in reporting must not stop the pipeline: the event itself went on
            log.exception("%s: no telemetry for trace %s", self.name, trace_id)
            return []
        report = (trace_id.encode(), encode(completed))
        if held is not None:
            held.append(report)
            return []
        return [await self.telemetry(*report)]


def dead_letter_for(
    stage: str, message: Incoming, event: Event | None, error: BaseException, attempts: int
) -> DeadLetter:
    """The dead letter for a message that failed: original bytes, where it came from,
    why, and after how many attempts. Logged, since a person will have to look."""
    if not isinstance(error, LLMOpsError):  # not raised on purpose: a bug to look at
        log.error("%s: unexpected %r", stage, error, exc_info=error)
    known_trace, tenant = _identify(message, event)
    original = message.value or b""
    letter = DeadLetter(
        trace_id=known_trace if known_trace is not None else new_id(),
        tenant=tenant,
        producer=stage,
        stage=stage,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        original=original[:ORIGINAL_KEPT],
        original_size=len(original),
        truncated=len(original) > ORIGINAL_KEPT,
        error_type=type(error).__name__,
        reason=str(error)[:2_000] or repr(error),
        attempts=attempts,
        permanent=not isinstance(error, TransientError),
    )
    log.warning(
        "%s: dead-lettered %s@%d:%d (%s: %s)",
        stage,
        message.topic,
        message.partition,
        message.offset,
        letter.error_type,
        letter.reason[:200],
    )
    return letter


def _with_timing(result: Event, source: Event, stage: str, elapsed_ms: float) -> Event:
    if "latency_ms" not in type(result).model_fields:
        return result
    timings = dict(getattr(source, "latency_ms", {}))
    timings[stage] = round(elapsed_ms, 3)
    return result.model_copy(update={"latency_ms": timings})


def _identify(message: Incoming, event: Event | None) -> tuple[str | None, str]:
    """The trace id and tenant of a failed message, recovered from raw JSON if need be, so
    the client still hears about it; None when the message names no usable trace id."""
    if event is not None:
        return event.trace_id, event.tenant
    raw = None
    if len(message.value or b"") <= ORIGINAL_KEPT:  # never parse what was refused for its size
        try:
            raw = json.loads(message.value or b"")
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting is poison too
            raw = None
    trace_id = raw.get("trace_id") if isinstance(raw, dict) else None
    tenant = raw.get("tenant") if isinstance(raw, dict) else None
    if not isinstance(tenant, str) or not re.fullmatch(TENANT_PATTERN, tenant):
        tenant = "default"
    if isinstance(trace_id, str) and 0 < len(trace_id) <= 128 and _utf8(trace_id):
        return trace_id, tenant
    return None, tenant


def _utf8(text: str) -> bool:
    """False for strings Python's json accepts but UTF-8 cannot carry (lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
