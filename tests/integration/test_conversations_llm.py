"""The conversation's LM nodes through the openai backend, on a Tansu stack of their own
whose worker talks to a local Chat Completions server: condense rewrites the follow-up
that retrieval searches with, summarize folds the turn that left the memory (one turn
here) into the rolling summary, and each writes its own telemetry row, with the
conversation id on every row of the turn."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from connectors.analytics import Analytics
from connectors.client import Client
from tests.integration.chat_server import STANDALONE, SUMMARY, ChatServer
from tests.integration.conftest import stack_settings
from tests.integration.test_conversations import FOLLOW_UP, LAMBDA, memory
from tests.integration.test_pipeline import docs, tenant
from topology.settings import Settings
from topology.stack import LocalStack


@pytest.fixture(scope="module")
async def chat() -> AsyncIterator[ChatServer]:
    server = await ChatServer().start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def lm_stack(
    chat: ChatServer, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    env = {
        "LLMOPS_LLM__BACKEND": "openai",
        "LLMOPS_LLM__BASE_URL": chat.url,
        "LLMOPS_LLM__MODEL": "served-model",
        "LLMOPS_CONVERSATION__MEMORY_TURNS": "1",
    }
    stack = LocalStack(stack_settings(base_settings, tmp_path_factory.mktemp("conversation-lm")), env=env)
    await asyncio.to_thread(stack.start)  # the readiness probe needs this loop serving `chat`
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


def instructions(chat: ChatServer, ending: str) -> list[dict]:
    return [s["body"] for s in chat.seen if s["body"]["messages"][-1]["content"].rstrip().endswith(ending)]


async def test_condense_and_summarize_run_as_lm_nodes_with_rows_of_their_own(
    lm_stack: LocalStack, chat: ChatServer
):
    owner, conversation = tenant("lm"), f"c-{uuid.uuid4().hex[:8]}"
    async with Client(lm_stack.settings) as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)
        first = await client.ask(LAMBDA, tenant=owner, conversation=conversation)
        second = await client.ask(FOLLOW_UP, tenant=owner, conversation=conversation)
        third = await client.ask("And what does it return?", tenant=owner, conversation=conversation)
    [condense_2, condense_3] = instructions(chat, "Standalone question:")[-2:]
    assert f"User: {LAMBDA}" in condense_2["messages"][-1]["content"] and condense_2["temperature"] == 0.0
    [summarize] = instructions(chat, "Updated summary:")[-1:]
    assert f"Turns to add:\nUser: {LAMBDA}" in summarize["messages"][-1]["content"]
    # The summary written during the third turn, before its condense call, shows in it.
    assert f"Summary of earlier turns: {SUMMARY}" in condense_3["messages"][-1]["content"]

    state = memory(lm_stack, owner, conversation, turns=3)
    assert [t.trace_id for t in state.turns] == [third.trace_id]  # memory_turns = 1
    assert state.summary == SUMMARY and [t.trace_id for t in state.unsummarized] == [second.trace_id]
    assert [first.question, second.question] == [LAMBDA, FOLLOW_UP]

    analytics = await Analytics.connect(lm_stack.settings.clickhouse, lm_stack.settings.analytics)
    try:
        deadline = time.monotonic() + 30
        while True:
            stages, _ = await analytics.trace_rows(third.trace_id)
            rows = stages.dicts()
            if {"summarize", "condense", "generation"} <= {r["stage"] for r in rows}:
                break
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.5)
    finally:
        await analytics.close()
    by_stage = {r["stage"]: r for r in rows}
    for node in ("condense", "summarize"):
        assert by_stage[node]["model"] == "served-model" and by_stage[node]["output_tokens"] > 0
    assert by_stage["condense"]["question"] == STANDALONE  # what retrieval searched with
    assert {r["conversation_id"] for r in rows} == {conversation}
