"""The package as a user gets it: build the wheel, install it into a fresh virtual
environment outside the checkout, and from another directory run `llmops up` long
enough to index one tiny document and answer one `llmops ask` about it.

Nothing of the checkout is visible to the installed commands: they run from an empty
directory, with a minimal environment (no PYTHONPATH), and the test first checks that
the packages import from the new environment. It would fail on data the wheel forgot to
ship (the ClickHouse DDL the analytics process applies at start, the JSON Schemas) and
on imports of modules outside the package (tests/, benchmarks/).

Dependencies come from uv's cache when it holds them (`uv pip install`), so the run
costs the build, the install and the stack's own start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from topology.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


def uv() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("uv is not installed (`make install` puts it in .venv)")
    return found


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)  # noqa: S603
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_installed_wheel_answers_a_question_from_anywhere(tmp_path: Path):
    timings: dict[str, float] = {}
    began = time.monotonic()
    # uv keeps the parent's network settings (certificates, index); nothing that points
    # Python at the checkout.
    uv_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("LLMOPS_")
    }
    # The installed commands get HOME (the exported ONNX model, the caches) and little else.
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()), "LANG": "C.UTF-8"}

    # The sdist first, then the wheel from the sdist, so a file missing from either fails here.
    dist = tmp_path / "dist"
    run([uv(), "build", "--quiet", "--out-dir", str(dist), str(ROOT)], cwd=tmp_path, env=uv_env, timeout=300)
    (wheel,) = dist.glob("*.whl")
    timings["build"] = time.monotonic() - began

    mark = time.monotonic()
    venv = tmp_path / "venv"
    # The interpreter under the checkout's environment, never that environment itself.
    base_python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    run(
        [uv(), "venv", "--quiet", "--python", str(base_python), str(venv)],
        cwd=tmp_path,
        env=uv_env,
        timeout=120,
    )
    python = venv / "bin" / "python"
    run(
        [uv(), "pip", "install", "--quiet", "--python", str(python), str(wheel)],
        cwd=tmp_path,
        env=uv_env,
        timeout=600,
    )
    timings["install"] = time.monotonic() - mark

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**base_env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{base_env['PATH']}"}
    where = json.loads(
        run(
            [
                str(python),
                "-c",
                "import json, connectors.clickhouse as c, topology, schemas, agents;"
                "print(json.dumps({'topology': topology.__file__, 'ddl': str(c.ClickHouseSettings().ddl_dir),"
                "'sql': sorted(p.name for p in c.ClickHouseSettings().ddl_dir.glob('*.sql'))}))",
            ],
            cwd=work,
            env=env,
            timeout=60,
        )
    )
    site = venv.resolve()
    assert Path(where["topology"]).resolve().is_relative_to(site), where
    assert Path(where["ddl"]).resolve().is_relative_to(site), where
    assert where["sql"] and where["sql"] == sorted(
        p.name for p in (ROOT / "connectors" / "ddl").glob("*.sql")
    )

    broker, milvus, analytics = free_port(), free_port(), free_port()
    env |= {
        "LLMOPS_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{broker}",
        "LLMOPS_MILVUS__URI": f"http://127.0.0.1:{milvus}",
        "LLMOPS_ANALYTICS__PORT": str(analytics),
        # Deterministic answers and no language model on the CPU (as in the other stack
        # tests); tests/integration/test_local_llm.py runs the local model.
        "LLMOPS_LLM__BACKEND": "extractive",
    }
    llmops = str(venv / "bin" / "llmops")
    mark = time.monotonic()
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(  # noqa: S603
        [
            llmops,
            "up",
            "--broker-port",
            str(broker),
            "--milvus-port",
            str(milvus),
            "--analytics-port",
            str(analytics),
            "--data-dir",
            str(work / "stack"),
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert up.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        assert any("Press Ctrl-C" in line for line in lines), (
            lines,
            (tmp_path / "up.log").read_text()[-3000:],
        )
        timings["up"] = time.monotonic() - mark

        mark = time.monotonic()
        doc = work / "doc.jsonl"
        doc.write_text(
            json.dumps(
                {
                    "doc_id": "otter",
                    "title": "Sea otters",
                    "text": "Sea otters hold hands while they sleep so that they do not drift apart. "
                    "They live along the coasts of the northern Pacific Ocean.",
                }
            )
            + "\n"
        )
        ingested = run([llmops, "ingest", str(doc), "--tenant", "wheel"], cwd=work, env=env, timeout=180)
        assert "1 documents" in ingested or "1 document" in ingested, ingested
        asked = run(
            [llmops, "ask", "Why do sea otters hold hands?", "--tenant", "wheel", "--mode", "dense"],
            cwd=work,
            env=env,
            timeout=180,
        )
        assert asked.startswith("Q: Why do sea otters hold hands?"), asked
        assert "drift apart" in asked and "Sea otters" in asked, asked
        timings["ingest+ask"] = time.monotonic() - mark
        # The analytics process created its tables from the DDL in the wheel and stored
        # the question's telemetry (the sink writes about once a second).
        deadline = time.monotonic() + 60
        while "generation" not in (
            report := run([llmops, "report", "--tenant", "wheel"], cwd=work, env=env, timeout=60)
        ):
            assert time.monotonic() < deadline, report
            time.sleep(1)
        assert "(analytics: service)" in report, report

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        log.close()
    timings["total"] = time.monotonic() - began
    print("wheel test seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
