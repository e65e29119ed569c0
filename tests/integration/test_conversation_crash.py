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

from confluent_kafka import Consumer, TopicPartition

from agents.conversation import decode_turn_event
from connectors.client import Client
from connectors.kafka import librdkafka_config
from schemas import ResponseGenerated
from schemas.conversations import ConversationState, TurnCompleted, conversation_key
from tests.integration.test_pipeline import docs, tenant
from topology.stack import LocalStack
from topology.topics import conversations_topic

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
            # On a count, not a clock: a fast pipeline answers every turn in a few seconds.
            deadline = time.monotonic() + 120
            while len(answered) < CONVERSATIONS * TURNS // 4:
                assert time.monotonic() < deadline, f"only {len(answered)} turns answered in 120 s"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(stack.stop_process, "worker", signal.SIGKILL)
            nonlocal before_kill
            before_kill = len(answered)
            began = time.monotonic()
            await asyncio.to_thread(stack.start_worker)
            return time.monotonic() - began

        *conversations, back_s = await asyncio.gather(*(converse(c) for c in range(CONVERSATIONS)), crash())
    failed = [a for a in conversations if isinstance(a, BaseException)]
    assert not failed, failed[:3]
    states = await asyncio.to_thread(memories, stack, owner, [f"{run}-{c}" for c in range(CONVERSATIONS)], 60)
    for c, answers in enumerate(conversations):
        state = states[f"{run}-{c}"]
        assert state.turn_count == TURNS, (  # each turn once
            c,
            state.turn_count,
            turns_given_up(stack, owner, f"{run}-{c}"),
        )
        assert [t.trace_id for t in state.turns] == [a.trace_id for a in answers], (  # in order
            c,
            turns_given_up(stack, owner, f"{run}-{c}"),
        )
        assert [t.question for t in state.turns] == [a.question for a in answers]
        for before, turn in zip(state.turns, state.turns[1:], strict=False):
            assert turn.standalone == f"{before.question} {turn.question}", (c, turn)  # with its memory
    assert 0 < before_kill < CONVERSATIONS * TURNS  # the kill came in the middle
    print(
        f"{CONVERSATIONS} conversations x {TURNS} turns through a SIGKILL after {before_kill} turns "
        f"were answered; worker back in {back_s:.1f}s"
    )


def latest_records(stack: LocalStack, topic: str) -> dict[bytes, bytes | None]:
    """Each key's last value on `topic`, read from the start of every partition to its end."""
    return dict(all_records(stack, topic))


def turns_given_up(stack: LocalStack, owner: str, conversation: str) -> list[str]:
    """The failed turns a conversation's worker announced, with their reasons (what to
    look at when a turn is remembered out of order)."""
    key = conversation_key(owner, conversation).encode()
    found = []
    for k, value in all_records(stack, stack.settings.kafka.topics.turns):
        event = decode_turn_event(value) if k == key else None
        if isinstance(event, TurnCompleted) and not event.ok:
            found.append(f"{event.trace_id} by {event.producer}: {event.reason}")
    return found


def all_records(stack: LocalStack, topic: str) -> list[tuple[bytes, bytes | None]]:
    """Every (key, value) on `topic`, from the start of every partition to its end."""
    consumer = Consumer(
        librdkafka_config(
            stack.settings.kafka, **{"group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        ends = {}
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        found: list[tuple[bytes, bytes | None]] = []
        deadline = time.monotonic() + 30
        while ends:
            assert time.monotonic() < deadline, f"reading {topic} took longer than 30 s"
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None:
                    found.append((message.key() or b"", message.value()))
                    partition, offset = message.partition() or 0, message.offset() or 0
                    if offset + 1 >= ends.get(partition, 0):
                        ends.pop(partition, None)
        return found
    finally:
        consumer.close()


def memories(
    stack: LocalStack, owner: str, conversations: list[str], timeout: float
) -> dict[str, ConversationState]:
    """The conversations as the changelog holds them, once each has all its turns answered
    (as tests.integration.test_conversations.memory, with one read of the changelog for all)."""
    topic = conversations_topic(stack.settings.worker.app_id)
    deadline = time.monotonic() + timeout
    while True:
        records = latest_records(stack, topic)
        states = {}
        for conversation in conversations:
            record = records.get(conversation_key(owner, conversation).encode())
            state = ConversationState.model_validate_json(record) if record else None
            if state is not None and state.turn_count >= TURNS and state.in_flight is None:
                states[conversation] = state
        if len(states) == len(conversations):
            return states
        missing = sorted(set(conversations) - set(states))
        assert time.monotonic() < deadline, f"conversations not complete: {missing[:5]}"
        time.sleep(0.3)
