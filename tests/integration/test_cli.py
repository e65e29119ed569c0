"""The CLI as a newcomer uses it: --help everywhere, ingest and ask against a running stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import require_java
from topology.cli import main
from topology.stack import LocalStack, free_port

ROOT = Path(__file__).resolve().parents[2]


def llmops(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "topology.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def all_commands(group=main, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize("command", list(all_commands()), ids=" ".join)
def test_every_command_explains_itself(command):
    result = llmops(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 3


def test_ingest_then_ask_from_the_command_line(tansu_stack: LocalStack, tmp_path: Path):
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    corpus = tmp_path / "corpus.jsonl"
    sample = llmops("sample-corpus")
    assert sample.returncode == 0
    rows = [json.loads(line) for line in sample.stdout.splitlines()]
    corpus.write_text("\n".join(json.dumps(r) for r in rows if r["title"] in {"lambda", "with"}) + "\n")

    env = tansu_stack.env()
    ingested = llmops("ingest", str(corpus), "--tenant", tenant, env=env)
    assert ingested.returncode == 0, ingested.stderr
    assert "2 documents" in ingested.stdout and tenant in ingested.stdout

    asked = llmops("ask", "What is a lambda expression?", "--tenant", tenant, "--mode", "dense", env=env)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith("Q: What is a lambda expression?")
    assert "*[1] lambda" in asked.stdout and "latency ms: prompting" in asked.stdout
    assert "retrieval dense" in asked.stdout

    as_json = llmops("ask", "What is a lambda expression?", "--tenant", tenant, "--json", env=env)
    assert json.loads(as_json.stdout)["event_type"] == "ResponseGenerated"


def test_ingest_refuses_a_bad_file_and_sends_nothing(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc_id": "a", "text": "fine"}\n{"doc_id": "b"}\n')
    result = llmops("ingest", str(bad))
    assert result.returncode != 0
    assert "nothing was sent" in result.stderr and "bad.jsonl:2" in result.stderr


def test_ask_without_a_stack_fails_with_a_clear_message(tmp_path: Path):

    env = {
        "PATH": "/usr/bin:/bin",
        "LLMOPS_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "HOME": str(Path.home()),
    }
    result = llmops("ask", "anyone there?", "--timeout", "3", env=env, timeout=60)
    assert result.returncode == 1
    assert "Error:" in result.stderr and "Traceback" not in result.stderr


def test_compose_file_is_valid():
    if shutil.which("docker-compose") is None:
        pytest.skip("Debian's docker-compose is not installed: compose file not validated")
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker" / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "apache/kafka:4.1.2" in result.stdout


@dataclass
class Up:
    """A running `llmops up`: its process, the banner it printed up to "Press Ctrl-C", the
    environment that points a client at it, and its broker, Milvus and analytics ports."""

    process: subprocess.Popen
    banner: list[str]
    env: dict[str, str]
    ports: tuple[int, int, int]


@contextmanager
def llmops_up(data_dir: Path, *options: str, timeout: float = 180) -> Iterator[Up]:
    import time

    broker, milvus, analytics = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "topology.cli", "up", *options, "--broker-port", str(broker)]
        + ["--milvus-port", str(milvus), "--analytics-port", str(analytics), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        banner = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            banner.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        assert any("Press Ctrl-C" in x for x in banner), banner
        env = {
            **os.environ,
            "LLMOPS_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{broker}",
            "LLMOPS_MILVUS__URI": f"http://127.0.0.1:{milvus}",
        }
        yield Up(process, banner, env, (broker, milvus, analytics))
    finally:
        if process.poll() is None:
            process.kill()


def assert_not_served(ports: tuple[int, ...]) -> None:
    import socket

    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served"


def test_up_serves_until_interrupted_and_leaves_nothing_running(tmp_path: Path):
    import signal

    with llmops_up(tmp_path) as up:
        env = up.env
        asked = llmops("ask", "anything indexed?", "--tenant", "nobody", env=env)
        assert asked.returncode == 0, asked.stderr
        assert "None of the indexed passages" in asked.stdout
        # While the stack runs, the report reads through its analytics service...
        env["LLMOPS_ANALYTICS__PORT"] = str(up.ports[2])
        report = wait_for_report(env, "nobody")
        assert "(analytics: service)" in report
        alerts = llmops("alerts", "--since", "1h", env=env)
        assert alerts.returncode == 0 and "Alerts" not in alerts.stderr, alerts.stderr
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=60) == 0
    # ...and afterwards it opens the chDB directory the stack left in --data-dir.
    env["LLMOPS_CLICKHOUSE__PATH"] = str(tmp_path / "analytics")
    after = llmops("report", "--tenant", "nobody", env=env)
    assert after.returncode == 0, after.stderr
    assert "(analytics: chdb)" in after.stdout
    # One prompting row in the latency table (the consumer lag table that follows names stages too).
    latency = after.stdout.split("Latency")[1].split("Consumer lag")[0]
    assert latency.count("prompting") == 1
    assert_not_served(up.ports)


def kafka_brokers_of(data_dir: Path) -> list[int]:
    """The Apache Kafka JVMs whose configuration lies under data_dir."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # not a process, or it ended meanwhile
            continue
        if "kafka.Kafka" in command and f"{data_dir}/kafka/server.properties" in command:
            found.append(int(entry.name))
    return found


def test_up_on_apache_kafka_answers_and_stops_the_broker(tmp_path: Path):
    """`llmops up --broker kafka`: the stack on an Apache Kafka JVM configured under
    --data-dir/kafka, and neither it nor the ports left once it stopped."""
    import signal

    require_java("llmops up --broker kafka")
    with llmops_up(tmp_path, "--broker", "kafka", timeout=240) as up:
        broker = up.ports[0]
        assert any(x.startswith(f"broker   127.0.0.1:{broker} (kafka)") for x in up.banner), up.banner
        assert len(kafka_brokers_of(tmp_path)) == 1
        asked = llmops("ask", "anything indexed?", "--tenant", "nobody", env=up.env)
        assert asked.returncode == 0, asked.stderr
        assert "None of the indexed passages" in asked.stdout
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=90) == 0
    assert kafka_brokers_of(tmp_path) == []
    assert_not_served(up.ports)


def test_up_on_apache_kafka_without_java_says_so_in_one_line(tmp_path: Path):
    bare = tmp_path / "bin"
    bare.mkdir()
    result = llmops(
        "up", "--broker", "kafka", "--data-dir", str(tmp_path), env={**os.environ, "PATH": str(bare)}
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: Apache Kafka needs java (17 or later) and mvn on PATH"


def wait_for_report(env: dict[str, str], tenant: str, timeout: float = 30) -> str:
    """`llmops report` once the sink (about one write a second) has stored the trace."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = llmops("report", "--tenant", tenant, env=env)
        assert result.returncode == 0, result.stderr
        if "generation" in result.stdout or time.monotonic() > deadline:
            return result.stdout
        time.sleep(1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("report", "--since", "1w"), "like 15m or 24h"),
        (("feedback", "some-trace", "maybe"), "BOOLEAN feedback is true or false"),
        (("feedback", "some-trace", "lots", "--type", "numeric"), "NUMERIC feedback is a number"),
        (("feedback", "some-trace", "3", "--type", "stars"), "'stars' is not one of"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(args, message):
    result = llmops(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_report_on_a_busy_store_without_its_service_says_what_to_do(tansu_stack: LocalStack):
    env = {**tansu_stack.env(), "LLMOPS_ANALYTICS__PORT": str(free_port())}  # nobody answers there
    result = llmops("report", env=env)
    assert result.returncode == 1
    assert (
        "Only one process can open it" in result.stderr and "No analytics service answered" in result.stderr
    )
