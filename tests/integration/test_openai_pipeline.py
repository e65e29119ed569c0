"""The openai backend through the whole pipeline, on Apache Kafka: a stack of its own
whose worker talks to a local Chat Completions server (streamed, 2 s timeout). HyDE:
prompt versions switch it per version, the hypothetical passage's tokens and latency are
recorded, a 429 is retried, the extractive stack refuses it with the way out. Outages:
while the server answers 500 or 429 or too slowly, a question fails within its deadline
after bounded retries; when the server is back, the next question is answered, with no
restart."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.analytics import Analytics
from connectors.client import Client, RequestError
from connectors.kafka import TopicNames
from tests.integration.chat_server import PASSAGE, ChatServer
from tests.integration.conftest import stack_settings
from tests.integration.test_cli import llmops
from tests.integration.test_pipeline import docs, tenant
from tests.integration.test_prompt_registry import cli, prompt_file
from topology.settings import Settings
from topology.stack import LocalStack

API_KEY = f"sk-canary-{uuid.uuid4().hex}"
WEBHOOK_SECRET = f"hook-canary-{uuid.uuid4().hex}"
QUESTIONS = [f"What does a lambda expression create? ({i})" for i in range(10)]


@pytest.fixture(scope="module")
async def chat() -> AsyncIterator[ChatServer]:
    server = await ChatServer().start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def broker(kafka_stack: LocalStack) -> str:
    """The Apache Kafka tier's broker (resolved in a sync fixture: that one starts a stack
    outside the event loop)."""
    return kafka_stack.settings.kafka.bootstrap_servers


@pytest.fixture(scope="module")
async def openai_stack(
    broker: str,
    chat: ChatServer,
    base_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[LocalStack]:
    """A stack whose worker uses the openai backend, on the Apache Kafka of the kafka tier
    with an app id and topics of its own (its own group, its own Milvus and analytics)."""
    env = {
        "LLMOPS_LLM__BACKEND": "openai",
        "LLMOPS_LLM__BASE_URL": chat.url,
        "LLMOPS_LLM__MODEL": "served-model",
        "LLMOPS_LLM__STREAM": "true",
        "LLMOPS_LLM__TIMEOUT_S": "2",
        # Canaries: the key must reach the server and no log line.
        "LLMOPS_LLM__API_KEY": API_KEY,
        "LLMOPS_MILVUS__TOKEN": "",
        "LLMOPS_WEBHOOK__URL": f"http://127.0.0.1:9/{WEBHOOK_SECRET}",
        "LLMOPS_WORKER__LOG_LEVEL": "INFO",
    }
    settings = stack_settings(base_settings, tmp_path_factory.mktemp("openai-stack"))
    topics = TopicNames(**{f: f"openai.{name}" for f, name in TopicNames().model_dump().items()})
    env |= {"LLMOPS_WORKER__APP_ID": "llmops-openai"}
    env |= {f"LLMOPS_KAFKA__TOPICS__{f.upper()}": name for f, name in topics.model_dump().items()}
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": broker, "topics": topics}),
            "worker": settings.worker.model_copy(update={"app_id": "llmops-openai"}),
        }
    )
    stack = LocalStack(settings, broker=False, env=env)
    # The worker's readiness probe needs the chat server answering: this loop serves it.
    await asyncio.to_thread(stack.start)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


async def ask_all(client: Client, owner: str, version: str) -> list:
    return [
        await client.ask(q, tenant=owner, prompt=version) for q in QUESTIONS
    ]  # one at a time: clean latency


async def test_hyde_per_version_records_its_tokens_and_latency(
    openai_stack: LocalStack, chat: ChatServer, tmp_path: Path
):
    stack, owner = openai_stack, tenant("hyde")
    plain_file, plain = prompt_file(tmp_path, hyde="off")
    average_file, average = prompt_file(tmp_path, hyde="average", seed=5)
    replace_file, replace = prompt_file(tmp_path, hyde="replace")
    for f in (plain_file, average_file, replace_file):
        cli(stack, "prompts", "push", str(f))

    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda", "with", "assert", "while"), tenant=owner)
        without = await ask_all(client, owner, plain.version)
        hyde_requests_before = len(chat.hyde_requests())
        with_hyde = await ask_all(client, owner, average.version)
        assert len(chat.hyde_requests()) - hyde_requests_before == len(QUESTIONS)
        asked = chat.hyde_requests()[-1]["body"]
        replaced = await client.ask(QUESTIONS[0], tenant=owner, prompt=replace.version)

    assert (
        asked["seed"] == 5 and asked["stream"] is True and QUESTIONS[-1] in asked["messages"][-1]["content"]
    )
    for answer in with_hyde + [replaced]:
        assert answer.model == "served-model" and answer.passages[0].doc_id == "pydoc-lambda"
        assert answer.usage_details["hyde_output"] == len(PASSAGE.split())
    assert all("hyde_output" not in a.usage_details for a in without)

    added_ms = statistics.median(a.latency_ms["prompting"] for a in with_hyde) - statistics.median(
        a.latency_ms["prompting"] for a in without
    )
    embedding_added_ms = statistics.median(a.latency_ms["embedding"] for a in with_hyde) - statistics.median(
        a.latency_ms["embedding"] for a in without
    )
    hyde_tokens = statistics.mean(
        a.usage_details["hyde_input"] + a.usage_details["hyde_output"] for a in with_hyde
    )
    print(
        f"HyDE adds {added_ms:.1f} ms to prompting and {embedding_added_ms:.1f} ms to embedding (medians of "
        f"{len(QUESTIONS)}, local server answering at once) and {hyde_tokens:.0f} tokens per query"
    )

    # The prompting stage's telemetry carries the HyDE call: the model, its tokens, the mode.
    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        traces = [a.trace_id for a in with_hyde]
        for _ in range(60):
            rows = (
                await analytics.query(
                    "SELECT model, input_tokens, output_tokens, hyde FROM telemetry "
                    "WHERE stage = 'prompting' AND has({traces:Array(String)}, trace_id)",
                    {"traces": traces},
                )
            ).rows
            if len(rows) == len(traces):
                break
            await asyncio.sleep(1)
    finally:
        await analytics.close()
    assert len(rows) == len(traces)
    assert {(r[0], r[2], r[3]) for r in rows} == {("served-model", len(PASSAGE.split()), "average")}


async def test_a_rate_limited_hyde_call_is_retried(
    openai_stack: LocalStack, chat: ChatServer, tmp_path: Path
):
    stack, owner = openai_stack, tenant("hyde-429")
    hyde_file, hyde = prompt_file(tmp_path, hyde="replace", description=uuid.uuid4().hex)
    cli(stack, "prompts", "push", str(hyde_file))
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        before = len(chat.hyde_requests())
        chat.failures = [429, 500]
        answer = await client.ask("What is a lambda?", tenant=owner, prompt=hyde.version, timeout=60)
    assert answer.served.version == hyde.version and not chat.failures
    assert len(chat.hyde_requests()) - before == 3  # 429, 500, then the passage


async def test_the_extractive_backend_refuses_hyde_with_the_way_out(tansu_stack: LocalStack, tmp_path: Path):
    hyde_file, hyde = prompt_file(tmp_path, hyde="average", description=uuid.uuid4().hex)
    cli(tansu_stack, "prompts", "push", str(hyde_file))
    async with Client(tansu_stack.settings) as client:
        with pytest.raises(RequestError, match="LLMOPS_LLM__BACKEND=openai"):
            await client.ask("What is a lambda?", tenant=tenant("no-hyde"), prompt=hyde.version)


@pytest.mark.parametrize("outage", ["500", "429", "slow"])
async def test_an_llm_outage_fails_questions_in_time_and_heals_by_itself(
    openai_stack: LocalStack, chat: ChatServer, outage: str
):
    owner = tenant(f"llm-{outage}")
    async with Client(openai_stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        if outage == "slow":
            chat.delay_s = 3.0  # over the worker's 2 s timeout
        else:
            chat.down_status, chat.down_until = int(outage), time.monotonic() + 600
        began = time.monotonic()
        try:
            with pytest.raises(RequestError) as failed:
                await client.ask("What is a lambda?", tenant=owner, timeout=60)
            failed_in = time.monotonic() - began
        finally:
            chat.delay_s, chat.down_until = 0.0, 0.0
        back = time.monotonic()
        answer = await client.ask("What is a lambda?", tenant=owner, timeout=60)
        recovered_in = time.monotonic() - back
    failure = failed.value.failure
    assert failure.stage == "generation" and failure.error_type == "TransientError"
    assert (outage in failure.reason) if outage != "slow" else ("slow" in failure.reason)
    assert answer.model == "served-model" and answer.passages
    print(f"LLM {outage}: failed after {failed_in:.1f}s (4 attempts); answered {recovered_in:.2f}s after")


def test_secrets_reach_their_servers_and_no_log_line(openai_stack: LocalStack, chat: ChatServer):
    """Runs last in this module: every process of the stack has logged its start, the
    HyDE and outage tests (errors, retries, dead letters) and a verbose CLI call."""
    assert {s["auth"] for s in chat.seen} == {f"Bearer {API_KEY}"}
    env = {
        **openai_stack.env(),
        "LLMOPS_LLM__API_KEY": API_KEY,
        "LLMOPS_WEBHOOK__URL": f"http://x/{WEBHOOK_SECRET}",
    }
    cli_run = llmops("-v", "ask", "What is a lambda?", "--tenant", "secrets", env=env)
    bad = llmops("ask", "x", env={**env, "LLMOPS_KAFKA__PARTITIONS": "not-a-number"})
    assert bad.returncode == 1 and "invalid LLMOPS_* configuration" in bad.stderr
    logs = {p.name: p.read_text(errors="replace") for p in (openai_stack.data_dir / "logs").glob("*.log")}
    logs |= {"cli": cli_run.stdout + cli_run.stderr, "cli-bad-config": bad.stdout + bad.stderr}
    assert sum(len(text) for text in logs.values()) > 10_000, "too little logged for the scan to mean much"
    for name, text in logs.items():
        assert API_KEY not in text and WEBHOOK_SECRET not in text, f"a secret in {name}"
