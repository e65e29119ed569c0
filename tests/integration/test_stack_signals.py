"""A process that runs the local stack the way a benchmark does (`with LocalStack(...)` in
its main thread) and is ended by SIGTERM, as `timeout` ends a benchmark, stops the
stack's processes: they live in sessions of their own, so nothing else would.
(`llmops up` has its own handler; test_cli.py stops it with SIGINT.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The cheapest stack: no worker (no faust pipeline, no model server); the broker, Milvus
# Lite and the analytics process are what a killed benchmark used to leave running.
SCRIPT = """
import json, time
from topology.settings import Settings
from topology.stack import LocalStack

with LocalStack(Settings(), worker=False) as stack:
    print(json.dumps({name: stack.pid(name) for name in ("broker", "milvus", "analytics")}), flush=True)
    while True:
        time.sleep(1)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_processes_of_a_stack_run_from_a_main_thread(tmp_path: Path):
    env = {
        **os.environ,
        "LLMOPS_STACK__DATA_DIR": str(tmp_path),
        "LLMOPS_STACK__BROKER_PORT": "0",
        "LLMOPS_STACK__MILVUS_PORT": "0",
        "LLMOPS_ANALYTICS__PORT": "0",
        "LLMOPS_CLICKHOUSE__PATH": str(tmp_path / "analytics"),
        "LLMOPS_LLM__BACKEND": "extractive",
    }
    runner = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    pids: dict[str, int] = {}
    try:
        line = runner.stdout.readline() if runner.stdout else ""
        assert line, f"the stack did not come up (exit {runner.wait()}); see {tmp_path / 'logs'}"
        pids = json.loads(line)
        assert all(alive(pid) for pid in pids.values())
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=60)  # the stack's stop() waits for each of its processes
        assert [name for name, pid in pids.items() if alive(pid)] == []
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for pid in pids.values():  # what this test started and the stack left behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
