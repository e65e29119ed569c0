"""A crash in the middle of many conversations, on Apache Kafka: SIGKILL the worker while
50 conversations of 4 turns each are under way and restart it. Every conversation ends
with all its turns exactly once, in order, and every turn was answered with the memory it
should have had (with the extractive condense, each follow-up searched with the question
before it)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

from connectors.client import Client
from schemas import ResponseGenerated
from tests.integration.test_conversations import memory
from tests.integration.test_pipeline import docs, tenant
from topology.stack import LocalStack

CONVERSATIONS, TURNS = 50, 4


async def test_a_killed_worker_loses_reorders_and_doubles_no_turn(kafka_stack: LocalStack):
    stack, owner, run = kafka_stack, tenant("conv-crash"), uuid.uuid4().hex[:6]
    before_kill = 0
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda", "with", "assert", "while"), tenant=owner)

        answered: list[str] = []

        async def converse(c: int) -> list[ResponseGenerated]:
            await asyncio.sleep(c * 0.04)  # spread the starts over two seconds
            answers = []
            for t in range(TURNS):
                question = f"What does the statement do? (c{c} t{t})"
                answers.append(
                    await client.ask(question, tenant=owner, conversation=f"{run}-{c}", timeout=240)
                )
                answered.append(question)
            return answers

        async def crash() -> float:
            await asyncio.sleep(2.5)
            nonlocal before_kill
            before_kill = len(answered)
            await asyncio.to_thread(stack.stop_process, "worker", signal.SIGKILL)
            began = time.monotonic()
            await asyncio.to_thread(stack.start_worker)
            return time.monotonic() - began

        *conversations, back_s = await asyncio.gather(*(converse(c) for c in range(CONVERSATIONS)), crash())
    failed = [a for a in conversations if isinstance(a, BaseException)]
    assert not failed, failed[:3]
    for c, answers in enumerate(conversations):
        state = await asyncio.to_thread(memory, stack, owner, f"{run}-{c}", TURNS, 60)
        assert state.turn_count == TURNS, (c, state.turn_count)  # each turn once
        assert [t.trace_id for t in state.turns] == [a.trace_id for a in answers]  # in order
        assert [t.question for t in state.turns] == [a.question for a in answers]
        for before, turn in zip(state.turns, state.turns[1:], strict=False):
            assert turn.standalone == f"{before.question} {turn.question}", (c, turn)  # with its memory
    assert 0 < before_kill < CONVERSATIONS * TURNS  # the kill came in the middle
    print(
        f"{CONVERSATIONS} conversations x {TURNS} turns through a SIGKILL after {before_kill} turns "
        f"were answered; worker back in {back_s:.1f}s"
    )
