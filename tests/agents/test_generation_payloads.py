"""The generation stage hands its telemetry the prompt exactly as the backend got it,
with the passages the budget kept (the console's trace page shows both)."""

from __future__ import annotations

from agents import generation
from agents.telemetry import TelemetrySettings, row, stage_completed
from schemas import utc_now
from tests.agents.test_generation_stream import StreamingLLM, dependencies, retrieved


async def test_telemetry_keeps_the_prompt_the_backend_got_and_the_passages_sent():
    llm = StreamingLLM(max_prompt_tokens=200)  # a budget that cuts a passage
    deps = dependencies(llm, None)
    event = await retrieved(deps)
    response = await generation.handle(event, deps)
    [prompt] = llm.prompts
    assert len(response.passages) < len(event.passages)
    completed = stage_completed(
        "generation", event, response, utc_now(), utc_now(), "trace-1", "default", TelemetrySettings()
    )
    stored = row(completed)
    assert stored["rendered_prompt"] == f"[system]\n{prompt.system}\n\n[user]\n{prompt.user}"
    assert stored["passage_texts"] == {p.id: p.text for p in response.passages}
    assert all(p.text in stored["rendered_prompt"] for p in response.passages)
