"""The local language model (llama.cpp serving SmolLM2 through xllamacpp) in a stack of
its own, reached by the `openai` backend like any server: a question is answered by the
model with its tokens counted and priced, HyDE's passage is written by it, an oversized
prompt and a slow answer fail with errors that say why, and a SIGKILLed server is
restarted by the stack while no question is lost or answered twice. Short answers,
greedy, fixed seed: the model runs on the CI's CPU."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.analytics import Analytics
from connectors.client import Client, RequestError
from connectors.kafka import librdkafka_config
from connectors.llm import LLMSettings, OpenAIBackend
from connectors.ports import RenderedPrompt
from schemas import PromptAssembled, ResponseGenerated
from schemas.errors import TransientError
from tests.integration.conftest import stack_settings
from tests.integration.test_cli import llmops
from tests.integration.test_pipeline import docs, tenant
from tests.integration.test_prompt_registry import cli, prompt_file
from topology.settings import Settings
from topology.stack import LocalStack

MAX_TOKENS = 24
SEED = 7
ENV = {
    "LLMOPS_LLM__BACKEND": "openai",  # the conftest sets extractive for the other stacks
    "LLMOPS_PIPELINE__DEFAULT_TOP_K": "2",
    "LLMOPS_PIPELINE__PROMPT__MAX_TOKENS": str(MAX_TOKENS),
    "LLMOPS_PIPELINE__PROMPT__TEMPERATURE": "0",
    "LLMOPS_PIPELINE__PROMPT__SEED": str(SEED),
    # The HyDE test reads the passage off the prompts topic, which chained stages skip.
    "LLMOPS_WORKER__CHAIN_STAGES": "false",
}
N_CTX, SLOTS = 2048, 2  # 1,024 tokens a slot


@pytest.fixture(scope="module")
def llm_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = stack_settings(base_settings, tmp_path_factory.mktemp("llm-stack"))
    local = settings.local_llm.model_copy(update={"port": 0, "n_ctx": N_CTX, "parallel": SLOTS})
    with LocalStack(settings.model_copy(update={"local_llm": local}), env=ENV) as stack:
        assert stack.local_llm and stack.settings.llm.base_url == stack.llm_url
        yield stack


def served(stack: LocalStack) -> str:
    return stack.settings.local_llm.served_name()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def topic_events(
    stack: LocalStack,
    topic: str,
    traces: set[str],
    wanted: int,
    timeout: float = 30,
    kinds: frozenset[str] | None = None,
) -> list[dict]:
    """Events of these traces (and of these event types, if given) on a topic, read from
    its start (as JSON)."""

    def counts(event: dict) -> bool:
        return event.get("trace_id") in traces and (kinds is None or event.get("event_type") in kinds)

    consumer = Consumer(
        librdkafka_config(
            stack.settings.kafka, **{"group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(found) < wanted:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None:
                    event = json.loads(message.value())
                    if counts(event):
                        found.append(event)
        # Anything more that is already there (a duplicate would be).
        for message in consumer.consume(num_messages=500, timeout=2):
            if message.error() is None and counts(json.loads(message.value())):
                found.append(json.loads(message.value()))
        return found
    finally:
        consumer.close()


async def telemetry_rows(stack: LocalStack, stage: str, traces: list[str]) -> list[tuple]:
    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        for _ in range(60):
            rows = (
                await analytics.query(
                    "SELECT model, input_tokens, output_tokens, cost_usd, priced FROM telemetry "
                    "WHERE stage = {stage:String} AND has({traces:Array(String)}, trace_id)",
                    {"stage": stage, "traces": traces},
                )
            ).rows
            if len(rows) >= len(traces):
                return [tuple(r) for r in rows]
            await asyncio.sleep(1)
        return [tuple(r) for r in rows]
    finally:
        await analytics.close()


async def test_a_question_is_answered_by_the_local_model_with_its_tokens_counted(llm_stack: LocalStack):
    owner = tenant("local-llm")
    async with Client(llm_stack.settings) as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)
        began = time.monotonic()
        answer = await client.ask("What is a lambda expression?", tenant=owner, timeout=120)
        took = time.monotonic() - began

    assert answer.model == served(llm_stack) and answer.answer.strip()
    assert answer.passages[0].doc_id == "pydoc-lambda"
    usage = answer.usage_details
    assert usage["input"] > 100 and 0 < usage["output"] <= MAX_TOKENS  # the passages are in the prompt
    rows = await telemetry_rows(llm_stack, "generation", [answer.trace_id])
    assert rows == [(served(llm_stack), usage["input"], usage["output"], 0.0, True)]  # priced, at 0

    generation_s = answer.latency_ms["generation"] / 1000
    timings = llm_stack.timings
    print(
        f"local LLM: ready after {timings['llm_ready_s']:.1f}s (stack {timings['ready_s']:.1f}s), "
        f"RSS {rss_mib(llm_stack.pid('llm')):.0f} MiB; one answer: {usage['input']} prompt + "
        f"{usage['output']} completion tokens, generation stage {generation_s:.2f}s, whole ask "
        f"{took:.2f}s, {usage['output'] / generation_s:.1f} completion tokens/s with prefill; "
        f"answer: {answer.answer!r}"
    )


async def test_hydes_passage_is_written_by_the_local_model(llm_stack: LocalStack, tmp_path: Path):
    owner = tenant("local-hyde")
    hyde_file, hyde = prompt_file(
        tmp_path,
        hyde="replace",
        hyde_max_tokens=32,
        max_tokens=8,
        temperature=0.0,
        seed=SEED,
        top_k=1,
        description=uuid.uuid4().hex,
    )
    cli(llm_stack, "prompts", "push", str(hyde_file))
    async with Client(llm_stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        answer = await client.ask(
            "What is a lambda expression?", tenant=owner, prompt=hyde.version, timeout=120
        )

    assert answer.served.version == hyde.version and answer.model == served(llm_stack)
    assert answer.usage_details["hyde_input"] > 0 and 0 < answer.usage_details["hyde_output"] <= 32
    [assembled] = [
        PromptAssembled.model_validate(e)
        for e in topic_events(llm_stack, llm_stack.settings.kafka.topics.prompts, {answer.trace_id}, wanted=1)
    ]
    spec = assembled.prompt
    assert spec.served.hyde == "replace" and spec.hyde_model == served(llm_stack)
    assert len(spec.hyde_passage.split()) >= 3  # the model's words, not a template's
    assert spec.hyde_usage["output"] == answer.usage_details["hyde_output"]
    rows = await telemetry_rows(llm_stack, "prompting", [answer.trace_id])
    assert [r[:3] for r in rows] == [(served(llm_stack), spec.hyde_usage["input"], spec.hyde_usage["output"])]
    print(f"HyDE passage by the local model: {spec.hyde_passage!r}")


async def test_a_prompt_over_the_context_fails_at_once_saying_so(llm_stack: LocalStack, tmp_path: Path):
    big_file, big = prompt_file(tmp_path, system="Read this carefully. " * 400, description=uuid.uuid4().hex)
    cli(llm_stack, "prompts", "push", str(big_file))
    async with Client(llm_stack.settings) as client:
        began = time.monotonic()
        with pytest.raises(RequestError) as failed:
            await client.ask("What is a lambda?", tenant=tenant("too-long"), prompt=big.version, timeout=60)
        took = time.monotonic() - began
    failure = failed.value.failure
    assert (failure.stage, failure.error_type) == ("generation", "PermanentError")  # not retried
    assert "exceeds the available context size" in failure.reason and "400" in failure.reason
    assert took < 20
    print(f"oversized prompt: failed after {took:.1f}s: {failure.reason[:200]}")


async def test_an_answer_slower_than_the_timeout_fails_saying_so(llm_stack: LocalStack):
    long_answer = RenderedPrompt(
        system="",
        user="Count from 1 to 300, separated by commas.",
        question="count",
        sources=[],
        temperature=0.0,
        max_tokens=400,
        seed=SEED,
    )
    impatient = OpenAIBackend(LLMSettings(backend="openai", base_url=llm_stack.llm_url, timeout_s=0.5))
    await impatient.open()
    try:
        began = time.monotonic()
        with pytest.raises(TransientError, match="slow"):  # the runtime retries, then RequestFailed
            await impatient.generate(long_answer)
        took = time.monotonic() - began
    finally:
        await impatient.close()
    assert took < 2.0
    # The server dropped the abandoned request and answers the next one.
    patient = OpenAIBackend(LLMSettings(backend="openai", base_url=llm_stack.llm_url, timeout_s=60))
    await patient.open()
    try:
        short = RenderedPrompt(
            system="", user="Say hello.", question="hi", sources=[], temperature=0.0, max_tokens=4, seed=SEED
        )
        assert (await patient.generate(short)).usage_details["output"] > 0
    finally:
        await patient.close()


def test_a_worker_without_an_llm_server_says_which_variable_to_set():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_LLM__")}
    result = llmops("worker", env={**env, "LLMOPS_LLM__BACKEND": "openai"}, timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "set LLMOPS_LLM__BASE_URL" in line and "Traceback" not in result.stderr


def slot_launches(stack: LocalStack) -> int:
    return stack.log_path("llm").read_text(errors="replace").count("launch_slot_")


async def test_a_killed_llm_server_is_restarted_and_no_question_is_lost(llm_stack: LocalStack):
    """Runs last in this module: it kills the server."""
    stack, owner = llm_stack, tenant("llm-kill")
    others = {name: stack.pid(name) for name in ("broker", "milvus", "analytics", "worker")}
    killed, restarts = stack.pid("llm"), len(stack.llm_restarts)
    questions = [f"What does a lambda expression create? ({i})" for i in range(4)]
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)
        launched = slot_launches(stack)
        began = time.monotonic()
        asks = [asyncio.ensure_future(client.ask(q, tenant=owner, timeout=90)) for q in questions]
        while slot_launches(stack) == launched:  # a question is being decoded: kill now
            assert time.monotonic() - began < 60, "no question reached the LLM server"
            await asyncio.sleep(0.05)
        os.kill(killed, signal.SIGKILL)
        killed_at = time.monotonic()
        outcomes = await asyncio.gather(*asks, return_exceptions=True)
        settled = time.monotonic() - killed_at

        # Every question got exactly one reply: an answer, or a failure of the generation
        # stage (the server was down for all of its tries). None timed out.
        answered = [o for o in outcomes if isinstance(o, ResponseGenerated)]
        failed = [o.failure for o in outcomes if isinstance(o, RequestError)]
        assert len(answered) + len(failed) == len(questions), outcomes
        assert all((f.stage, f.error_type) == ("generation", "TransientError") for f in failed)
        traces = {a.trace_id for a in answered} | {f.trace_id for f in failed}
        assert len(traces) == len(questions)
        # The answers and failures: streamed ResponseDelta events share the topic.
        final = frozenset({"ResponseGenerated", "RequestFailed"})
        replies = topic_events(stack, stack.settings.kafka.topics.responses, traces, len(traces), kinds=final)
        assert sorted(r["trace_id"] for r in replies) == sorted(traces), "a reply lost or sent twice"

        # The stack restarted the server; the next question is answered by it, and nothing
        # else was restarted.
        deadline = time.monotonic() + 120
        while len(stack.llm_restarts) == restarts:
            assert time.monotonic() < deadline, f"LLM server not restarted; see {stack.log_path('llm')}"
            await asyncio.sleep(0.2)
        after = await client.ask(questions[0], tenant=owner, timeout=90)
    assert stack.pid("llm") != killed and after.model == served(stack) and after.answer.strip()
    assert {name: stack.pid(name) for name in others} == others
    for pid in others.values():
        os.kill(pid, 0)  # still running
    print(
        f"SIGKILL of the LLM server: {len(answered)} answered, {len(failed)} failed with RequestFailed, "
        f"all settled {settled:.1f}s after the kill; restarted in {stack.llm_restarts[-1]:.1f}s"
    )
