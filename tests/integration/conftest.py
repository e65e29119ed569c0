"""Integration fixtures: the real embedded stack (Tansu, Milvus Lite server, faust worker,
ONNX model) and, when Java is present, the same pipeline on Apache Kafka."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from connectors.clickhouse import AnalyticsStore, ClickHouseSettings
from connectors.embedder import OnnxEmbedder
from tests.integration.analytics_fixtures import opened, store_settings
from topology.apache_kafka import java_available
from topology.settings import Settings
from topology.stack import LocalStack

REQUIRE_KAFKA = os.environ.get("LLMOPS_REQUIRE_APACHE_KAFKA") == "1"
# The stack's analytics process judges experiments every 2 s here, not every 30 s, so the
# rollback tests wait seconds (processes the stacks start inherit this environment).
os.environ.setdefault("LLMOPS_MONITOR__EXPERIMENTS_EVERY_S", "2")
# Their sinks store rows within 1 s, not the default 3 s (fewer inserts at a steady rate,
# docs/scaling.md): the tests wait for analytics rows many times.
os.environ.setdefault("LLMOPS_SINK__BATCH_WITHIN_S", "1")
# The stacks answer with the extractive backend (deterministic, and no LLM server on the
# CPU while the suite runs); tests/integration/test_local_llm.py runs the local model.
os.environ.setdefault("LLMOPS_LLM__BACKEND", "extractive")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    settings = Settings()
    if not (settings.embedding.model_dir / "model.onnx").is_file():
        pytest.fail(f"no ONNX model in {settings.embedding.model_dir}: run `make model` first")
    return settings


@pytest.fixture(scope="session")
def embedder(base_settings: Settings) -> OnnxEmbedder:
    model = OnnxEmbedder(base_settings.embedding)
    model.open()
    return model


def stack_settings(base: Settings, data_dir: Path) -> Settings:
    stack = base.stack.model_copy(update={"data_dir": data_dir, "broker_port": 0, "milvus_port": 0})
    analytics = base.analytics.model_copy(update={"port": 0})
    # Without LLMOPS_CLICKHOUSE__PATH the stack keeps its chDB directory in data_dir.
    return base.model_copy(update={"stack": stack, "analytics": analytics})


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB directory this test process may open (chDB opens one path per
    process); tests keep apart by database."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(params=["chdb", "server"])
def clickhouse_settings(request: pytest.FixtureRequest, chdb_dir: Path) -> ClickHouseSettings:
    """A database of its own on chDB, and on a ClickHouse server when LLMOPS_CLICKHOUSE__URL
    names one (skipped, saying so, otherwise)."""
    return store_settings(request.param, chdb_dir)


@pytest.fixture
async def store(clickhouse_settings: ClickHouseSettings) -> AsyncIterator[AnalyticsStore]:
    """The analytics store on `clickhouse_settings`, migrated; its database is dropped after.
    A module that tests chDB only defines its own `store`."""
    async for s in opened(clickhouse_settings):
        yield s


@pytest.fixture(scope="session")
def tansu_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(stack_settings(base_settings, tmp_path_factory.mktemp("tansu"))) as stack:
        yield stack


def require_java(tier: str) -> None:
    """Skip a tier that runs Apache Kafka where java or mvn is missing; fail in CI."""
    if not java_available():
        if REQUIRE_KAFKA:
            pytest.fail("LLMOPS_REQUIRE_APACHE_KAFKA=1 but java or mvn is missing")
        pytest.skip(f"{tier} skipped: no java/mvn on this machine")


@pytest.fixture(scope="session")
def kafka_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    require_java("Apache Kafka tier")
    settings = stack_settings(base_settings, tmp_path_factory.mktemp("kafka-stack"))
    settings = settings.model_copy(update={"stack": settings.stack.model_copy(update={"broker": "kafka"})})
    with LocalStack(settings) as stack:
        yield stack


@pytest.fixture(scope="session", params=["tansu", "kafka"])
def stack(request: pytest.FixtureRequest) -> LocalStack:
    """The same tests on both brokers."""
    return request.getfixturevalue(f"{request.param}_stack")
