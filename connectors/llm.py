"""Generation backends. `extractive` answers from the retrieved passages alone, with
citations and no network; `openai` (default) calls any OpenAI-compatible Chat Completions
server (vLLM, TGI, Ollama, llama.cpp server, OpenAI); without LLMOPS_LLM__BASE_URL the
local stack starts one for it (connectors.local_llm)."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.ports import Backend, Generation, RenderedPrompt, Source
from schemas.errors import PermanentError, TransientError

log = logging.getLogger(__name__)


class LLMSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    backend: Literal["extractive", "openai"] = "openai"
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API root (.../v1). Unset: the local stack starts a llama.cpp "
        "server (LLMOPS_LOCAL_LLM__*) and points its workers at it.",
    )
    api_key: SecretStr | None = None
    model: str = Field(default="extractive", description="Model name sent to the server.")
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout.")
    stream: bool = Field(
        default=False,
        description="openai: ask for server-sent events and read the answer as it is written "
        "(the time to the first token is logged at debug level).",
    )
    max_sentences: int = Field(default=3, ge=1, description="extractive: sentences per answer.")


_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{2,}")
# Heading underlines (reStructuredText, Markdown setext): not prose, never worth quoting.
_RULE = re.compile(r"\S*([*=~#^-])\1{3,}\S*")
# A source's own footnote markers (" [4]", "[4] A footnote"): quoted, cited() would read
# them as citations of whichever passage has that number. Indexing as in `x[0]` stays.
_FOOTNOTE = re.compile(r"(?:^|\s+)\[\d+\](?!\w)")
_STOP = frozenset(
    "a an and are as at be by can do does for from how i in is it its of on or that the this "
    "to was what when where which who why will with you your".split()
)


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in _STOP}


def cited(text: str, sources: Sequence[Source]) -> list[str]:
    """Ids of the sources that `[n]` markers in `text` point at, in first-cited order."""
    ids: list[str] = []
    for n in re.findall(r"\[(\d+)\]", text):
        i = int(n) - 1
        if 0 <= i < len(sources) and sources[i].id not in ids:
            ids.append(sources[i].id)
    return ids


class ExtractiveBackend:
    """Picks the sentences of the retrieved passages that share the most terms with the
    question and cites each one. Grounded by construction; it cannot add anything."""

    name = "extractive"

    def __init__(self, settings: LLMSettings) -> None:
        self._max = settings.max_sentences

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(self, prompt: RenderedPrompt) -> Generation:
        wanted = _terms(prompt.question)
        scored = []
        for rank, source in enumerate(prompt.sources):
            for position, sentence in enumerate(_SENTENCE_END.split(source.text)):
                sentence = " ".join(_FOOTNOTE.sub("", _RULE.sub(" ", sentence)).split())
                overlap = len(wanted & _terms(sentence))
                if overlap and len(sentence) > 20:
                    # More shared terms first; then the better-ranked passage, earlier text.
                    scored.append((-overlap, rank, position, sentence))
        # The same sentence in two passages (a section repeated in the reference, chunks
        # that overlap) is quoted once, from the better-ranked passage.
        seen: set[str] = set()
        picked: list[tuple[int, int, int, str]] = []
        for s in sorted(scored):
            if len(picked) == self._max:
                break
            if (key := s[3].lower()) not in seen:
                seen.add(key)
                picked.append(s)
        if picked:
            picked.sort(key=lambda s: (s[1], s[2]))
            text = " ".join(f"{s[3]} [{s[1] + 1}]" for s in picked)
        else:
            text = "None of the indexed passages answers this question."
        return Generation(
            text=text,
            model=self.name,
            citations=cited(text, prompt.sources),
            usage_details={
                "input": len(prompt.user.split()) + len(prompt.system.split()),
                "output": len(text.split()),
            },
        )


class OpenAIBackend:
    """Chat Completions over HTTP. 429, 5xx, timeouts and dropped connections raise
    TransientError (the runtime retries them with backoff); other errors are permanent."""

    name = "openai"

    def __init__(self, settings: LLMSettings) -> None:
        if settings.base_url is None:
            raise PermanentError(
                "the openai backend has no server: set LLMOPS_LLM__BASE_URL (an OpenAI-compatible "
                "API root, http://host:port/v1), or run workers in the local stack (`llmops up`), "
                "or set LLMOPS_LLM__BACKEND=extractive"
            )
        self._settings = settings
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._session: Any = None

    async def open(self) -> None:
        import aiohttp

        headers = {"Content-Type": "application/json"}
        if self._settings.api_key is not None:
            headers["Authorization"] = f"Bearer {self._settings.api_key.get_secret_value()}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def generate(self, prompt: RenderedPrompt) -> Generation:
        import aiohttp

        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        body: dict[str, Any] = {
            "model": prompt.model or self._settings.model,
            "messages": [*messages, {"role": "user", "content": prompt.user}],
            "temperature": prompt.temperature,
            "max_tokens": prompt.max_tokens,
        }
        if prompt.seed is not None:
            body["seed"] = prompt.seed
        if self._settings.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        url = self._url
        try:
            async with self._session.post(url, json=body) as response:
                if response.status == 429 or response.status >= 500:
                    raise TransientError(f"LLM server answered {response.status}")
                if response.status >= 400:
                    detail = (await response.text())[:500]
                    raise PermanentError(f"LLM server answered {response.status}: {detail}")
                if self._settings.stream:
                    payload = await read_stream(response)
                else:
                    payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:  # refused, reset, cut mid-stream, slow
            raise TransientError(f"LLM server unreachable or slow: {exc!r}") from exc
        try:
            text = payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise PermanentError(f"unexpected Chat Completions payload: {str(payload)[:300]}") from exc
        usage = payload.get("usage") or {}
        return Generation(
            text=text,
            model=str(payload.get("model") or body["model"]),
            citations=cited(text, prompt.sources),
            usage_details={
                "input": int(usage.get("prompt_tokens", 0)),
                "output": int(usage.get("completion_tokens", 0)),
            },
        )


async def read_stream(response: Any) -> dict[str, Any]:
    """A streamed Chat Completion (server-sent events of `chat.completion.chunk`) folded
    into the shape of a plain one: the content deltas joined, the last usage and model."""
    parts: list[str] = []
    folded: dict[str, Any] = {}
    began, first = time.perf_counter(), None
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise PermanentError(f"unexpected Chat Completions stream line: {data[:300]}") from exc
        if chunk.get("error"):
            raise TransientError(f"LLM server failed mid-stream: {str(chunk['error'])[:300]}")
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                first = first if first is not None else time.perf_counter()
                parts.append(delta)
        folded["model"] = chunk.get("model") or folded.get("model")
        folded["usage"] = chunk.get("usage") or folded.get("usage")
    else:
        raise TransientError("the LLM server closed the stream before [DONE]")
    if first is not None:
        log.debug("first token after %.1f ms", (first - began) * 1000)
    return {**folded, "choices": [{"message": {"role": "assistant", "content": "".join(parts)}}]}


def build_backend(settings: LLMSettings) -> Backend:
    if settings.backend == "openai":
        return OpenAIBackend(settings)
    return ExtractiveBackend(settings)
