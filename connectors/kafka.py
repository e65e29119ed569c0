"""Kafka on the client side: settings (with SASL/SSL passed to every client), topic
names and specs, the admin bootstrap and a small awaitable producer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from schemas.errors import PermanentError, TransientError

log = logging.getLogger(__name__)


class TopicNames(BaseModel):
    model_config = ConfigDict(frozen=True)

    queries: str = "llmops.queries"
    # Turns of conversations and their completions, keyed by conversation.
    turns: str = "llmops.turns"
    prompts: str = "llmops.prompts"
    embeddings: str = "llmops.embeddings"
    contexts: str = "llmops.contexts"
    responses: str = "llmops.responses"
    documents: str = "llmops.documents"
    indexed: str = "llmops.indexed"
    # Prompt artifacts to store or remove, keyed by tenant and prompt.
    prompt_artifacts: str = "llmops.artifacts"
    deadletter: str = "llmops.deadletter"
    telemetry: str = "llmops.telemetry"
    feedback: str = "llmops.feedback"
    alerts: str = "llmops.alerts"
    # Steps of passage re-indexes (`llmops reindex`), keyed by change id.
    index_changes: str = "llmops.index_changes"


class KafkaSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(default=None, description="CA bundle for SSL brokers.")
    partitions: int = Field(default=4, ge=1, description="Partitions of each pipeline topic.")
    replication_factor: int = Field(default=1, ge=1)
    topics: TopicNames = TopicNames()


def librdkafka_config(settings: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """confluent-kafka configuration, security included."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
        # librdkafka logs through Python logging, not straight to stderr.
        "logger": logging.getLogger("librdkafka"),
    }
    if settings.sasl_mechanism:
        conf["sasl.mechanism"] = settings.sasl_mechanism
    if settings.sasl_username is not None:
        conf["sasl.username"] = settings.sasl_username
    if settings.sasl_password is not None:
        conf["sasl.password"] = settings.sasl_password.get_secret_value()
    if settings.ssl_cafile is not None:
        conf["ssl.ca.location"] = str(settings.ssl_cafile)
    conf.update(extra)
    return conf


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def ensure_topics(settings: KafkaSettings, specs: Sequence[TopicSpec], timeout: float = 30) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin, metadata = cluster_metadata(settings, timeout)
    existing = set(metadata.topics)
    wanted = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=settings.replication_factor,
            config=s.config,
        )
        for s in specs
        if s.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise PermanentError(f"cannot create topic {name}: {exc}") from exc
    return created


def cluster_metadata(
    settings: KafkaSettings, timeout: float, between: Callable[[], None] = lambda: None
) -> tuple[Any, Any]:
    """An admin client and the cluster's metadata, once the broker answers. Credentials the
    broker refuses end the wait at once: librdkafka only reports them to `error_cb` and
    would otherwise retry until `timeout`, then say the broker is unreachable. `between`
    runs before each retry (a check that the broker's process is still alive, say)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refused: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            refused.append(error)

    admin = AdminClient(librdkafka_config(settings, error_cb=on_error))
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin, admin.list_topics(timeout=min(2.0, max(timeout, 0.1)))
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if refused:
                raise PermanentError(
                    f"broker {settings.bootstrap_servers} refused the credentials "
                    f"({refused[0].str()}): check LLMOPS_KAFKA__SASL_MECHANISM, __SASL_USERNAME "
                    "and __SASL_PASSWORD"
                ) from exc
            if time.monotonic() > deadline:
                raise TransientError(
                    f"broker {settings.bootstrap_servers} did not answer in {timeout:.0f}s: {exc}"
                ) from exc
            time.sleep(0.2)
            between()


def wait_for_broker(
    settings: KafkaSettings, timeout: float, between: Callable[[], None] = lambda: None
) -> None:
    """Block until the broker answers a metadata request; `between` as in cluster_metadata."""
    cluster_metadata(settings, timeout, between)


class Publisher:
    """An asyncio face on a librdkafka producer: `send` queues a message and returns a
    future that completes once the broker has it (acks=all, idempotent, so a retry neither
    doubles nor reorders). librdkafka does the batching and the wire format in C, so a
    stage's send costs a fraction of aiokafka's (README, One hop). Delivery reports are
    polled on a thread of their own, blocked in C while none come, which hands the reports
    of each poll to the event loop in one call: one wake-up of the loop per poll that
    returned reports, not one per message, and none while nothing is outstanding (polling
    on the loop woke it every millisecond while a message was outstanding)."""

    def __init__(self, settings: KafkaSettings, client_id: str, linger_ms: float = 1) -> None:
        self._settings = settings
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._producer: Any = None
        self._outstanding = 0
        self._drained = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: list[tuple[asyncio.Future[None], Any]] = []  # filled on the poller thread
        self._closing = threading.Event()
        self._poller: threading.Thread | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        from confluent_kafka import Producer

        self._producer = Producer(
            librdkafka_config(
                self._settings,
                **{
                    "client.id": self._client_id,
                    "linger.ms": self._linger_ms,
                    "enable.idempotence": True,
                    # Keys land where Java clients and faust (aiokafka) put them, so a faust
                    # table's changelog partition is its key's topic partition.
                    "partitioner": "murmur2_random",
                },
            )
        )
        self._loop = asyncio.get_running_loop()
        self._closing.clear()
        self._poller = threading.Thread(
            target=self._poll, args=(self._producer,), name=f"{self._client_id}-deliveries", daemon=True
        )
        self._poller.start()

    def _poll(self, producer: Any) -> None:
        """On the poller thread: serve delivery reports, hand each poll's to the loop."""
        while not self._closing.is_set():
            producer.poll(0.5)  # the callbacks (_reports_append) run here, inside poll
            if self._reports:
                reports, self._reports = self._reports, []
                assert self._loop is not None
                try:
                    self._loop.call_soon_threadsafe(self._settle, reports)
                except RuntimeError:  # the loop is closed: nobody waits for them any more
                    return

    @property
    def outstanding(self) -> int:
        """Messages sent that the broker has not acknowledged (or refused) yet."""
        return self._outstanding

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        """Queue one message; the future completes when the broker has acknowledged it."""
        await self.start()
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        report = partial(self._reports_append, delivered)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=report)
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                await asyncio.sleep(0.01)
        self._outstanding += 1
        self._drained.clear()
        return delivered

    def _reports_append(self, delivered: asyncio.Future[None], error: Any, _message: Any) -> None:
        """librdkafka's delivery callback, on the poller thread."""
        self._reports.append((delivered, error))

    def _settle(self, reports: list[tuple[asyncio.Future[None], Any]]) -> None:
        """On the loop: complete the futures of one poll's delivery reports."""
        self._outstanding -= len(reports)
        if not self._outstanding:
            self._drained.set()
        for delivered, error in reports:
            if delivered.done():
                continue
            if error is None:
                delivered.set_result(None)
            else:
                delivered.set_exception(TransientError(f"not delivered: {error}"))

    async def publish(self, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Send (key, value) pairs and wait for the broker's acknowledgement of each."""
        futures = [await self.send(topic, k, v) for k, v in messages]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise TransientError(f"{len(failed)} of {len(messages)} messages not delivered: {failed[0]}")

    async def stop(self) -> None:
        if self._producer is None:
            return
        try:
            if self._outstanding:  # the poller settles them
                await asyncio.wait_for(self._drained.wait(), 30)
        except TimeoutError:  # their events were not acked, so they are read again
            log.warning("%s: %d messages not delivered at stop", self._client_id, self._outstanding)
        self._closing.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)
            self._poller = None
        self._producer = None
