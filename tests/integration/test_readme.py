"""The README's examples run as written against a live stack (the `tansu_stack` fixture).

- The `python` block of README.md runs with the stack's environment.
- A fenced `bash` block of README.md or docs/*.md is *runnable* when the line right
  before its opening fence is exactly `<!-- runnable -->` (an HTML comment: invisible
  when rendered). The runnable blocks of one file run in order as one bash script with
  `set -euo pipefail`, the way a reader pastes them into one shell, so a variable set in
  one block (`TRACE_ID`) is seen by the next. The script runs in a fresh directory that
  holds `.venv`, a link to this interpreter's environment, so the blocks call
  `.venv/bin/llmops` as a reader does from the checkout, and the files they write land
  there. It must exit 0; a failure names the file and line of the block that failed.

Blocks that cannot run here stay unmarked: `llmops up` (runs until Ctrl-C), commands
against a production broker, and placeholders such as LETTER_ID.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from topology.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKER = "<!-- runnable -->"
BASH_BLOCK = re.compile(r"^(?P<marker><!-- runnable -->\n)?```bash\n(?P<body>.*?)^```$", re.S | re.M)


def runnable_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, body) of each runnable bash block, in file order."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start("body")), match.group("body"))
        for match in BASH_BLOCK.finditer(text)
        if match.group("marker")
    ]


def session_script(path: Path) -> str:
    lines = ["set -euo pipefail"]
    for line, body in runnable_blocks(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        lines += [f"echo {shlex.quote('>>> ' + where)} >&2", body.rstrip("\n")]
    return "\n".join(lines) + "\n"


def run_session(path: Path, stack: LocalStack, workdir: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    return subprocess.run(
        ["bash", "-c", session_script(path)],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=workdir,
    )


def failed_block(stderr: str) -> str:
    started = re.findall(r"^>>> (\S+)$", stderr, flags=re.M)
    return started[-1] if started else "(before the first block)"


def test_every_runnable_marker_sits_on_a_bash_block():
    for path in [README, *DOCS]:
        text = path.read_text(encoding="utf-8")
        assert text.count(MARKER) == len(runnable_blocks(path)), (
            f"{path.name}: a `{MARKER}` line is not right above a ```bash fence"
        )


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


@pytest.mark.parametrize("path", [p for p in [README, *DOCS] if runnable_blocks(p)], ids=lambda p: p.name)
def test_runnable_bash_blocks_run(path: Path, tansu_stack: LocalStack, tmp_path: Path):
    result = run_session(path, tansu_stack, tmp_path / "session")
    code = result.returncode
    assert code == 0, (
        f"{failed_block(result.stderr)} exited {code}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
    if path == README:
        # What the README promises the reader sees, not only exit 0.
        out = result.stdout
        assert "2 documents" in out and "indexed for tenant globex" in out
        assert "Q: Where does Kafka store records?" in out
        assert re.search(r"feedback \S+ sent for trace [0-9a-f]+", out)
        assert "wrote report.html" in out and (tmp_path / "session" / "report.html").is_file()
        assert "flowchart LR" in out
