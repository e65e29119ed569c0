"""CPU the embedded stack keeps busy while nothing is asked.

    python -m benchmarks.idle_cpu [--broker tansu|kafka] [--seconds 20] [--runs 2] [--settle 10]
                                  [--backend extractive|openai] [--profile DIR]

Starts the stack as `llmops up` does (Tansu, or Apache Kafka with `--broker kafka`: needs
Java and Maven; the Milvus Lite server, one worker, the analytics process; extractive
generation unless `--backend openai`, which adds the local LLM server), waits until a
question has made the whole trip, lets it settle for `--settle` seconds, then reads from
/proc the CPU seconds (user + system, the process and its children) each part used over
`--seconds`, `--runs` times. Baseline in the same run: an idle Python interpreter
(`time.sleep`), measured over the same windows; it shows the floor of the measurement.

CPU seconds are little affected by other load on the machine (a process that waits for
the CPU is not charged for it), but wake-ups can be delayed and merged under load, so
the figures of a busy machine can read slightly low; the runs say how stable they are.

`--profile DIR`: after the runs, py-spy (if installed) records the worker and the
analytics process for `--seconds` into DIR/{worker,analytics}.txt (raw, collapsed
stacks) and the table lists the functions where their samples were taken.
Prints JSON and a table."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from topology.settings import Settings
from topology.stack import LocalStack

TICK = os.sysconf("SC_CLK_TCK")


def children() -> dict[int, list[int]]:
    """Each running process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):  # it ended meanwhile
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def own_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) `pid` has used so far; 0 once it ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and its descendants."""
    tree = children()
    used = {}
    for name, root in roots.items():
        pids, total = [root], 0.0
        while pids:
            pid = pids.pop()
            total += own_cpu(pid)
            pids.extend(tree.get(pid, ()))
        used[name] = total
    return used


def measure(roots: dict[str, int], seconds: float) -> dict[str, float]:
    """Cores each process kept busy over `seconds` (1.0 = one core)."""
    before, started = cpu_seconds(roots), time.monotonic()
    time.sleep(seconds)
    after, elapsed = cpu_seconds(roots), time.monotonic() - started
    return {name: (after[name] - before[name]) / elapsed for name in roots}


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@contextmanager
def stack(broker: str, backend: str, tmp: Path) -> Iterator[tuple[LocalStack, dict[str, int]]]:
    """The running stack and the process id of each part."""
    env = {"LLMOPS_LLM__BACKEND": backend}
    base = Settings()
    base = base.model_copy(
        update={
            "stack": base.stack.model_copy(
                update={"data_dir": tmp, "broker": broker, "broker_port": 0, "milvus_port": 0}
            ),
            "llm": base.llm.model_copy(update={"backend": backend}),
        }
    )
    with LocalStack(base, env=env) as running:
        yield running, pids(running, ["worker", "analytics", "broker", "milvus"])


def pids(running: LocalStack, names: list[str]) -> dict[str, int]:
    found = {name: running.pid(name) for name in names}
    if running.local_llm:
        found["llm"] = running.pid("llm")
    return found


def profile(roots: dict[str, int], seconds: float, out: Path) -> dict[str, Any]:
    """py-spy samples of the worker and the analytics process (not idle waits), by the
    function that was running and by the first frame outside asyncio and the interpreter."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"skipped": "py-spy not installed (uv pip install py-spy)"}
    out.mkdir(parents=True, exist_ok=True)
    runs = {
        name: subprocess.Popen(  # noqa: S603
            [spy, "record", "-d", str(int(seconds)), "-r", "200", "--nonblocking", "-f", "raw"]
            + ["-o", str(out / f"{name}.txt"), "-p", str(roots[name])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("worker", "analytics")
    }
    result = {}
    for name, run in runs.items():
        run.wait()
        result[name] = summarize(out / f"{name}.txt", seconds)
    return result


def summarize(path: Path, seconds: float) -> dict[str, Any]:
    """Samples per second by thread (faust's consumer thread, the main one, others) and by
    what ran there: the task a callback of the event loop stepped into (its first frame
    outside asyncio), or the loop itself (`loop: ...`, epoll included: a wake-up)."""
    where: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        thread = (
            "consumer thread"
            if any("ServiceThread" in f for f in frames)
            else "main thread"
            if "runpy" in frames[0]
            else "other thread"
        )
        runs = [i for i, f in enumerate(frames) if f.startswith("Handle._run")]
        if not runs or "selectors.py" in frames[-1]:
            what = "loop: " + ("epoll wait" if "selectors.py" in frames[-1] else frames[-1])
        else:
            inner = [f for f in frames[runs[-1] + 1 :] if "asyncio/" not in f] or [frames[-1]]
            what = inner[0]
        where[f"{thread}: {what}"] += n
    return {
        "samples_per_s": total / seconds,
        "by_thread_and_task": {w: n / seconds for w, n in where.most_common(15)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--backend", choices=["extractive", "openai"], default="extractive")
    parser.add_argument("--seconds", type=float, default=20, help="length of each measurement")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--settle", type=float, default=10, help="seconds idle before measuring")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    args = parser.parse_args()

    baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(86400)"])  # noqa: S603
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            stack(args.broker, args.backend, Path(tmp)) as (running, roots),
        ):
            roots = {**roots, "idle python (baseline)": baseline.pid}
            time.sleep(args.settle)
            runs = []
            for _ in range(args.runs):
                load = load_average()
                runs.append({"load_average_1m": load, "cores": measure(roots, args.seconds)})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # progress
            profiled = profile(roots, args.seconds, args.profile) if args.profile else None
            ready_s = running.timings.get("ready_s")
    finally:
        baseline.kill()
        baseline.wait()
    ours = ("worker", "analytics")
    report = {
        "broker": args.broker,
        "backend": args.backend,
        "seconds": args.seconds,
        "settle_s": args.settle,
        "stack_ready_s": ready_s,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "ours_total_cores": [sum(r["cores"][n] for n in ours) for r in runs],
        "profile": profiled,
    }
    print(json.dumps(report, indent=2))
    names = list(runs[0]["cores"])
    print(f"\nidle stack, broker {args.broker}, {args.backend} backend: cores busy over {args.seconds:.0f} s")
    print(f"{'process':<26}" + "".join(f"{f'run {i + 1}':>10}" for i in range(len(runs))))
    for name in names:
        print(f"{name:<26}" + "".join(f"{r['cores'][name]:>10.3f}" for r in runs))
    print(f"{'worker + analytics':<26}" + "".join(f"{t:>10.3f}" for t in report["ours_total_cores"]))
    print(f"{'load average (1 min)':<26}" + "".join(f"{r['load_average_1m']:>10.2f}" for r in runs))
    for name, found in (profiled or {}).items():
        if "by_thread_and_task" in found:
            print(f"\n{name}: py-spy samples/s {found['samples_per_s']:.1f} (at 200/s), by thread and task")
            for frame, rate in found["by_thread_and_task"].items():
                print(f"{rate:>8.1f}  {frame[:110]}")


if __name__ == "__main__":
    main()
