"""Generation backends. `extractive` answers from the retrieved passages alone, with
citations and no network; `openai` (default) calls any OpenAI-compatible Chat Completions
server (vLLM, TGI, Ollama, llama.cpp server, OpenAI); without LLMOPS_LLM__BASE_URL the
local stack starts one for it (connectors.local_llm)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.ports import Backend, Generation, OnText, RenderedPrompt, Source, TokenCount
from schemas.errors import LLMOpsError, PermanentError, TransientError

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
        default=True,
        description="openai: ask for server-sent events and read the answer as it is written: the "
        "generation stage records time to first token and tokens/s, and sends the answer to "
        "streaming clients in ResponseDelta pieces.",
    )
    max_prompt_tokens: int = Field(
        default=512,
        ge=0,
        description="openai: token budget of the whole prompt (system, template, question and passages); "
        "passages are fitted best-first and the rest cut. 0: no budget. Sized so that prefill on two "
        "CPU cores stays within a few seconds (docs/prompts-and-experiments.md, Prompt budget).",
    )
    tokenizer: Literal["auto", "server", "chars"] = Field(
        default="auto",
        description="openai: how the budget counts tokens. server: the server's POST /tokenize (llama.cpp; "
        "the model's own tokenizer); chars: characters / 4; auto: server, and chars/4 where the server "
        "has no /tokenize (OpenAI).",
    )
    delta_tokens: int = Field(
        default=16, ge=1, description="Streamed answers go out in ResponseDelta pieces of this many tokens"
    )
    delta_ms: float = Field(
        default=250.0, gt=0, description="or of what the server wrote in this many ms, whichever comes first."
    )
    max_sentences: int = Field(default=3, ge=1, description="extractive: sentences per answer.")


_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{2,}")
# Heading underlines (reStructuredText, Markdown setext): not prose, never worth quoting.
_RULE = re.compile(r"\S*([*=~#^-])\1{3,}\S*")
# A source's own footnote markers (" [4]", "[4] A footnote"): quoted, cited() would read
# them as citations of whichever passage has that number. Indexing as in `x[0]` stays.
_FOOTNOTE = re.compile(r"(?:^|\s+)\[\d+\](?!\w)")
_RULE_RUNS = tuple(c * 4 for c in "*=~#^-")
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
            # _RULE needs a run of four like characters and _FOOTNOTE a "[": without them the
            # cleaning below only folds whitespace.
            rules = any(run in source.text for run in _RULE_RUNS)
            for position, sentence in enumerate(_SENTENCE_END.split(source.text)):
                # wanted holds no stop words nor one-letter words, so its intersection with the
                # sentence's words is its intersection with _terms(sentence). The cleaning below
                # only takes words away (_RULE whole tokens, _FOOTNOTE a marker before a non-word
                # character), so a sentence that shares no term now shares none cleaned.
                shared = wanted.intersection(_WORD.findall(sentence.lower()))
                if not shared:
                    continue
                if rules or "[" in sentence:
                    sentence = _FOOTNOTE.sub("", _RULE.sub(" ", sentence))
                    shared = wanted.intersection(_WORD.findall(sentence.lower()))
                sentence = " ".join(sentence.split())
                if shared and len(sentence) > 20:
                    # More shared terms first; then the better-ranked passage, earlier text.
                    scored.append((-len(shared), rank, position, sentence))
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


# Where the server has no tokenizer endpoint, a token is taken as this many characters
# (OpenAI's rule of thumb for English text).
CHARS_PER_TOKEN = 4


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
        # llama.cpp serves /tokenize beside /v1, not under it.
        self._tokenize_url = settings.base_url.rstrip("/").removesuffix("/v1") + "/tokenize"
        self._server_tokenizes = settings.tokenizer != "chars"
        self._session: Any = None
        self.streams = settings.stream
        self.max_prompt_tokens = settings.max_prompt_tokens

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

    async def count_tokens(self, texts: Sequence[str]) -> TokenCount:
        """Each text's tokens by the server's own tokenizer (POST /tokenize); with
        tokenizer=auto, characters / 4 from the first time the server says it has none."""
        if self._server_tokenizes:
            try:
                counts = await asyncio.gather(*(self._server_count(t) for t in texts))
                return TokenCount(list(counts), "server")
            except _NoTokenizer as exc:
                if self._settings.tokenizer == "server":
                    raise PermanentError(f"LLMOPS_LLM__TOKENIZER=server, but {exc}") from exc
                log.info("%s; the prompt budget counts characters / %d", exc, CHARS_PER_TOKEN)
                self._server_tokenizes = False
        return TokenCount([-(-len(t) // CHARS_PER_TOKEN) for t in texts], f"chars/{CHARS_PER_TOKEN}")

    async def _server_count(self, text: str) -> int:
        import aiohttp

        try:
            async with self._session.post(self._tokenize_url, json={"content": text}) as response:
                if response.status in (404, 405, 501):
                    raise _NoTokenizer(f"{self._tokenize_url} answered {response.status}")
                if response.status == 429 or response.status >= 500:
                    raise TransientError(f"LLM server's tokenizer answered {response.status}")
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"LLM server unreachable or slow: {exc!r}") from exc
        tokens = payload.get("tokens") if isinstance(payload, dict) else None
        if not isinstance(tokens, list):
            raise _NoTokenizer(f"{self._tokenize_url} answered no token list: {str(payload)[:200]}")
        return len(tokens)

    async def generate(self, prompt: RenderedPrompt) -> Generation:
        return await self._generate(prompt, None)

    async def generate_streaming(self, prompt: RenderedPrompt, on_text: OnText) -> Generation:
        """As generate, handing each piece of text to `on_text` as it arrives (when
        streaming is configured; otherwise the whole answer at once)."""
        return await self._generate(prompt, on_text)

    async def _generate(self, prompt: RenderedPrompt, on_text: OnText | None) -> Generation:
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
        speed: Speed | None = None
        try:
            async with self._session.post(url, json=body) as response:
                if response.status == 429 or response.status >= 500:
                    raise TransientError(f"LLM server answered {response.status}")
                if response.status >= 400:
                    detail = (await response.text())[:500]
                    raise PermanentError(f"LLM server answered {response.status}: {detail}")
                if self._settings.stream:
                    payload, speed = await read_stream(response, on_text)
                else:
                    payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:  # refused, reset, cut mid-stream, slow
            raise TransientError(f"LLM server unreachable or slow: {exc!r}") from exc
        try:
            text = payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise PermanentError(f"unexpected Chat Completions payload: {str(payload)[:300]}") from exc
        usage = payload.get("usage") or {}
        output = int(usage.get("completion_tokens", 0))
        if on_text is not None and speed is None and text:
            await on_text(text)  # not streamed: the whole answer is the one piece
        return Generation(
            text=text,
            model=str(payload.get("model") or body["model"]),
            citations=cited(text, prompt.sources),
            usage_details={"input": int(usage.get("prompt_tokens", 0)), "output": output},
            ttft_ms=speed.ttft_ms if speed else None,
            tokens_per_s=speed.tokens_per_s(output) if speed else None,
        )


class _NoTokenizer(LLMOpsError):
    """The server has no /tokenize endpoint (OpenAI has none)."""


@dataclass(frozen=True)
class Speed:
    """When a streamed answer's first and last text pieces came, after the request."""

    ttft_ms: float
    decode_s: float  # from the first piece to the last
    pieces: int

    def tokens_per_s(self, output_tokens: int) -> float | None:
        """Output tokens after the first over the time they took (the server's count, or
        the pieces where it sent no usage); None with fewer than two."""
        tokens = output_tokens or self.pieces
        if tokens < 2 or self.decode_s <= 0:
            return None
        return round((tokens - 1) / self.decode_s, 2)


async def read_stream(response: Any, on_text: OnText | None = None) -> tuple[dict[str, Any], Speed | None]:
    """A streamed Chat Completion (server-sent events of `chat.completion.chunk`) folded
    into the shape of a plain one: the content deltas joined, the last usage and model;
    each delta goes to `on_text` as it arrives. With it, when the text came (None if none did)."""
    parts: list[str] = []
    folded: dict[str, Any] = {}
    began, first, last = time.perf_counter(), None, 0.0
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
                last = time.perf_counter()
                first = first if first is not None else last
                parts.append(delta)
                if on_text is not None:
                    await on_text(delta)
        folded["model"] = chunk.get("model") or folded.get("model")
        folded["usage"] = chunk.get("usage") or folded.get("usage")
    else:
        raise TransientError("the LLM server closed the stream before [DONE]")
    speed = None
    if first is not None:
        speed = Speed(round((first - began) * 1000, 2), last - first, len(parts))
    return {**folded, "choices": [{"message": {"role": "assistant", "content": "".join(parts)}}]}, speed


def build_backend(settings: LLMSettings) -> Backend:
    if settings.backend == "openai":
        return OpenAIBackend(settings)
    return ExtractiveBackend(settings)
