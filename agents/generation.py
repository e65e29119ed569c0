"""Generation: fit the retrieved passages into the prompt's token budget, render the
prompt and ask the LLM backend; while a streaming backend writes the answer, send it to
clients in ResponseDelta pieces before the ResponseGenerated."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Any

from agents import conversation_nodes
from agents.deps import Dependencies
from agents.prompting import fit_passages, passage_block
from connectors.ports import Budgeted, Deltas, RenderedPrompt, Source, Streaming
from schemas import ContextBudget, ContextRetrieved, Passage, ResponseDelta, ResponseGenerated, encode, new_id
from schemas.errors import PermanentError

STAGE = "generation"
log = logging.getLogger(__name__)


def render(event: ContextRetrieved, passages: Sequence[Passage] | None = None) -> RenderedPrompt:
    """Fill the template once, with the context (`passages`, by default all retrieved);
    user text is a value, never a template."""
    spec, served = event.prompt, event.prompt.served
    chosen = event.passages if passages is None else passages
    sources = [Source(id=p.id, title=p.title, text=p.text) for p in chosen]
    context = "\n\n".join(passage_block(n, s.title, s.text) for n, s in enumerate(sources, start=1))
    try:
        history = conversation_nodes.history_text(spec.history, spec.summary)
        user = Template(spec.template).substitute(spec.variables, context=context, history=history)
        user = conversation_nodes.with_history(spec, spec.template, user)
    except (KeyError, ValueError) as exc:
        raise PermanentError(f"template {served.prompt}@{served.version}: {exc!r}") from exc
    if served.temperature is None:  # optional in Served for old telemetry; a prompt always has one
        raise PermanentError(f"prompt {served.prompt}@{served.version} carries no temperature")
    return RenderedPrompt(
        system=spec.system,
        user=user,
        question=spec.variables.get("question", ""),
        sources=sources,
        temperature=served.temperature,
        max_tokens=spec.max_tokens,
        model=served.model,
        seed=served.seed,
    )


async def within_budget(event: ContextRetrieved, deps: Dependencies) -> tuple[list[Passage], ContextBudget]:
    """The passages that fit the backend's prompt budget, counted by its tokenizer: the
    prompt without passages first, the passages in the room left. No budget: all."""
    llm = deps.llm
    if not isinstance(llm, Budgeted) or llm.max_prompt_tokens == 0 or not event.passages:
        return list(event.passages), ContextBudget(passages_sent=len(event.passages))
    bare = render(event, [])
    blocks = [passage_block(n, p.title, p.text) for n, p in enumerate(event.passages, start=1)]
    counted = await llm.count_tokens([bare.system + "\n" + bare.user, *blocks])
    room = llm.max_prompt_tokens - counted.counts[0]
    texts = [p.text for p in event.passages]
    fitted = fit_passages(blocks, texts, counted.counts[1:], room, counted.counted_by)
    kept = [p.model_copy(update={"text": t}) for p, t in zip(event.passages, fitted.texts, strict=False)]
    return kept, fitted.budget


@dataclass
class DeltaGroups:
    """Groups text pieces into deltas (pure: the caller says what time it is)."""

    every_tokens: int
    every_ms: float
    _pieces: list[str] = field(default_factory=list)
    _since: float | None = None

    def add(self, piece: str, now_ms: float) -> str | None:
        """Take a piece; the grouped text when a group is complete, else None."""
        if self._since is None:
            self._since = now_ms
        self._pieces.append(piece)
        if len(self._pieces) >= self.every_tokens or now_ms - self._since >= self.every_ms:
            return self.flush()
        return None

    def flush(self) -> str | None:
        text, self._pieces, self._since = "".join(self._pieces), [], None
        return text or None


@dataclass
class DeltaStream:
    """One generation's deltas: grouped, numbered from 0 under one stream id, sent keyed
    by the trace id. Sending is best effort: a delta that fails is logged, the answer's
    ResponseGenerated still goes out whole."""

    event: ContextRetrieved
    deltas: Deltas
    stream_id: str = field(default_factory=new_id)
    _groups: DeltaGroups | None = None
    _seq: int = 0
    _sent: list[Awaitable[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._groups = DeltaGroups(self.deltas.every_tokens, self.deltas.every_ms)

    async def add(self, piece: str) -> None:
        assert self._groups is not None
        text = self._groups.add(piece, time.perf_counter() * 1000)
        if text is not None:
            await self._send(text)

    async def close(self) -> None:
        """Send what is left and wait until the broker has every delta, so none can
        arrive after the ResponseGenerated."""
        assert self._groups is not None
        text = self._groups.flush()
        if text is not None:
            await self._send(text)
        for delivery in self._sent:
            try:
                await delivery
            except Exception as exc:  # noqa: BLE001  # a lost delta must not fail the answer
                log.warning("trace %s: a ResponseDelta was not delivered: %s", self.event.trace_id, exc)

    async def _send(self, text: str) -> None:
        delta = self.event.follow(ResponseDelta, STAGE, stream_id=self.stream_id, seq=self._seq, text=text)
        self._seq += 1
        self._sent.append(await self.deltas.send(delta.trace_id.encode(), encode(delta)))


async def handle(event: ContextRetrieved, deps: Dependencies) -> ResponseGenerated:
    passages, budget = await within_budget(event, deps)
    prompt = render(event, passages)
    llm = deps.llm
    if deps.deltas is not None and isinstance(llm, Streaming) and llm.streams:
        stream = DeltaStream(event, deps.deltas)
        generation = await llm.generate_streaming(prompt, stream.add)
        await stream.close()
    else:
        generation = await llm.generate(prompt)
    return event.follow(
        ResponseGenerated,
        STAGE,
        question=prompt.question,
        answer=generation.text,
        citations=generation.citations,
        passages=passages,
        model=generation.model,
        served=event.prompt.served,
        # HyDE's tokens beside the answer's (telemetry counts them on the prompting stage).
        usage_details={
            **generation.usage_details,
            **{f"hyde_{k}": v for k, v in event.prompt.hyde_usage.items()},
        },
        latency_ms=event.latency_ms,
        context=budget,
        ttft_ms=generation.ttft_ms,
        tokens_per_s=generation.tokens_per_s,
        rendered_prompt=f"[system]\n{prompt.system}\n\n[user]\n{prompt.user}",
    )
