"""The README's Python example runs as written against a live stack."""

import re
import subprocess
import sys
from pathlib import Path

from topology.stack import LocalStack

README = Path(__file__).resolve().parents[2] / "README.md"


def test_python_example_runs(tansu_stack: LocalStack):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]],
        env=tansu_stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=README.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "Kafka stores streams of records in topics. [1]" in result.stdout
    assert "('kafka'," in result.stdout
    assert "('generation'," in result.stdout  # the trace, from ClickHouse
    assert "['retrieval', 1]" in result.stdout
