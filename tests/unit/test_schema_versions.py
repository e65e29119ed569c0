"""Events written at schema version 1 still decode. The files in data/events_v1 are the
bytes that version 1's models encoded (written at commit c81e835, before version 2 moved
what served a request into one `Served` value); each must decode into today's model with
every value where version 1 had it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agents.telemetry import row, rows
from schemas import (
    ContextRetrieved,
    Event,
    InvalidEvent,
    PromptAssembled,
    QueryEmbedded,
    ResponseGenerated,
    Served,
    decode,
    encode,
    utc_now,
)
from schemas.envelope import SCHEMA_VERSION
from schemas.telemetry import StageCompleted

V1 = Path(__file__).parent / "data" / "events_v1"
# Where version 1 kept each field that is in `served` now, per event type.
RENAMED = {"template_id": "prompt", "template_version": "version"}
COMMON = ("template_id", "template_version", "label", "experiment", "arm", "retrieval_mode")
SPEC_V1 = (*COMMON, "model", "temperature", "seed", "hyde")
RESPONSE_V1 = (*COMMON, "temperature", "seed")
TELEMETRY_V1 = (*COMMON, "hyde")


def v1(name: str) -> tuple[bytes, dict[str, Any]]:
    data = (V1 / f"{name}.json").read_bytes()
    return data, json.loads(data)


def as_v1(fields: dict[str, Any], flat: tuple[str, ...]) -> dict[str, Any]:
    """A version 2 event's JSON in version 1's shape: `served` spread flat again ("" where
    there was none, as version 1 wrote it)."""
    fields = dict(fields)
    served = fields.pop("served")
    return {**fields, **{name: served[RENAMED.get(name, name)] if served else "" for name in flat}}


# Fields added since version 1 with defaults (no version bump): a version 1 event reads
# them as their defaults, and its row stores those in the columns of the later DDL.
ADDED_SINCE_V1: dict[str, Any] = {
    "context": {"passages_sent": 0, "passages_cut": 0, "tokens_sent": 0, "tokens_cut": 0, "counted_by": ""},
    "ttft_ms": None,
    "tokens_per_s": None,
    "context_passages": 0,
    "context_passages_cut": 0,
    "context_tokens": 0,
    "context_tokens_cut": 0,
    "tokens_counted_by": "",
    "conversation_id": "",
    "memory_turns": 0,
    "rendered_prompt": "",
    "passage_texts": {},
    "artifact_set": "",
    "artifact_ids": [],
}
# The same for the prompt spec inside the query events.
ADDED_TO_THE_SPEC: dict[str, Any] = {
    "conversation_id": None,
    "history": [],
    "condense_model": "",
    "condense_usage": {},
    "condense_ms": 0.0,
    "summary": "",
    "summarized": 0,
    "summarize_model": "",
    "summarize_usage": {},
    "summarize_ms": 0.0,
    "artifacts_k": 0,
}


def without_added(fields: dict[str, Any], added: dict[str, Any] = ADDED_SINCE_V1) -> dict[str, Any]:
    """`fields` less those added since version 1, which must hold their defaults."""
    for name, default in added.items():
        if name in fields:
            assert fields.pop(name) == default, name
    return fields


def same_as_v1(event: Event, old: dict[str, Any], flat: tuple[str, ...]) -> None:
    now = without_added(json.loads(encode(event)))
    if "prompt" in now:
        now["prompt"] = as_v1(without_added(now["prompt"], ADDED_TO_THE_SPEC), SPEC_V1)
    else:
        now = as_v1(now, flat)
    assert now == {**old, "schema_version": SCHEMA_VERSION}


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("prompt_assembled", PromptAssembled),
        ("query_embedded", QueryEmbedded),
        ("context_retrieved", ContextRetrieved),
    ],
)
def test_version_1_query_events_decode_with_the_prompt_spec_served(name, model):
    data, old = v1(name)
    event = decode(data, model)
    assert old["schema_version"] == 1 and event.schema_version == SCHEMA_VERSION == 2
    assert event.prompt.served == Served(
        prompt="rag-answer",
        version="0123456789ab",
        label="canary",
        experiment="exp-1",
        arm="canary",
        model="gpt-4o-mini",
        temperature=0.3,
        seed=7,
        retrieval_mode="hybrid",
        hyde="average",
    )
    same_as_v1(event, old, ())
    # Decoded once, the event is a version 2 event: encoding and decoding it changes nothing.
    assert decode(encode(event), model) == event


def test_version_1_response_decodes_with_what_served_it():
    data, old = v1("response_generated")
    response = decode(data, ResponseGenerated)
    # The model that answered stays beside `served`; version 1 responses did not say which
    # model the prompt asked for or its HyDE mode, so those are Served's defaults.
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.served == Served(
        prompt="rag-answer",
        version="0123456789ab",
        label="canary",
        experiment="exp-1",
        arm="canary",
        temperature=0.3,
        seed=7,
        retrieval_mode="hybrid",
    )
    same_as_v1(response, old, RESPONSE_V1)


@pytest.mark.parametrize("name", ["stage_completed", "stage_completed_unprompted"])
def test_version_1_telemetry_decodes_into_the_same_row(name):
    data, old = v1(name)
    event = decode(data, StageCompleted)
    same_as_v1(event, old, TELEMETRY_V1)
    if old["template_id"]:
        assert event.served is not None and event.served.hyde == "average" and event.model == old["model"]
    else:
        assert event.served is None
    # The sink writes the same columns with the same values as version 1 did: no DDL change.
    stored = json.loads((V1 / f"{name}.row.json").read_text())
    [now] = asyncio.run(rows([event], None))
    assert without_added(json.loads(json.dumps(now, default=str))) == stored


def test_a_row_without_a_served_prompt_has_empty_prompt_columns():
    at = utc_now()
    event = StageCompleted(
        trace_id="t",
        producer="indexing",
        stage="indexing",
        started_at=at,
        ended_at=at,
        latency_ms=0,
        status="ok",
    )
    columns = ("template_id", "template_version", "retrieval_mode", "label", "experiment", "arm", "hyde")
    assert {k: row(event)[k] for k in columns} == dict.fromkeys(columns, "")


def test_version_2_events_refuse_the_version_1_fields():
    _, old = v1("response_generated")
    with pytest.raises(InvalidEvent, match="template_id"):
        decode(json.dumps({**old, "schema_version": 2}).encode(), ResponseGenerated)


def test_version_1_telemetry_with_half_a_prompt_fails_loudly():
    _, old = v1("stage_completed_unprompted")
    with pytest.raises(InvalidEvent, match="served"):
        decode(json.dumps({**old, "label": "canary"}).encode(), StageCompleted)


def test_a_version_1_response_from_before_temperatures_were_recorded_decodes():
    _, old = v1("response_generated")
    early = {
        key: value
        for key, value in old.items()
        if key not in ("temperature", "seed", "label", "experiment", "arm")
    }
    response = decode(json.dumps(early).encode(), ResponseGenerated)
    assert response.served == Served(prompt="rag-answer", version="0123456789ab", retrieval_mode="hybrid")
