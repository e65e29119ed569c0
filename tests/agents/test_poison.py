"""Poison input, property-based: every stage of the graph, with its real decode, handler
and dead-letter path (fake topics and clients), gets random bytes, JSON of any shape,
valid events with one field of a wrong type, deep nesting, odd unicode and oversized
payloads. The property: the runner never raises, and each message ends as exactly one
output or exactly one dead letter with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.config import PipelineSettings
from agents.deps import Dependencies
from agents.runtime import Incoming, RuntimeSettings, StageRunner
from connectors.llm import ExtractiveBackend, LLMSettings
from schemas import (
    ContextRetrieved,
    DeadLetter,
    DocumentSubmitted,
    Passage,
    PromptAssembled,
    QueryEmbedded,
    QueryReceived,
    decode,
    encode,
)
from schemas.artifacts import ArtifactContent, ArtifactsSubmitted
from tests.agents.test_handlers import FakeEmbedder, FakeStore
from tests.agents.test_runtime import SPEC, Topic
from topology.graph import STAGES

LIMIT = 4096  # max_event_bytes here, so oversized payloads stay cheap to generate
VALID = {
    "QueryReceived": QueryReceived(trace_id="t", producer="p", question="what is a lambda?"),
    "PromptAssembled": PromptAssembled(trace_id="t", producer="p", prompt=SPEC),
    "QueryEmbedded": QueryEmbedded(
        trace_id="t", producer="p", prompt=SPEC, vector=[0.1, 0.2, 0.3], embedding_model="m"
    ),
    "ContextRetrieved": ContextRetrieved(
        trace_id="t",
        producer="p",
        prompt=SPEC,
        passages=[
            Passage(id="a", doc_id="d", title="T", text="Lambdas are small functions.", chunk=0, score=1.0)
        ],
    ),
    "DocumentSubmitted": DocumentSubmitted(
        trace_id="t", producer="p", doc_id="d", text="Some words to index."
    ),
    "ArtifactsSubmitted": ArtifactsSubmitted(
        trace_id="t", producer="p", prompt="rag-answer", artifacts=[ArtifactContent(text="An example.")]
    ),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
odd_text = st.text(st.characters(codec=None, categories=None), min_size=1, max_size=200)


@st.composite
def poison(draw: Any, model: str) -> bytes:
    valid = json.loads(encode(VALID[model]))
    kind = draw(st.sampled_from(["bytes", "json", "wrong_type", "nesting", "unicode", "oversized"]))
    if kind == "bytes":
        return draw(st.binary(max_size=500))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "wrong_type":
        field = draw(st.sampled_from(sorted(valid)))
        return json.dumps({**valid, field: draw(json_values)}).encode()
    if kind == "nesting":
        depth = draw(st.integers(100, 50_000))
        return ("[" * depth + "]" * depth).encode()
    if kind == "unicode":  # every text field odd, lone surrogates included (JSON escapes them)
        texts = {
            k: draw(odd_text) for k, v in valid.items() if isinstance(v, str) and k not in ("event_type",)
        }
        return json.dumps({**valid, **texts}).encode()
    return json.dumps({**valid, "pad": "x" * draw(st.integers(LIMIT, 3 * LIMIT))}).encode()


def runner(stage: Any) -> tuple[StageRunner, Topic, Topic]:
    out, dlq = Topic(), Topic()
    deps = Dependencies(
        pipeline=PipelineSettings(),
        embedder=FakeEmbedder(),
        store=FakeStore(),
        llm=ExtractiveBackend(LLMSettings()),
    )
    return (
        StageRunner(
            name=stage.name,
            input_model=stage.input_model,
            handler=stage.handler,
            deps=deps,
            emit=out.send,
            dead_letter=dlq.send,
            reply=Topic().send,
            settings=RuntimeSettings(max_attempts=1, max_event_bytes=LIMIT),
        ),
        out,
        dlq,
    )


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_no_message_crashes_a_stage_and_each_bad_one_is_dead_lettered(stage):
    model = stage.input_model.__name__

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payload=poison(model))
    def check(payload: bytes) -> None:
        import asyncio

        run, out, dlq = runner(stage)
        asyncio.run(
            run.process([Incoming(topic=stage.consumes, partition=0, offset=7, key=None, value=payload)])
        )
        assert len(out.sent) + len(dlq.sent) == 1, (len(out.sent), len(dlq.sent))
        for _, value in dlq.sent:
            letter = decode(value, DeadLetter)
            assert letter.reason and letter.stage == stage.name and letter.offset == 7
            assert letter.original == payload[: len(letter.original)]
            assert letter.truncated == (len(payload) > len(letter.original))
            if len(payload) > LIMIT:
                assert "LLMOPS_WORKER__RUNTIME__MAX_EVENT_BYTES" in letter.reason
        for _, value in out.sent:  # what passed must encode and decode as its stage's output
            decode(value, stage.output_model)

    check()
