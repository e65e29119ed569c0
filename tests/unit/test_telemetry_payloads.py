"""The generation's payloads in telemetry (the console's trace page): the prompt as the
model got it and each sent passage's text, cut to the limit, kept only when allowed, and
never on the wire of the response nor in OTLP spans."""

from __future__ import annotations

import pytest

from agents.telemetry import TelemetrySettings, stage_completed
from schemas import ContextRetrieved, Passage, PromptSpec, ResponseGenerated, Served, encode, utc_now

SERVED = Served(prompt="rag", version="7", temperature=0)
SPEC = PromptSpec(
    served=SERVED,
    system="Answer from the context.",
    template="Context:\n$context\n\nQuestion: $question",
    variables={"question": "why <b>?"},
    retrieval_text="why?",
    top_k=2,
    max_tokens=5,
)
PASSAGES = [
    Passage(id=f"p{i}", doc_id="d", title=f"T{i}", text=f"passage {i} " + "x" * 50, chunk=i, score=1.0)
    for i in range(3)
]
PROMPT = "[system]\nAnswer from the context.\n\n[user]\nContext:\n[1] T0\npassage 0 ...\n\nQuestion: why <b>?"
T0 = utc_now()


def generated(sent: list[Passage]) -> tuple[ContextRetrieved, ResponseGenerated]:
    source = ContextRetrieved(trace_id="t", producer="r", prompt=SPEC, passages=PASSAGES)
    out = ResponseGenerated(
        trace_id="t",
        producer="g",
        question="why <b>?",
        answer="a",
        citations=[],
        passages=sent,
        model="m",
        served=SERVED,
        rendered_prompt=PROMPT,
    )
    return source, out


def test_the_prompt_as_sent_and_the_sent_passages_are_kept():
    sent = [PASSAGES[0], PASSAGES[2].model_copy(update={"text": "cut to fit"})]
    source, out = generated(sent)
    r = stage_completed("generation", source, out, T0, T0, "t", "default", TelemetrySettings())
    assert r.rendered_prompt == PROMPT
    assert r.passage_texts == {"p0": PASSAGES[0].text, "p2": "cut to fit"}


def test_the_response_on_the_wire_does_not_carry_the_prompt():
    _, out = generated(PASSAGES)
    assert b"Answer from the context" not in encode(out)
    assert "rendered_prompt" not in ResponseGenerated.model_json_schema()["properties"]


def test_payloads_are_cut_to_the_limit():
    source, out = generated(PASSAGES)
    settings = TelemetrySettings(payload_max_chars=20)
    r = stage_completed("generation", source, out, T0, T0, "t", "default", settings)
    assert r.rendered_prompt == PROMPT[:20]
    assert r.passage_texts == {p.id: p.text[:20] for p in PASSAGES}


@pytest.mark.parametrize("settings", [TelemetrySettings(keep_payloads=False), TelemetrySettings(text="hash")])
def test_no_payloads_when_off_or_when_text_is_not_kept(settings):
    source, out = generated(PASSAGES)
    r = stage_completed("generation", source, out, T0, T0, "t", "default", settings)
    assert r.rendered_prompt == "" and r.passage_texts == {}


def test_other_stages_carry_no_payloads():
    source, _ = generated(PASSAGES)
    r = stage_completed("retrieval", None, source, T0, T0, "t", "default", TelemetrySettings())
    assert r.rendered_prompt == "" and r.passage_texts == {}


@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_otlp_spans_never_carry_the_payloads(mode):
    from connectors.otlp import OtlpSettings, SpanBuilder

    source, out = generated(PASSAGES)
    r = stage_completed("generation", source, out, T0, T0, "t", "default", TelemetrySettings())
    assert r.rendered_prompt and r.passage_texts
    spans = SpanBuilder(OtlpSettings(text=mode)).spans([r])
    values = [str(v) for span in spans for v in (span.attributes or {}).values()]
    assert not [v for v in values if "passage 0" in v or "Answer from the context" in v], values
