"""A local HTTP server that speaks the OpenAI Chat Completions wire format, plain and
streamed (server-sent `chat.completion.chunk` events ending in `data: [DONE]`), for the
`openai` backend's and HyDE's tests. It answers HyDE instructions (they end in
"Passage:") with a passage, the conversation nodes' (condense, summarize) with a fixed
rewrite and summary, and anything else with a cited answer; it can answer 429 or
500 first, be slow, or cut a stream short. With `tokenizes` it also serves llama.cpp's
POST /tokenize, counting a token per word."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from topology.stack import free_port

PASSAGE = (
    "A lambda expression creates an anonymous function: lambda parameters: expression. "
    "It yields a function object that behaves like one defined with def."
)
ANSWER = "It is an anonymous function [1]."
# What it writes for the conversation nodes' instructions (condense, summarize).
STANDALONE = "Can a lambda expression contain statements?"
SUMMARY = "The user asked what a lambda expression is: an anonymous function."


@dataclass
class ChatServer:
    failures: list[int] = field(default_factory=list)  # statuses to answer before succeeding
    down_status: int = 0  # an outage: answer this status to everything until down_until
    down_until: float = 0.0  # time.monotonic()
    delay_s: float = 0.0
    cut_stream: bool = False
    tokenizes: bool = False  # serve llama.cpp's POST /tokenize (a token per word), or 404
    tokenize_calls: int = 0
    model: str = "served-model"
    seen: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> ChatServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/tokenize", self._tokenize)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def hyde_requests(self) -> list[dict[str, Any]]:
        return [s for s in self.seen if s["body"]["messages"][-1]["content"].rstrip().endswith("Passage:")]

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append({"body": body, "auth": request.headers.get("Authorization"), "at": time.time()})
        await asyncio.sleep(self.delay_s)
        if self.down_status and time.monotonic() < self.down_until:
            return web.json_response(
                {"error": {"message": "down", "code": self.down_status}}, status=self.down_status
            )
        if self.failures:
            status = self.failures.pop(0)
            return web.json_response({"error": {"message": "try later", "code": status}}, status=status)
        user = body["messages"][-1]["content"]
        endings = {"Passage:": PASSAGE, "Standalone question:": STANDALONE, "Updated summary:": SUMMARY}
        text = next((t for end, t in endings.items() if user.rstrip().endswith(end)), ANSWER)
        usage = {
            "prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
            "completion_tokens": len(text.split()),
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    "object": "chat.completion",
                    "model": self.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = text.split(" ")
        for n, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if n == 0 else {"content": " " + word}
            await self._event(response, {"model": self.model, "choices": [{"index": 0, "delta": delta}]})
            if self.cut_stream and n == 1:
                return response  # the connection closes before [DONE]
        await self._event(response, {"model": self.model, "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _tokenize(self, request: web.Request) -> web.Response:
        self.tokenize_calls += 1
        if not self.tokenizes:
            raise web.HTTPNotFound()
        content = (await request.json())["content"]
        return web.json_response({"tokens": list(range(len(content.split())))})

    @staticmethod
    async def _event(response: web.StreamResponse, chunk: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps({'object': 'chat.completion.chunk', **chunk})}\n\n".encode())
