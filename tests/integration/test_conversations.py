"""Conversations on the embedded stack (Tansu, extractive backend): a follow-up answered
in the context of the first turn, turns of one conversation answered one after another
when sent at once, tenants kept apart whatever the conversation id, and user variables
checked against the prompt's declarations at the edge."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from connectors.client import Client, RequestError
from connectors.conversations import latest_record
from schemas import InvalidEvent
from schemas.conversations import ConversationState, conversation_key
from tests.integration.test_cli import llmops
from tests.integration.test_pipeline import dead_letters, docs, tenant
from tests.integration.test_prompt_registry import cli, prompt_file
from topology.stack import LocalStack
from topology.topics import conversations_topic

LAMBDA = "What is a lambda expression?"
FOLLOW_UP = "Can it contain statements?"


def memory(
    stack: LocalStack, owner: str, conversation: str, turns: int, timeout: float = 20
) -> ConversationState:
    """The conversation as its changelog holds it, once it has `turns` answered turns
    (the last turn's completion reaches the conversation stage just after its answer)."""
    topic = conversations_topic(stack.settings.worker.app_id)
    deadline = time.monotonic() + timeout
    while True:
        record = latest_record(stack.settings.kafka, topic, conversation_key(owner, conversation))
        state = ConversationState.model_validate_json(record) if record else None
        if state is not None and state.turn_count >= turns and state.in_flight is None:
            return state
        assert time.monotonic() < deadline, f"conversation {conversation}: {state}"
        time.sleep(0.3)


async def test_a_follow_up_is_answered_in_the_context_of_the_first_turn(tansu_stack: LocalStack):
    owner, conversation = tenant("conv"), f"c-{uuid.uuid4().hex[:8]}"
    async with Client(tansu_stack.settings) as client:
        await client.ingest(docs("lambda", "with", "assert", "while"), tenant=owner)
        first = await client.ask(LAMBDA, tenant=owner, conversation=conversation, retrieval_mode="dense")
        started = time.perf_counter()
        second = await client.ask(FOLLOW_UP, tenant=owner, conversation=conversation, retrieval_mode="dense")
        turn_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        alone = await client.ask(FOLLOW_UP, tenant=owner, retrieval_mode="dense")
        lone_ms = (time.perf_counter() - started) * 1000
    print(f"follow-up as a turn {turn_ms:.0f} ms, the same question alone {lone_ms:.0f} ms")
    assert first.passages[0].doc_id == "pydoc-lambda"
    # Retrieval searched with the first question prepended (the extractive condense).
    assert second.passages[0].doc_id == "pydoc-lambda"
    assert {p.doc_id for p in alone.passages} != {p.doc_id for p in second.passages} or alone.passages[
        0
    ].doc_id != "pydoc-lambda", "the follow-up alone found the same passages: this test shows nothing"
    state = memory(tansu_stack, owner, conversation, turns=2)
    assert [t.trace_id for t in state.turns] == [first.trace_id, second.trace_id]
    assert state.turns[1].standalone == f"{LAMBDA} {FOLLOW_UP}"
    assert state.turns[0].answer == first.answer and state.turns[1].citations == second.citations

    shown = cli(tansu_stack, "conversation", "show", conversation, "--tenant", owner)
    assert f"trace {first.trace_id}" in shown and f"Q: {FOLLOW_UP}" in shown
    assert f"searched as: {LAMBDA} {FOLLOW_UP}" in shown and "trace:" in shown
    missing = llmops("conversation", "show", conversation, "--tenant", "someone-else", env=tansu_stack.env())
    assert missing.returncode == 1 and "no conversation" in missing.stderr


def test_chat_reads_turns_from_standard_input(tansu_stack: LocalStack):
    owner, conversation = tenant("chat"), f"chat-{uuid.uuid4().hex[:8]}"
    asyncio.run(_ingest(tansu_stack, owner))
    result = subprocess.run(
        [sys.executable, "-m", "topology.cli", "chat", "--tenant", owner, "--conversation", conversation],
        input=f"{LAMBDA}\n{FOLLOW_UP}\n\n",
        capture_output=True,
        text=True,
        env=tansu_stack.env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("trace ") == 2 and f"> {FOLLOW_UP}" in result.stdout
    state = memory(tansu_stack, owner, conversation, turns=2)
    assert [t.question for t in state.turns] == [LAMBDA, FOLLOW_UP]
    # One more turn of the same conversation with `llmops ask`.
    third = "What does it return?"
    asked = llmops(
        "ask", third, "--tenant", owner, "--conversation", conversation, "--no-stream", env=tansu_stack.env()
    )
    assert asked.returncode == 0, asked.stderr
    state = memory(tansu_stack, owner, conversation, turns=3)
    assert [t.question for t in state.turns] == [LAMBDA, FOLLOW_UP, third]
    assert state.turns[2].standalone == f"{FOLLOW_UP} {third}"


async def _ingest(stack: LocalStack, owner: str) -> None:
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)


async def test_turns_sent_at_once_are_answered_one_after_another(tansu_stack: LocalStack):
    owner, conversation = tenant("order"), f"c-{uuid.uuid4().hex[:8]}"
    questions = [f"What does the {name} statement do?" for name in ("with", "assert", "while", "for")]
    async with Client(tansu_stack.settings) as client:
        await client.ingest(docs("with", "assert", "while", "for"), tenant=owner)
        # Another conversation of the same tenant runs beside it and waits for nothing.
        answers, other = await asyncio.gather(
            asyncio.gather(*(client.ask(q, tenant=owner, conversation=conversation) for q in questions)),
            client.ask(LAMBDA, tenant=owner, conversation=f"{conversation}-other"),
        )
    state = memory(tansu_stack, owner, conversation, turns=4)
    assert sorted(t.trace_id for t in state.turns) == sorted(a.trace_id for a in answers)
    assert [t.at for t in state.turns] == sorted(t.at for t in state.turns)
    # Each turn started after the one before it was answered: it was condensed with it.
    for before, turn in zip(state.turns, state.turns[1:], strict=False):
        assert turn.standalone == f"{before.question} {turn.question}"
    assert other.question == LAMBDA


async def test_a_conversation_id_never_reaches_another_tenants_memory(tansu_stack: LocalStack):
    acme, beta = tenant("acme"), tenant("beta")
    async with Client(tansu_stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=acme)
        await client.ingest(docs("lambda"), tenant=beta)
        await client.ask(LAMBDA, tenant=acme, conversation="c1")
        # The same id, and ids made of acme's key and separators, in beta's name.
        for forged in ("c1", f"{acme}/c1", f"{acme}%2Fc1", f"/{acme}/c1"):
            await client.ask(FOLLOW_UP, tenant=beta, conversation=forged)
    for forged in ("c1", f"{acme}/c1", f"{acme}%2Fc1", f"/{acme}/c1"):
        state = memory(tansu_stack, beta, forged, turns=1)
        assert state.tenant == beta and state.turns[0].standalone == FOLLOW_UP  # no memory came with it
    assert [t.question for t in memory(tansu_stack, acme, "c1", turns=1).turns] == [LAMBDA]


async def test_a_missing_or_oversized_variable_fails_at_the_edge(tansu_stack: LocalStack, tmp_path: Path):
    owner, label = tenant("vars"), f"v-{uuid.uuid4().hex[:8]}"
    path, version = prompt_file(
        tmp_path,
        template="For a $audience reader.\nPassages:\n$context\n\nQ: $question\nA:",
        variables={"audience": {"max_chars": 12}},
    )
    cli(tansu_stack, "prompts", "push", str(path), "--label", label)
    conversation = f"c-{uuid.uuid4().hex[:8]}"
    async with Client(tansu_stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        deadline = time.monotonic() + 30
        while True:  # until every worker follows the new label
            ok = await client.ask(LAMBDA, tenant=owner, prompt=label, variables={"audience": "beginner"})
            if ok.served.version == version.version:
                break
            assert time.monotonic() < deadline
        with pytest.raises(RequestError, match="needs the variable 'audience'") as missing:
            await client.ask(LAMBDA, tenant=owner, prompt=label, conversation=conversation)
        with pytest.raises(RequestError, match="13 characters; the limit is 12"):
            await client.ask(LAMBDA, tenant=owner, prompt=label, variables={"audience": "x" * 13})
        with pytest.raises(InvalidEvent, match="variables"):  # the map's own bounds: never sent
            await client.ask(LAMBDA, tenant=owner, variables={f"v{n}": "x" for n in range(17)})
        # The failed turn does not hold up its conversation.
        next_turn = await client.ask(
            LAMBDA, tenant=owner, prompt=label, conversation=conversation, variables={"audience": "expert"}
        )
    assert missing.value.failure.stage == "prompting" and next_turn.answer
    [letter] = dead_letters(tansu_stack, missing.value.failure.trace_id.encode())
    assert letter.stage == "prompting" and letter.permanent and "audience" in letter.reason


async def test_a_restarted_worker_recovers_the_memory_from_the_changelog(tansu_stack: LocalStack):
    owner, conversation = tenant("restart"), f"c-{uuid.uuid4().hex[:8]}"
    async with Client(tansu_stack.settings) as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)
        first = await client.ask(LAMBDA, tenant=owner, conversation=conversation, retrieval_mode="dense")
    memory(tansu_stack, owner, conversation, turns=1)  # the turn is in the changelog
    # SIGKILL: the worker commits nothing more; the table lives only in the changelog now.
    await asyncio.to_thread(tansu_stack.stop_process, "worker", signal.SIGKILL)
    began = time.monotonic()
    await asyncio.to_thread(tansu_stack.start_worker)
    print(f"worker serving again {time.monotonic() - began:.1f}s after the restart began")
    async with Client(tansu_stack.settings) as client:
        second = await client.ask(FOLLOW_UP, tenant=owner, conversation=conversation, retrieval_mode="dense")
    state = memory(tansu_stack, owner, conversation, turns=2)
    assert [t.trace_id for t in state.turns] == [first.trace_id, second.trace_id]  # each once, in order
    assert state.turns[1].standalone == f"{LAMBDA} {FOLLOW_UP}"  # answered with the recovered memory
    assert second.passages[0].doc_id == "pydoc-lambda"
