"""The OpenAI-compatible backend against a real local HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from connectors.llm import LLMSettings, OpenAIBackend, RenderedPrompt, Source
from schemas.errors import PermanentError, TransientError
from topology.stack import free_port

PROMPT = RenderedPrompt(
    system="cite",
    user="Passages: ... Question: q",
    question="q",
    sources=[Source(id="p1", title="t", text="x"), Source(id="p2", title="t", text="y")],
    temperature=0.0,
    max_tokens=50,
)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict], dict]]:
    seen: list[dict] = []
    behaviour = {"status": 200, "delay": 0.0}

    async def completions(request: web.Request) -> web.Response:
        seen.append({"body": await request.json(), "auth": request.headers.get("Authorization")})
        await asyncio.sleep(behaviour["delay"])
        if behaviour["status"] != 200:
            return web.json_response({"error": "nope"}, status=behaviour["status"])
        return web.json_response(
            {
                "model": "served-model",
                "choices": [{"message": {"role": "assistant", "content": "It is y [2]."}}],
                "usage": {"prompt_tokens": 31, "completion_tokens": 5},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1", seen, behaviour
    await runner.cleanup()


async def backend(url: str, timeout: float = 5.0) -> OpenAIBackend:
    b = OpenAIBackend(
        LLMSettings(backend="openai", base_url=url, model="m", api_key="sk-test", timeout_s=timeout)
    )
    await b.open()
    return b


async def test_reads_answer_usage_and_citations(server):
    url, seen, _ = server
    b = await backend(url)
    try:
        result = await b.generate(PROMPT)
    finally:
        await b.close()
    assert (result.text, result.model, result.citations) == ("It is y [2].", "served-model", ["p2"])
    assert result.usage_details == {"input": 31, "output": 5}
    body = seen[0]["body"]
    assert body["messages"][0] == {"role": "system", "content": "cite"}
    assert (body["model"], body["max_tokens"], seen[0]["auth"]) == ("m", 50, "Bearer sk-test")


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, TransientError), (503, TransientError), (400, PermanentError), (401, PermanentError)],
)
async def test_status_codes_map_to_retryable_or_not(server, status, error):
    url, _, behaviour = server
    behaviour["status"] = status
    b = await backend(url)
    try:
        with pytest.raises(error):
            await b.generate(PROMPT)
    finally:
        await b.close()


async def test_slow_server_is_a_transient_error(server):
    url, _, behaviour = server
    behaviour["delay"] = 1.0
    b = await backend(url, timeout=0.2)
    try:
        with pytest.raises(TransientError):
            await b.generate(PROMPT)
    finally:
        await b.close()


async def test_unreachable_server_is_a_transient_error():
    b = await backend(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(TransientError):
            await b.generate(PROMPT)
    finally:
        await b.close()
