"""OTLP export of the telemetry (off unless an endpoint is set): every request becomes one
OpenTelemetry trace whose id is ours (a trace id is 32 hex digits, as OTLP's are), with a
span per stage under one request span, and under each GenAI stage a CLIENT span for its
call (chat, embeddings, retrieval) carrying the GenAI attributes (semantic-conventions-genai,
Development status) beside ours under `llmops.`. Spans are built from StageCompleted
events, timed as they were recorded, and sent with the SDK's OTLP/HTTP exporter; the
analytics process acknowledges a batch only once it is exported (or dead-lettered)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas import StageCompleted
from schemas.errors import TransientError

log = logging.getLogger(__name__)
OPERATIONS = {"generation": "chat", "embedding": "embeddings", "retrieval": "retrieval"}


class OtlpSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL (e.g. http://collector:4318/v1/traces); unset: no export.",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, description="Per export call, the SDK's own retries included."
    )
    attempts: int = Field(
        default=5, ge=1, description="Export calls per batch before its events are dead-lettered."
    )
    backoff_s: float = Field(default=1.0, ge=0, description="Wait before the second call, doubling after.")
    service_name: str = "llmops-stream"
    text: Literal["keep", "hash", "drop"] = Field(
        default="drop",
        description="Question and answer on the spans: as they are, as a SHA-256, or not at all.",
    )
    providers: dict[str, str] = Field(
        default_factory=lambda: {
            "generation": "openai",
            "embedding": "llmops.onnxruntime",
            "retrieval": "milvus",
        },
        description="gen_ai.provider.name per GenAI stage; unset, generation's follows the LLM backend.",
    )


def _id(text: str, bits: int) -> int:
    """A nonzero id of `bits` bits derived from `text`."""
    value = int(hashlib.sha256(text.encode()).hexdigest()[: bits // 4], 16)
    return value or 1


def trace_id(ours: str) -> int:
    """Our trace id is a uuid4's hex: the same 128 bits; anything else is hashed."""
    try:
        value = int(ours, 16)
    except ValueError:
        value = 0
    return value if len(ours) == 32 and value else _id(ours, 128)


def request_span_id(ours: str) -> int:
    return _id(f"{ours}/request", 64)


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


def _text(value: str, mode: str) -> str | None:
    if not value or mode == "drop":
        return None
    return value if mode == "keep" else "sha256:" + hashlib.sha256(value.encode()).hexdigest()


class SpanBuilder:
    """Turns StageCompleted events into SDK spans. Remembers each recent trace's first
    start so that the request span, sent with the generation stage's event, spans the
    whole request (after a restart: from the first stage seen since)."""

    def __init__(self, settings: OtlpSettings, remember: int = 100_000) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._settings = settings
        self._resource = Resource.create({"service.name": settings.service_name})
        self._scope = InstrumentationScope("llmops-stream")
        self._first: OrderedDict[str, datetime] = OrderedDict()
        self._remember = remember

    def spans(self, events: Sequence[StageCompleted]) -> list[Any]:
        out: list[Any] = []
        for e in events:
            first = min(self._first.pop(e.trace_id, e.started_at), e.started_at)
            self._first[e.trace_id] = first
            while len(self._first) > self._remember:
                self._first.popitem(last=False)
            out += self._for(e, first)
        return out

    def _for(self, e: StageCompleted, first: datetime) -> list[Any]:
        from opentelemetry.trace import SpanKind

        trace, request = trace_id(e.trace_id), request_span_id(e.trace_id)
        stage_span = _id(e.event_id, 64)
        attributes: dict[str, Any] = {"llmops.stage": e.stage, "llmops.tenant": e.tenant}
        if e.served is not None:
            attributes.update(
                {
                    "llmops.prompt.name": e.served.prompt,
                    "llmops.prompt.version": e.served.version,
                    "llmops.prompt.label": e.served.label,
                    "llmops.experiment": e.served.experiment,
                    "llmops.arm": e.served.arm,
                    "llmops.retrieval_mode": e.served.retrieval_mode,
                }
            )
        if e.status == "error":
            attributes["error.type"] = e.error_class or "_OTHER"
        spans = [self._span(e.stage, trace, stage_span, request, e.started_at, e.ended_at, attributes, e)]
        operation = OPERATIONS.get(e.stage)
        if operation is not None:
            call: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": self._settings.providers.get(e.stage, "_OTHER"),
            }
            if e.model:
                call["gen_ai.request.model"] = e.model
            if operation in ("chat", "embeddings") and e.input_tokens:
                call["gen_ai.usage.input_tokens"] = e.input_tokens
            if operation == "chat" and e.output_tokens:
                call["gen_ai.usage.output_tokens"] = e.output_tokens
            if e.status == "error":
                call["error.type"] = e.error_class or "_OTHER"
            name = f"{operation} {e.model}" if e.model else operation
            call_span = _id(f"{e.event_id}/call", 64)
            spans.append(
                self._span(
                    name, trace, call_span, stage_span, e.started_at, e.ended_at, call, e, SpanKind.CLIENT
                )
            )
        if e.stage == "generation":
            request_attributes: dict[str, Any] = {"llmops.tenant": e.tenant}
            for key, value in (("llmops.question", e.question), ("llmops.answer", e.answer)):
                kept = _text(value, self._settings.text)
                if kept is not None:
                    request_attributes[key] = kept
            spans.append(
                self._span("request", trace, request, None, first, e.ended_at, request_attributes, e)
            )
        return spans

    def _span(
        self,
        name: str,
        trace: int,
        span: int,
        parent: int | None,
        start: datetime,
        end: datetime,
        attributes: dict[str, Any],
        e: StageCompleted,
        kind: Any = None,
    ) -> Any:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        flags = TraceFlags(TraceFlags.SAMPLED)
        status = (
            Status(StatusCode.ERROR, e.error_class)
            if e.status == "error" and parent is not None
            else Status()
        )
        return ReadableSpan(
            name,
            context=SpanContext(trace, span, is_remote=False, trace_flags=flags),
            parent=SpanContext(trace, parent, is_remote=False, trace_flags=flags)
            if parent is not None
            else None,
            resource=self._resource,
            attributes=attributes,
            kind=kind if kind is not None else SpanKind.INTERNAL,
            status=status,
            start_time=_ns(start),
            end_time=_ns(end),
            instrumentation_scope=self._scope,
        )


class OtlpExport:
    """Exports batches of telemetry events; `export` returns once the collector took them
    and raises TransientError after `attempts` failed calls."""

    def __init__(self, settings: OtlpSettings) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if settings.endpoint is None:
            raise ValueError("OTLP export needs an endpoint (LLMOPS_OTLP__ENDPOINT)")
        self._settings = settings
        self._builder = SpanBuilder(settings)
        self._exporter = OTLPSpanExporter(endpoint=settings.endpoint, timeout=settings.timeout_s)

    async def export(self, events: Sequence[StageCompleted]) -> int:
        from opentelemetry.sdk.trace.export import SpanExportResult

        spans = self._builder.spans(events)
        delay = self._settings.backoff_s
        for attempt in range(1, self._settings.attempts + 1):
            result = await asyncio.to_thread(self._exporter.export, spans)
            if result is SpanExportResult.SUCCESS:
                return len(spans)
            log.warning("OTLP export of %d spans failed (attempt %d)", len(spans), attempt)
            if attempt < self._settings.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        raise TransientError(
            f"OTLP export to {self._settings.endpoint} failed {self._settings.attempts} times"
        )

    def close(self) -> None:
        self._exporter.shutdown()
