"""The OpenAI-compatible backend against a real local HTTP server speaking the Chat
Completions wire format: plain and streamed answers, 429 and 500, slow answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from connectors.llm import LLMSettings, OpenAIBackend, RenderedPrompt, Source
from schemas.errors import PermanentError, TransientError
from tests.integration.chat_server import ANSWER, ChatServer
from topology.stack import free_port

PROMPT = RenderedPrompt(
    system="cite",
    user="Passages: ... Question: q",
    question="q",
    sources=[Source(id="p1", title="t", text="x"), Source(id="p2", title="t", text="y")],
    temperature=0.0,
    max_tokens=50,
    seed=42,
)


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    chat = await ChatServer().start()
    yield chat
    await chat.stop()


async def generate(url: str, prompt: RenderedPrompt = PROMPT, timeout: float = 5.0, stream: bool = False):
    b = OpenAIBackend(
        LLMSettings(
            backend="openai", base_url=url, model="m", api_key="sk-test", timeout_s=timeout, stream=stream
        )
    )
    await b.open()
    try:
        return await b.generate(prompt)
    finally:
        await b.close()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_reads_answer_usage_and_citations(server, stream):
    result = await generate(server.url, stream=stream)
    assert (result.text, result.model, result.citations) == (ANSWER, "served-model", ["p1"])
    assert result.usage_details == {"input": 5, "output": 6}  # words, as the server counts
    body = server.seen[0]["body"]
    assert body["messages"][0] == {"role": "system", "content": "cite"}
    assert (body["model"], body["max_tokens"], body["seed"], server.seen[0]["auth"]) == (
        "m",
        50,
        42,
        "Bearer sk-test",
    )
    assert body.get("stream", False) is stream


async def test_the_prompt_versions_model_is_sent_and_an_empty_system_is_left_out(server):
    hyde = RenderedPrompt(system="", user="Question: q\nPassage:", question="q", sources=[], temperature=0.7,
                          max_tokens=9, model="gpt-4o-mini")  # fmt: skip
    await generate(server.url, hyde)
    body = server.seen[0]["body"]
    assert body["model"] == "gpt-4o-mini" and [m["role"] for m in body["messages"]] == ["user"]
    assert "seed" not in body


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, TransientError),
        (500, TransientError),
        (503, TransientError),
        (400, PermanentError),
        (401, PermanentError),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_status_codes_map_to_retryable_or_not(server, status, error, stream):
    server.failures = [status]
    with pytest.raises(error, match=str(status)):
        await generate(server.url, stream=stream)


async def test_a_stream_cut_before_done_is_a_transient_error(server):
    server.cut_stream = True
    with pytest.raises(TransientError, match="before \\[DONE\\]|unreachable"):
        await generate(server.url, stream=True)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_slow_server_is_a_transient_error(server, stream):
    server.delay_s = 1.0
    with pytest.raises(TransientError):
        await generate(server.url, timeout=0.2, stream=stream)


async def test_unreachable_server_is_a_transient_error():
    with pytest.raises(TransientError):
        await generate(f"http://127.0.0.1:{free_port()}/v1")
