"""Apache Kafka (KRaft, one node) for `llmops up --broker kafka`, the broker tests and the
benchmarks: jars from Maven Central via `mvn` (cached outside git, under
~/.cache/llmops-stream), started with the machine's Java."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from topology.local_processes import StackError, free_port

POM = Path(__file__).parent / "kafka" / "pom.xml"
VERSION = "4.1.2"  # keep equal to docker/compose.yaml and the pom
CACHE = Path.home() / ".cache" / "llmops-stream"

LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="out" target="SYSTEM_OUT">
    <PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="out"/></Root>
    <Logger name="kafka.server.KafkaServer" level="INFO"/></Loggers>
</Configuration>
"""


def java_available() -> bool:
    return shutil.which("java") is not None and shutil.which("mvn") is not None


def fetch_jars() -> Path:
    libs = CACHE / f"kafka-{VERSION}" / "libs"
    if not (libs / f"kafka_2.13-{VERSION}.jar").is_file():
        fetched = subprocess.run(  # noqa: S603
            [  # noqa: S607  (mvn from PATH, like java below)
                "mvn",
                "-q",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
            ],
            check=False,
        )
        if fetched.returncode != 0:
            raise StackError(f"mvn could not fetch Apache Kafka {VERSION}'s jars (exit {fetched.returncode})")
    return libs


class ApacheKafka:
    def __init__(self, workdir: Path, sasl_users: dict[str, str] | None = None, port: int = 0) -> None:
        """`sasl_users`: serve SASL_PLAINTEXT with the PLAIN mechanism for these users;
        `port`: 0 picks a free one. Each start begins with empty topics."""
        self.workdir = workdir
        self.sasl_users = sasl_users
        self.port = port or free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        command = self.command()
        log = (self.workdir / "kafka.log").open("ab")
        self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        self._wait(timeout)

    def command(self) -> list[str]:
        """Write the configuration, format an empty log directory, and return the command
        that runs the broker (`LocalStack` runs it as its `broker` process)."""
        if not java_available():
            raise StackError("Apache Kafka needs java (17 or later) and mvn on PATH")
        libs = fetch_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        props = self.workdir / "server.properties"
        listener = "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"
        sasl = []
        if self.sasl_users:
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            name, password = next(iter(self.sasl_users.items()))
            sasl = [
                "sasl.enabled.mechanisms=PLAIN",
                "sasl.mechanism.inter.broker.protocol=PLAIN",
                f"inter.broker.listener.name={listener}",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config="
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{name}" password="{password}" {users};',
            ]
        props.write_text(
            "\n".join(
                [
                    *sasl,
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners={listener}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners={listener}://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    f"listener.security.protocol.map={listener}:{listener},CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.workdir / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    "num.partitions=1",
                ]
            )
            + "\n"
        )
        log4j = self.workdir / "log4j2.xml"
        log4j.write_text(LOG4J2)
        java = ["java", "-Xms256m", "-Xmx768m", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]
        # Kafka's own id format (url-safe base64 of a UUID), but never starting with '-':
        # StorageTool would read such an id as an option and fail (1 run in 32 did).
        cluster_id = "k" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]
        shutil.rmtree(self.workdir / "data", ignore_errors=True)  # formatted by an earlier start
        formatted = subprocess.run(  # noqa: S603
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            check=False,
            capture_output=True,
            text=True,
        )
        if formatted.returncode != 0:
            said = (formatted.stderr or formatted.stdout).strip().splitlines() or [
                f"exit {formatted.returncode}"
            ]
            raise StackError(f"formatting Kafka's log directory failed: {said[-1]}")
        return [*java, "kafka.Kafka", str(props)]

    def _wait(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap}
        if self.sasl_users:
            name, password = next(iter(self.sasl_users.items()))
            conf |= {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": name,
                "sasl.password": password,
            }
        admin = AdminClient(conf)
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise StackError(f"Apache Kafka exited; see {self.workdir / 'kafka.log'}")
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception:  # noqa: BLE001, S110  (not up yet)
                pass
            if time.monotonic() > deadline:
                raise StackError(f"Apache Kafka not up after {timeout}s; see {self.workdir / 'kafka.log'}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
