"""Kafka security settings reach every client: a whole stack (bootstrap's admin client,
the faust worker and analytics apps, the Python client, the CLI) on an Apache Kafka that
only speaks SASL_PLAINTEXT with PLAIN. A wrong password fails clearly, and no log line
of any process holds the password."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.client import Client
from schemas.errors import PermanentError
from tests.integration.conftest import require_java, stack_settings
from tests.integration.test_cli import llmops
from tests.integration.test_pipeline import docs, tenant
from topology.apache_kafka import ApacheKafka
from topology.settings import Settings
from topology.stack import LocalStack

PASSWORD = f"alice-canary-{uuid.uuid4().hex}"


def sasl_env(password: str) -> dict[str, str]:
    return {
        "LLMOPS_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "LLMOPS_KAFKA__SASL_MECHANISM": "PLAIN",
        "LLMOPS_KAFKA__SASL_USERNAME": "alice",
        "LLMOPS_KAFKA__SASL_PASSWORD": password,
    }


@pytest.fixture(scope="module")
def sasl_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    require_java("SASL tier")
    kafka = ApacheKafka(
        tmp_path_factory.mktemp("sasl-kafka"), sasl_users={"admin": "admin-secret", "alice": PASSWORD}
    )
    kafka.start()
    try:
        settings = stack_settings(base_settings, tmp_path_factory.mktemp("sasl-stack"))
        secure = settings.kafka.model_copy(
            update={
                "bootstrap_servers": kafka.bootstrap,
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "alice",
                "sasl_password": SecretStr(PASSWORD),
            }
        )
        with LocalStack(
            settings.model_copy(update={"kafka": secure}), broker=False, env=sasl_env(PASSWORD)
        ) as stack:
            yield stack
    finally:
        kafka.stop()


async def test_a_whole_stack_runs_on_a_sasl_broker_and_never_logs_the_password(
    sasl_stack: LocalStack, tmp_path: Path
):
    owner = tenant("sasl")
    began = time.monotonic()
    async with Client(sasl_stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        answer = await client.ask("What is a lambda?", tenant=owner)
    assert answer.passages[0].doc_id == "pydoc-lambda"

    client_s, began = time.monotonic() - began, time.monotonic()
    asked = llmops("-v", "ask", "What is a lambda?", "--tenant", owner, env=sasl_stack.env())
    assert asked.returncode == 0 and "anonymous functions" in asked.stdout, asked.stderr
    ask_s, began = time.monotonic() - began, time.monotonic()
    refused = llmops("bootstrap", env={**sasl_stack.env(), **sasl_env("wrong-password")}, timeout=120)
    assert refused.returncode == 1 and "refused the credentials" in refused.stderr, refused.stderr
    wrong = sasl_stack.settings.kafka.model_copy(update={"sasl_password": SecretStr("wrong-password")})
    with pytest.raises(PermanentError, match="refused the credentials"):
        async with Client(sasl_stack.settings.model_copy(update={"kafka": wrong})):
            pass
    print(
        f"sasl: client ingest+ask {client_s:.1f}s, `llmops ask` {ask_s:.1f}s, bootstrap refused after "
        f"{time.monotonic() - began:.1f}s: {refused.stderr.strip().splitlines()[-1]}"
    )

    logs = {p.name: p.read_text(errors="replace") for p in (sasl_stack.data_dir / "logs").glob("*.log")}
    logs |= {"cli": asked.stdout + asked.stderr, "cli-refused": refused.stdout + refused.stderr}
    for name, text in logs.items():
        assert PASSWORD not in text, f"the SASL password in {name}"
