"""Milvus goes away and comes back: while it is down, a question fails within its
deadline after bounded retries (dead letter and RequestFailed); once it is back, the
same worker answers again, with no restart."""

from __future__ import annotations

import asyncio
import time

import pytest

from connectors.client import Client, RequestError
from tests.integration.test_pipeline import docs, tenant
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
    print(
        f"Milvus down: failed after {failed_in:.1f}s; server up again in {back - restarted:.1f}s, "
        f"answered {answered_in:.2f}s later (question {attempts})"
    )
