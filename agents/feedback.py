"""Feedback: check a rating against the configured rules, and store it with the prompt
version, model and tenant of the trace it rates. Feedback may arrive before the trace's
telemetry: it is stored with trace_seen = false, and the `Linker` links it once the
trace shows up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agents.telemetry import TextMode, redact
from connectors.ports import FeedbackLinks
from schemas.errors import PermanentError
from schemas.feedback import FeedbackReceived

STAGE = "feedback"


class FeedbackSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    numeric_min: float = Field(default=0.0, description="Lowest NUMERIC value accepted.")
    numeric_max: float = Field(default=5.0, description="Highest NUMERIC value accepted (1-5 stars fit).")
    categories: tuple[str, ...] = Field(
        default=(), description="CATEGORICAL labels accepted; empty accepts any label."
    )
    link_every_s: float = Field(
        default=10.0, gt=0, description="How often the leader sweeps unlinked feedback."
    )
    settle_s: int = Field(
        default=30, ge=0, description="The sweep leaves feedback younger than this to the targeted links."
    )


def check(event: FeedbackReceived, settings: FeedbackSettings) -> None:
    if event.data_type == "NUMERIC":
        value = float(event.value)
        if not settings.numeric_min <= value <= settings.numeric_max:
            raise PermanentError(
                f"NUMERIC feedback {value} is outside [{settings.numeric_min}, {settings.numeric_max}] "
                "(LLMOPS_FEEDBACK__NUMERIC_MIN / _MAX)"
            )
    if event.data_type == "CATEGORICAL" and settings.categories and event.value not in settings.categories:
        raise PermanentError(
            f"CATEGORICAL feedback {event.value!r} is not one of {list(settings.categories)}"
        )


async def rows(
    events: Sequence[FeedbackReceived],
    data: FeedbackLinks,
    settings: FeedbackSettings,
    text: TextMode = "keep",
) -> list[dict[str, Any] | BaseException]:
    """`text`: the telemetry text setting (keep, hash, drop), applied to comments."""
    facts = await data.trace_facts([e.trace_id for e in events])
    out: list[dict[str, Any] | BaseException] = []
    for event in events:
        try:
            check(event, settings)
        except PermanentError as exc:
            out.append(exc)
            continue
        trace = facts.get((event.trace_id, event.tenant))
        out.append(
            {
                "event_id": event.event_id,
                "trace_id": event.trace_id,
                "tenant": event.tenant,
                "occurred_at": event.occurred_at,
                "name": event.name,
                "data_type": event.data_type,
                "score": event.score,
                "category": event.value if isinstance(event.value, str) else "",
                "comment": redact(event.comment, text),
                "user": event.user or "",
                "trace_seen": trace is not None,
                "template_id": trace.template_id if trace else "",
                "template_version": trace.template_version if trace else "",
                "model": trace.model if trace else "",
                "revision": 0,
            }
        )
    return out


class Linker:
    """Links feedback to its trace as soon as both are stored, in the one process that
    holds both (telemetry and feedback are keyed by trace id and co-partitioned, so one
    analytics process gets both of a trace). A timer on the group leader sweeps up the
    rest (after a restart, say), only rows older than `settle_s`, so it never races the
    targeted links; a lock keeps this process's links one at a time."""

    def __init__(self, data: FeedbackLinks, settle_s: int = 30) -> None:
        self._data = data
        self._settle_s = settle_s
        self._lock = asyncio.Lock()
        self.pending: set[str] = set()

    async def link(self, traces: Iterable[str] = (), *, sweep: bool = False) -> None:
        named = sorted(traces)
        if not sweep and not named:
            return
        async with self._lock:
            await self._data.link_feedback(named, self._settle_s if sweep else 0)

    async def feedback_stored(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Hook after a feedback batch lands: try to link what arrived unlinked."""
        unlinked = {r["trace_id"] for r in rows if not r["trace_seen"]}
        self.pending |= unlinked
        await self.link(unlinked)  # the trace may have landed since the lookup

    async def telemetry_stored(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Hook after a telemetry batch lands: link feedback that was waiting for it."""
        arrived = self.pending & {r["trace_id"] for r in rows}
        if arrived:
            await self.link(arrived)
            self.pending -= arrived
