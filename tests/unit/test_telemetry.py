"""StageCompleted events: facts by output type, cost from the price table."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agents.telemetry import ModelPrice, TelemetrySettings, priced, redact, stage_completed
from schemas import ContextRetrieved, Passage, PromptSpec, QueryReceived, ResponseGenerated, Served, utc_now
from schemas.errors import TransientError

SERVED = Served(prompt="rag", version="7", temperature=0)
SPEC = PromptSpec(
    served=SERVED,
    system="s",
    template="$question",
    variables={"question": "why?"},
    retrieval_text="why?",
    top_k=2,
    max_tokens=5,
)
PRICES = TelemetrySettings(prices={"m": ModelPrice(input_per_mtok=2.0, output_per_mtok=8.0)})
T0 = utc_now()


def test_generation_records_model_tokens_cost_answer_and_prompt_version():
    out = ResponseGenerated(
        trace_id="t",
        producer="g",
        tenant="acme",
        question="why?",
        answer="because [1]",
        citations=["p1"],
        passages=[],
        model="m",
        served=SERVED,
        usage_details={"input": 1_000, "output": 250},
    )
    r = stage_completed("generation", None, out, T0, T0 + timedelta(milliseconds=12), "t", "acme", PRICES)
    assert (r.model, r.input_tokens, r.output_tokens) == ("m", 1_000, 250)
    assert r.cost_usd == pytest.approx((1_000 * 2.0 + 250 * 8.0) / 1e6)
    assert r.priced and r.status == "ok" and r.latency_ms == pytest.approx(12)
    assert r.served is not None and (r.served.prompt, r.served.version) == ("rag", "7")
    assert (r.answer, r.citations) == ("because [1]", ["p1"])


def test_retrieval_records_passage_ids_and_scores_in_rank_order():
    passages = [
        Passage(id=f"p{i}", doc_id="d", title="t", text="x", chunk=i, score=1 - i / 10) for i in range(3)
    ]
    out = ContextRetrieved(trace_id="t", producer="r", prompt=SPEC, passages=passages)
    r = stage_completed("retrieval", None, out, T0, T0, "t", "default", PRICES)
    assert r.passage_ids == ["p0", "p1", "p2"] and r.passage_scores == [1.0, 0.9, 0.8]
    assert r.served == SERVED and r.model == ""


def test_a_failure_records_its_error_class_and_the_prompt_of_its_input():
    source = ContextRetrieved(trace_id="t", producer="r", prompt=SPEC, passages=[])
    r = stage_completed("generation", source, TransientError("429"), T0, T0, "t", "default", PRICES)
    assert r.status == "error" and r.error_class == "TransientError" and r.served == SERVED
    assert r.cost_usd == 0


def test_an_unknown_model_costs_nothing_and_says_it_is_unpriced():
    assert priced(PRICES.prices, "who-knows", 10, 10) == (0.0, False)
    assert priced(PRICES.prices, "m", 0, 0) == (0.0, True)


def test_a_stage_without_output_or_model_is_priced_trivially():
    query = QueryReceived(trace_id="t", producer="c", question="q")
    r = stage_completed("prompting", query, None, T0, T0, "t", "default", PRICES)
    assert r.priced and r.cost_usd == 0 and r.status == "ok"


@pytest.mark.parametrize("mode", ["keep", "hash", "drop"])
def test_question_and_answer_text_can_be_kept_hashed_or_dropped(mode):
    out = ResponseGenerated(
        trace_id="t",
        producer="g",
        question="my secret question",
        answer="the answer",
        citations=[],
        passages=[],
        model="m",
        served=SERVED,
    )
    r = stage_completed("generation", None, out, T0, T0, "t", "default", TelemetrySettings(text=mode))
    if mode == "keep":
        assert (r.question, r.answer) == ("my secret question", "the answer")
    elif mode == "hash":
        assert r.question.startswith("sha256:") and "secret" not in r.question
        assert r.question == redact("my secret question", "hash") != r.answer
    else:
        assert (r.question, r.answer) == ("", "")
