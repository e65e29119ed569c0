"""Streaming end to end and the prompt budget. The openai backend against the scripted
Chat Completions server: pieces reach `on_text` in order and join to the answer, a cut
stream fails as a transient error after the pieces it sent, tokens are counted by the
server's /tokenize or, where it has none, as characters / 4. Through the pipeline (Tansu,
the scripted server): ResponseDelta events arrive on the responses topic in order, all
before the ResponseGenerated, and join to its answer; Client.stream yields them and then
the response; a stream cut on every try yields what came and then raises RequestError;
the generation row records budget and speed; `llmops ask` prints the answer as it is
written and --no-stream as before. On the real local model (llama.cpp, SmolLM2; greedy,
fixed seed, short answers): the deltas arrive in order and join to the final answer, and
the budget counted by the model's tokenizer cuts what does not fit."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.analytics import Analytics
from connectors.client import Client, RequestError
from connectors.kafka import librdkafka_config
from connectors.llm import LLMSettings, OpenAIBackend
from connectors.ports import RenderedPrompt, Source
from schemas import ResponseGenerated
from schemas.errors import TransientError
from tests.integration.chat_server import ANSWER, ChatServer
from tests.integration.conftest import stack_settings
from tests.integration.test_cli import llmops
from tests.integration.test_pipeline import docs, tenant
from topology.report import collect, text
from topology.settings import Settings
from topology.stack import LocalStack

PROMPT = RenderedPrompt(
    system="cite",
    user="Passages: ... Question: q",
    question="q",
    sources=[Source(id="p1", title="t", text="x")],
    temperature=0.0,
    max_tokens=50,
    seed=42,
)


async def backend(url: str, **settings: object) -> OpenAIBackend:
    b = OpenAIBackend(LLMSettings(backend="openai", base_url=url, model="m", timeout_s=5, **settings))
    await b.open()
    return b


async def test_streamed_pieces_reach_on_text_in_order_and_join_to_the_answer():
    chat = await ChatServer().start()
    b = await backend(chat.url, stream=True)
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    try:
        result = await b.generate_streaming(PROMPT, on_text)
    finally:
        await b.close()
        await chat.stop()
    assert pieces == ANSWER.split(" ")[:1] + [" " + w for w in ANSWER.split(" ")[1:]]
    assert "".join(pieces) == result.text == ANSWER
    assert result.ttft_ms is not None and result.ttft_ms > 0 and result.tokens_per_s is not None


async def test_a_cut_stream_is_a_transient_error_after_the_pieces_it_sent():
    chat = await ChatServer(cut_stream=True).start()
    b = await backend(chat.url, stream=True)
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    try:
        with pytest.raises(TransientError, match="before \\[DONE\\]"):
            await b.generate_streaming(PROMPT, on_text)
    finally:
        await b.close()
        await chat.stop()
    assert pieces == ["It", " is"]


@pytest.mark.parametrize("tokenizes", [True, False], ids=["server", "no-tokenizer"])
async def test_tokens_are_counted_by_the_server_or_as_characters_over_four(tokenizes):
    chat = await ChatServer(tokenizes=tokenizes).start()
    b = await backend(chat.url)
    try:
        first = await b.count_tokens(["one two three", "x" * 41])
        again = await b.count_tokens(["four five"])
    finally:
        await b.close()
        await chat.stop()
    if tokenizes:
        assert (first.counts, first.counted_by, again.counts) == ([3, 1], "server", [2])
    else:
        assert (first.counts, first.counted_by, again.counts) == ([4, 11], "chars/4", [3])
    # After the 404s of the first call the backend no longer asks the server.
    assert chat.tokenize_calls == (3 if tokenizes else 2)


# --- through the pipeline, against the scripted server ------------------------------------

DELTA_TOKENS = 2  # the six-word answer leaves in three deltas


@pytest.fixture(scope="module")
async def chat() -> AsyncIterator[ChatServer]:
    server = await ChatServer(tokenizes=True).start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def streaming_stack(
    chat: ChatServer, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    env = {
        "LLMOPS_LLM__BACKEND": "openai",
        "LLMOPS_LLM__BASE_URL": chat.url,
        "LLMOPS_LLM__MODEL": "served-model",
        "LLMOPS_LLM__STREAM": "true",
        "LLMOPS_LLM__TIMEOUT_S": "2",
        "LLMOPS_LLM__DELTA_TOKENS": str(DELTA_TOKENS),
        "LLMOPS_LLM__DELTA_MS": "10000",
        # Four passages of about 160 words do not fit: the budget cuts.
        "LLMOPS_LLM__MAX_PROMPT_TOKENS": "300",
        "LLMOPS_WORKER__RUNTIME__MAX_ATTEMPTS": "2",
    }
    settings = stack_settings(base_settings, tmp_path_factory.mktemp("streaming-stack"))
    stack = LocalStack(settings, env=env)
    # The worker's readiness probe needs the chat server answering: this loop serves it.
    await asyncio.to_thread(stack.start)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


def responses_of(stack: LocalStack, trace_id: str, timeout: float = 30) -> list[dict]:
    """The trace's events on the responses topic, read from its start in arrival order,
    up to its ResponseGenerated or RequestFailed (and whatever else is there by then)."""
    topic = stack.settings.kafka.topics.responses
    consumer = Consumer(
        librdkafka_config(
            stack.settings.kafka, **{"group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None and (event := json.loads(message.value()))["trace_id"] == trace_id:
                    found.append(event)
            if any(e["event_type"] in ("ResponseGenerated", "RequestFailed") for e in found):
                break
        return found
    finally:
        consumer.close()


def assert_deltas_in_order_before_the_response(events: list[dict]) -> list[dict]:
    *deltas, last = events
    assert last["event_type"] == "ResponseGenerated", [e["event_type"] for e in events]
    assert deltas and all(d["event_type"] == "ResponseDelta" for d in deltas)
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert len({d["stream_id"] for d in deltas}) == 1
    assert "".join(d["text"] for d in deltas) == last["answer"]
    return deltas


async def test_deltas_arrive_in_order_before_the_response_and_join_to_its_answer(
    streaming_stack: LocalStack, chat: ChatServer
):
    owner = tenant("stream")
    async with Client(streaming_stack.settings) as client:
        await client.ingest(docs("lambda", "with", "assert", "while"), tenant=owner)
        replies = [r async for r in client.stream("What is a lambda?", tenant=owner, top_k=4, timeout=60)]
        plain = await client.ask("What is a lambda?", tenant=owner, top_k=4, timeout=60)

    *pieces, response = replies
    assert isinstance(response, ResponseGenerated) and all(isinstance(p, str) for p in pieces)
    assert len(pieces) == 3 and "".join(pieces) == response.answer == ANSWER  # type: ignore[arg-type]
    deltas = assert_deltas_in_order_before_the_response(responses_of(streaming_stack, response.trace_id))
    assert [d["text"] for d in deltas] == pieces
    # ask() ignores the deltas of its own question and gets the same answer.
    assert plain.answer == ANSWER and plain.ttft_ms is not None

    # The budget (300 tokens, counted by the server) let some passages in and cut the rest.
    budget = response.context
    assert budget.counted_by == "server" and budget.passages_cut >= 1 and budget.passages_sent >= 1
    assert len(response.passages) == budget.passages_sent < 4
    prompt = next(s["body"] for s in reversed(chat.seen) if "messages" in s["body"])
    words = sum(len(m["content"].split()) for m in prompt["messages"])
    assert words <= 300  # the scripted server's tokens are words
    assert response.ttft_ms is not None and response.tokens_per_s is not None

    row = await generation_row(streaming_stack, response.trace_id)
    assert row == {
        "context_passages": budget.passages_sent,
        "context_passages_cut": budget.passages_cut,
        "context_tokens": budget.tokens_sent,
        "context_tokens_cut": budget.tokens_cut,
        "tokens_counted_by": "server",
        "ttft_ms": pytest.approx(response.ttft_ms),
        "tokens_per_s": pytest.approx(response.tokens_per_s),
    }
    # llmops report: p50 and p95 of both per model, over the streamed answers (both stored).
    await generation_row(streaming_stack, plain.trace_id)
    analytics = await Analytics.connect(
        streaming_stack.settings.clickhouse, streaming_stack.settings.analytics
    )
    try:
        data = await collect(analytics, timedelta(hours=1), owner)
    finally:
        await analytics.close()
    assert data.speed is not None and data.speed.dicts()[0]["model"] == "served-model"
    [speed] = text(data).split("Generation speed per model (streamed answers)\n")[1:]
    header, _, first = speed.splitlines()[:3]
    assert header.split()[:4] == ["model", "answers", "first", "token"]
    assert first.split()[:2] == ["served-model", "2"]  # the streamed ask and the plain one


async def generation_row(stack: LocalStack, trace_id: str) -> dict:
    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        for _ in range(60):
            rows = await analytics.query(
                "SELECT context_passages, context_passages_cut, context_tokens, context_tokens_cut, "
                "tokens_counted_by, ttft_ms, tokens_per_s FROM telemetry "
                "WHERE stage = 'generation' AND trace_id = {trace:String}",
                {"trace": trace_id},
            )
            if rows.rows:
                return rows.dicts()[0]
            await asyncio.sleep(1)
        raise AssertionError(f"no generation row for {trace_id}")
    finally:
        await analytics.close()


async def test_a_stream_cut_on_every_try_yields_what_came_then_fails(
    streaming_stack: LocalStack, chat: ChatServer
):
    owner = tenant("cut")
    got: list[object] = []
    async with Client(streaming_stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        chat.cut_stream = True
        try:
            with pytest.raises(RequestError, match="before \\[DONE\\]"):
                async for reply in client.stream("What is a lambda?", tenant=owner, timeout=60):
                    got.append(reply)
        finally:
            chat.cut_stream = False
        # The stage is healthy again at once: the next question streams whole.
        again = [r async for r in client.stream("What is a lambda?", tenant=owner, timeout=60)]
    # The scripted cut comes after two words: the first try's one delta of two pieces.
    assert got == ["It is"]
    assert isinstance(again[-1], ResponseGenerated) and "".join(again[:-1]) == ANSWER  # type: ignore[arg-type]


async def test_llmops_ask_prints_the_answer_as_written_and_no_stream_as_before(streaming_stack: LocalStack):
    owner = tenant("cli-stream")
    env = streaming_stack.env()
    async with Client(streaming_stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
    # In threads: this loop serves the scripted server meanwhile.
    ask = ("ask", "What is a lambda?", "--tenant", owner)
    streamed = await asyncio.to_thread(llmops, *ask, env=env)
    plain = await asyncio.to_thread(llmops, *ask, "--no-stream", env=env)
    for result in (streamed, plain):
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["Q: What is a lambda?", f"A: {ANSWER}"], lines
        assert "*[1] lambda" in result.stdout and "first token" in result.stdout


# --- on the real local model ----------------------------------------------------------------

LOCAL_ENV = {
    "LLMOPS_LLM__BACKEND": "openai",  # the conftest sets extractive for the other stacks
    "LLMOPS_PIPELINE__DEFAULT_TOP_K": "4",
    "LLMOPS_PIPELINE__PROMPT__MAX_TOKENS": "32",
    "LLMOPS_PIPELINE__PROMPT__TEMPERATURE": "0",
    "LLMOPS_PIPELINE__PROMPT__SEED": "7",
    "LLMOPS_LLM__DELTA_TOKENS": "4",
}


@pytest.fixture(scope="module")
def local_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = stack_settings(base_settings, tmp_path_factory.mktemp("streaming-llm"))
    local = settings.local_llm.model_copy(update={"port": 0, "n_ctx": 2048, "parallel": 2})
    with LocalStack(settings.model_copy(update={"local_llm": local}), env=LOCAL_ENV) as stack:
        assert stack.local_llm
        yield stack


async def test_the_local_model_streams_deltas_in_order_that_join_to_its_answer(local_stack: LocalStack):
    owner = tenant("local-stream")
    question = "What does a lambda expression create?"
    async with Client(local_stack.settings) as client:
        await client.ingest(docs("lambda", "with", "assert", "while"), tenant=owner)
        began = time.monotonic()
        replies = [r async for r in client.stream(question, tenant=owner, timeout=180)]
        took = time.monotonic() - began

    *pieces, response = replies
    assert isinstance(response, ResponseGenerated) and response.answer.strip()
    assert "".join(pieces) == response.answer  # type: ignore[arg-type]
    deltas = assert_deltas_in_order_before_the_response(responses_of(local_stack, response.trace_id))
    assert len(deltas) == len(pieces) >= 2 and response.usage_details["output"] <= 32

    budget = response.context
    assert budget.counted_by == "server"  # llama.cpp's /tokenize: the model's own tokenizer
    assert budget.passages_sent == len(response.passages) >= 1
    assert response.usage_details["input"] <= LLMSettings().max_prompt_tokens + 32  # chat template
    assert response.ttft_ms is not None and response.tokens_per_s is not None
    print(
        f"local model, streamed: {len(deltas)} deltas; prompt {response.usage_details['input']} tokens "
        f"(budget {LLMSettings().max_prompt_tokens}); passages sent {budget.passages_sent} "
        f"({budget.tokens_sent} tokens), cut {budget.passages_cut} ({budget.tokens_cut} tokens); "
        f"time to first token {response.ttft_ms:.0f} ms, {response.tokens_per_s:.1f} tokens/s, "
        f"generation stage {response.latency_ms['generation']:.0f} ms, whole ask {took:.2f} s; "
        f"answer: {response.answer!r}"
    )
