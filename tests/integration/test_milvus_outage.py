"""Milvus goes away and comes back: while it is down, a question fails within its
deadline after bounded retries (dead letter and RequestFailed); once it is back, the
same worker answers again, with no restart."""

from __future__ import annotations

import asyncio
import time

import pytest

from connectors.client import Client, RequestError
from tests.integration.test_dlq import llmops, responses_for
from tests.integration.test_pipeline import dead_letters, docs, tenant
from topology.stack import LocalStack


async def test_a_milvus_outage_fails_questions_in_time_and_heals_by_itself(kafka_stack: LocalStack):
    stack, owner = kafka_stack, tenant("milvus-down")
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        await asyncio.to_thread(stack.stop_process, "milvus")
        began = time.monotonic()
        try:
            with pytest.raises(RequestError) as failed:
                await client.ask("What is a lambda?", tenant=owner, timeout=120)
            failed_in = time.monotonic() - began
        finally:
            restarted = time.monotonic()
            await asyncio.to_thread(stack.start_milvus)
        back, attempts = time.monotonic(), 0
        while True:  # pymilvus reconnects by itself within seconds; a question meanwhile may fail
            attempts += 1
            try:
                answer = await client.ask("What is a lambda?", tenant=owner, timeout=120)
                break
            except RequestError:
                assert time.monotonic() - back < 60, "no answer a minute after Milvus came back"
        answered_in = time.monotonic() - back
    failure = failed.value.failure
    assert failure.stage == "retrieval" and failure.error_type == "TransientError", failure
    assert answer.passages and answer.passages[0].doc_id == "pydoc-lambda"

    # Retrieval took the question in-process from embedding (chained stages): its letter
    # names the topic it would have come from, and replaying it there gets the answer.
    [letter] = dead_letters(stack, failure.trace_id.encode())
    assert (letter.stage, letter.topic, letter.partition) == (
        "retrieval",
        stack.settings.kafka.topics.embeddings,
        -1,
    )
    replayed = llmops(stack, "dlq", "replay", "--since", "1h", "--id", letter.event_id)
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
    [again] = responses_for(stack, failure.trace_id, timeout=15)
    assert again.passages and again.passages[0].doc_id == "pydoc-lambda"
    print(
        f"Milvus down: failed after {failed_in:.1f}s; server up again in {back - restarted:.1f}s, "
        f"answered {answered_in:.2f}s later (question {attempts})"
    )
