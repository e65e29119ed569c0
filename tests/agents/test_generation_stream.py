"""The generation handler with a backend that counts tokens and streams (fakes, no
Kafka): passages are fitted into the budget before the prompt is rendered, deltas leave
in numbered groups under one stream id, every one acknowledged before the handler
returns, and they join to the answer; budget and speed reach the response and its
telemetry row. A backend with neither gets every passage and sends no delta."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agents import generation, prompting
from agents.config import PipelineSettings
from agents.deps import Dependencies
from agents.telemetry import TelemetrySettings, row, stage_completed
from connectors.llm import ExtractiveBackend, LLMSettings
from connectors.ports import Deltas, Generation, OnText, RenderedPrompt, TokenCount
from schemas import ContextRetrieved, Passage, QueryReceived, ResponseDelta, decode, utc_now
from tests.agents.test_handlers import FakeEmbedder, FakeStore

ANSWER_PIECES = ["Context", " managers", " define", " enter", " and", " exit", " [1]", "."]


class StreamingLLM:
    name = "fake-stream"
    streams = True

    def __init__(self, max_prompt_tokens: int) -> None:
        self.max_prompt_tokens = max_prompt_tokens
        self.prompts: list[RenderedPrompt] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def count_tokens(self, texts: Sequence[str]) -> TokenCount:
        return TokenCount([len(t.split()) for t in texts], "words")

    async def generate(self, prompt: RenderedPrompt) -> Generation:
        self.prompts.append(prompt)
        text = "".join(ANSWER_PIECES)
        return Generation(text, "m", ["p1"], {"input": 50, "output": 8}, ttft_ms=12.5, tokens_per_s=70.0)

    async def generate_streaming(self, prompt: RenderedPrompt, on_text: OnText) -> Generation:
        for piece in ANSWER_PIECES:
            await on_text(piece)
        return await self.generate(prompt)


class Outbox:
    """A `send` that keeps what it was given; acks complete when `ack()` is called."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.acks: list[asyncio.Future[None]] = []

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack


async def retrieved(deps: Dependencies) -> ContextRetrieved:
    query = QueryReceived(trace_id="trace-1", producer="test", question="What do context managers do?")
    spec = (await prompting.handle(query, deps)).prompt
    words = " ".join(f"w{i}" for i in range(60))  # about 66 words a passage
    passages = [
        Passage(id=f"p{i}", doc_id="d", title="T", text=f"Passage {i}. {words}. Last.", chunk=i, score=1.0)
        for i in range(1, 4)
    ]
    return ContextRetrieved(trace_id="trace-1", producer="test", prompt=spec, passages=passages)


def dependencies(llm: object, outbox: Outbox | None) -> Dependencies:
    deltas = Deltas(outbox.send, every_tokens=3, every_ms=1e6) if outbox is not None else None
    return Dependencies(
        pipeline=PipelineSettings(default_top_k=3),
        embedder=FakeEmbedder(),
        store=FakeStore(),
        llm=llm,  # type: ignore[arg-type]
        deltas=deltas,
    )


async def test_streamed_deltas_are_grouped_numbered_acked_and_join_to_the_answer():
    outbox, llm = Outbox(), StreamingLLM(max_prompt_tokens=10_000)
    deps = dependencies(llm, outbox)
    event = await retrieved(deps)
    task = asyncio.create_task(generation.handle(event, deps))
    while len(outbox.acks) < 3:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert not task.done()  # the handler waits until the broker has every delta
    for ack in outbox.acks:
        ack.set_result(None)
    response = await task
    deltas = [decode(value, ResponseDelta) for _, value in outbox.sent]
    assert {key for key, _ in outbox.sent} == {b"trace-1"}
    assert [d.seq for d in deltas] == [0, 1, 2] and len({d.stream_id for d in deltas}) == 1
    assert [d.text for d in deltas] == ["Context managers define", " enter and exit", " [1]."]
    assert "".join(d.text for d in deltas) == response.answer
    assert (response.ttft_ms, response.tokens_per_s) == (12.5, 70.0)
    assert response.context.passages_sent == 3 and response.context.passages_cut == 0


async def test_the_budget_cuts_passages_before_the_prompt_is_rendered_and_telemetry_records_it():
    llm = StreamingLLM(max_prompt_tokens=200)
    deps = dependencies(llm, None)  # no outlet: the answer is not streamed to clients
    event = await retrieved(deps)
    response = await generation.handle(event, deps)
    budget = response.context
    assert budget.counted_by == "words" and budget.passages_cut >= 1
    assert budget.passages_sent == len(response.passages) < 3
    assert budget.tokens_sent + budget.tokens_cut == 3 * len(f"[1] T\n{event.passages[0].text}".split())
    # The prompt holds exactly the passages the response names, and stays in the budget.
    [prompt] = llm.prompts
    assert [source.id for source in prompt.sources] == [p.id for p in response.passages]
    assert len((prompt.system + "\n" + prompt.user).split()) <= 200
    assert response.passages[-1].text.endswith(".")  # whole, or cut at a sentence end
    completed = stage_completed(
        "generation", event, response, utc_now(), utc_now(), "trace-1", "default", TelemetrySettings()
    )
    stored = row(completed)
    assert stored["context_passages"] == budget.passages_sent
    assert stored["context_passages_cut"] == budget.passages_cut
    assert (stored["context_tokens"], stored["context_tokens_cut"]) == (budget.tokens_sent, budget.tokens_cut)
    assert (stored["tokens_counted_by"], stored["ttft_ms"], stored["tokens_per_s"]) == ("words", 12.5, 70.0)


async def test_a_backend_without_budget_or_stream_gets_every_passage_and_sends_no_delta():
    outbox = Outbox()
    deps = dependencies(ExtractiveBackend(LLMSettings(backend="extractive")), outbox)
    event = await retrieved(deps)
    response = await generation.handle(event, deps)
    assert outbox.sent == [] and response.passages == event.passages
    assert response.context.passages_sent == 3 and response.context.counted_by == ""
    assert response.ttft_ms is None and response.tokens_per_s is None
