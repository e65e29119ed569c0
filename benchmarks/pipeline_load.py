"""End-to-end throughput and latency as the offered load rises until the pipeline saturates.

    python -m benchmarks.pipeline_load [--broker tansu|kafka] [--rates 2,4,8,16,32,64] [--seconds 20]

Starts the stack (Tansu, or Apache Kafka with `--broker kafka`: needs Java and Maven;
Milvus Lite server, one worker, the analytics process; ONNX on CPU, extractive
generation), indexes the sample corpus, then offers questions open-loop at each rate for
`--seconds`: each question is sent on schedule whether or not earlier ones were answered,
as independent users would. Per rate: answers per second (answered / time from first send
to last answer), end-to-end p50/p95/p99, failures, and the median time each stage's handler
took (from the responses), and where the machine's CPU went: cores kept busy by each part
of the stack (worker, analytics, broker, Milvus, this load generator and client) and their
CPU milliseconds per answer, read from /proc. It stops one rate after the answered rate
falls below 80% of the offered one (saturation).

Baseline in the same run: the embedding stage's standalone ceiling, the questions per
second `OnnxEmbedder.embed` reaches on the same questions in micro-batches of the stage's
size, with nothing else running, and its CPU per question there and one question at a
time: the worker's CPU per answer less the latter is what the machinery costs at low rates
(the stage embeds each question alone), less the former near saturation. Prints JSON and
a table.

On Tansu every step pays for the ones before it: the broker's CPU per answer grows with
the batches its topics hold (docs/scaling.md, *The broker's log*), so compare a rate
across runs of the same ladder only.

`--half`: after the ladder, a fresh stack (so that Tansu's log from the ladder does not
weigh on it) is offered half the best answered rate for `--seconds`: the latency at half
of saturation, measured against the saturation of the same run.

`--warmup-s S`: before the first measured step of a stack, offer its rate for S seconds
unmeasured. A fresh Apache Kafka spends more CPU per answer in its first minute (most
likely the JVM's JIT compiling), so without a warm-up the first step (and `--half`'s, on
its fresh stack) measures the broker's start as much as the pipeline. On Tansu a warm-up
only adds to the log its fetches list (docs/scaling.md, *A warm broker, and the client's
reader*).

`--profile DIR`: py-spy (if installed) samples the worker (or, `--profile-part analytics`,
the analytics process) while it is on a CPU during each step, into DIR/PART-RATE.txt
(raw, collapsed stacks, 200 samples/s)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.ask_latency import machinery_settings, pct
from connectors.client import Client
from connectors.embedder import OnnxEmbedder
from schemas import ResponseGenerated
from topology.samples import QUESTIONS, python_reference
from topology.settings import Settings
from topology.stack import LocalStack


def embedding_ceiling(settings: Settings, seconds: float = 10) -> tuple[float, float, float]:
    """The embedder alone, in this process: questions per second in the stage's full
    micro-batches, and its CPU ms per question in them and one question at a time (a
    worker at a low rate embeds each question alone), paced so ONNX Runtime's threads
    sleep between runs as in the worker."""
    embedder = OnnxEmbedder(settings.embedding)
    embedder.open()
    batch = [QUESTIONS[i % len(QUESTIONS)] for i in range(settings.worker.runtime.batch_max)]
    embedder.embed(batch)
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        embedder.embed(batch)
        done += len(batch)
    per_s = done / (time.perf_counter() - started)
    batched_ms = (time.process_time() - cpu) * 1000 / done
    alone, cpu = 200, time.process_time()
    for i in range(alone):
        embedder.embed([QUESTIONS[i % len(QUESTIONS)]])
        time.sleep(0.02)
    alone_ms = (time.process_time() - cpu) * 1000 / alone
    return per_s, batched_ms, alone_ms


# Which process a CPU second belongs to, by a word of its command line (first match).
PROCESSES = (
    ("worker", "topology.cli worker"),
    ("analytics", "topology.cli analytics"),
    ("broker", "tansu"),
    ("broker", "kafka.Kafka"),
    ("milvus", "milvus"),
)


def _processes() -> dict[int, tuple[int, str, list[str]]]:
    """pid -> (parent pid, command line, /proc stat fields after the name)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        found[int(entry.name)] = (int(fields[1]), command, fields)
    return found


def _ours(processes: dict[int, tuple[int, str, list[str]]]) -> set[int]:
    """This process and its descendants: the stack it started, not other stacks on the machine."""
    me, ours, grew = os.getpid(), {os.getpid()}, True
    while grew:
        more = {pid for pid, (parent, _, _) in processes.items() if parent in ours} - ours
        ours |= more
        grew = bool(more)
    return ours | {me}


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) each part of the stack has used so far, from /proc;
    this process is the load generator and client. Only this process's descendants count
    (other sessions' stacks on the same machine run the same commands)."""
    tick, me = os.sysconf("SC_CLK_TCK"), os.getpid()
    processes = _processes()
    used: dict[str, float] = {}
    for pid in _ours(processes):
        if pid not in processes:
            continue
        _, command, fields = processes[pid]
        name = "load generator" if pid == me else None
        name = name or next((n for n, word in PROCESSES if word in command), None)
        if name is not None:
            used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def pids_of(part: str) -> list[int]:
    """The processes of a part of this stack (as cpu_seconds names them)."""
    processes = _processes()
    return [
        pid
        for pid in sorted(_ours(processes))
        if pid in processes and next((n for n, w in PROCESSES if w in processes[pid][1]), None) == part
    ]


def start_profile(
    out: Path | None, rate: float, seconds: float, part: str = "worker"
) -> subprocess.Popen[bytes] | None:
    """py-spy on the first process of `part` for `seconds` (on-CPU samples only), or None."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    found = pids_of(part)
    if out is None or not Path(spy).exists() or not found:
        return None
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(  # noqa: S603
        [spy, "record", "-d", str(max(1, int(seconds))), "-r", "200", "--nonblocking", "-f", "raw"]
        + ["-o", str(out / f"{part}-{rate:g}.txt"), "-p", str(found[0])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def offer(
    client: Client, rate: float, seconds: float, profile: Path | None = None, part: str = "worker"
) -> dict[str, Any]:
    """Send `rate` questions a second for `seconds`, open-loop; collect every outcome."""
    count = max(1, round(rate * seconds))
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    failures: list[str] = []
    finished: list[float] = []

    async def one(i: int) -> None:
        sent = time.perf_counter()
        try:
            response: ResponseGenerated = await client.ask(QUESTIONS[i % len(QUESTIONS)], timeout=120)
        except Exception as exc:  # noqa: BLE001  # a failure is a result here
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        finished.append(time.perf_counter())
        latencies.append((finished[-1] - sent) * 1000)
        for stage, ms in response.latency_ms.items():
            stages.setdefault(stage, []).append(ms)

    spy = start_profile(profile, rate, seconds, part)
    cpu_before, started = cpu_seconds(), time.perf_counter()
    tasks = []
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    if spy is not None:
        await asyncio.to_thread(spy.wait)
    elapsed = (max(finished) if finished else time.perf_counter()) - started
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds().items()}
    return {
        "offered_per_s": rate,
        "sent": count,
        "answered": len(latencies),
        "answered_per_s": len(latencies) / elapsed,
        "failures": len(failures),
        "failure_examples": failures[:3],
        "p50_ms": pct(latencies, 0.5) if latencies else None,
        "p95_ms": pct(latencies, 0.95) if latencies else None,
        "p99_ms": pct(latencies, 0.99) if latencies else None,
        "stage_p50_ms": {s: statistics.median(v) for s, v in stages.items()},
        # Where the machine's CPU went during the step (all cores; 1.0 = one core busy).
        "cores_busy": {k: v / elapsed for k, v in sorted(cpu.items())},
        "cpu_ms_per_answer": {k: v * 1000 / max(1, len(latencies)) for k, v in sorted(cpu.items())},
    }


async def ramp(
    settings: Settings,
    rates: list[float],
    seconds: float,
    profile: Path | None = None,
    part: str = "worker",
    warmup_s: float = 0,
) -> list[dict[str, Any]]:
    """One step per rate, stopping after the first that answers under 80% of its offer;
    `warmup_s` of the first rate before them, unmeasured."""
    results = []
    async with Client(settings) as client:
        await client.ingest(python_reference(), timeout=900)
        for question in QUESTIONS[:3]:  # warm-up: the first searches load the index
            await client.ask(question, timeout=120)
        if warmup_s > 0:
            warm = await offer(client, rates[0], warmup_s)
            print(json.dumps({"warmup": warm}), file=sys.stderr, flush=True)
            await asyncio.sleep(2)
        for rate in rates:
            results.append(await offer(client, rate, seconds, profile, part))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # progress
            if results[-1]["answered_per_s"] < 0.8 * rate:
                break
            await asyncio.sleep(2)  # let the queues drain between steps
    return results


@contextmanager
def stack(broker: str, base: Settings, tmp: Path) -> Iterator[LocalStack]:
    cfg = base.stack.model_copy(
        update={"data_dir": tmp, "broker": broker, "broker_port": 0, "milvus_port": 0}
    )
    with LocalStack(base.model_copy(update={"stack": cfg})) as running:
        yield running


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--rates", default="2,4,8,16,32,64", help="questions per second, rising")
    parser.add_argument("--seconds", type=float, default=20, help="length of each step")
    parser.add_argument(
        "--half",
        action="store_true",
        help="then offer half the best answered rate to a fresh stack (the latency at half of saturation)",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=0,
        help="offer each stack's first rate this long, unmeasured, before its first step (a JVM's JIT)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    parser.add_argument(
        "--profile-part", choices=["worker", "analytics"], default="worker", help="the process py-spy samples"
    )
    args = parser.parse_args()
    base = machinery_settings()
    ceiling, onnx_batched_ms, onnx_alone_ms = embedding_ceiling(base)
    with tempfile.TemporaryDirectory() as tmp, stack(args.broker, base, Path(tmp)) as running:
        rates = [float(r) for r in args.rates.split(",")]
        results = asyncio.run(
            ramp(running.settings, rates, args.seconds, args.profile, args.profile_part, args.warmup_s)
        )
    best = max(r["answered_per_s"] for r in results)
    if args.half:
        with tempfile.TemporaryDirectory() as tmp, stack(args.broker, base, Path(tmp)) as running:
            half = round(best / 2)
            results += asyncio.run(
                ramp(running.settings, [half], args.seconds, args.profile, args.profile_part, args.warmup_s)
            )
            results[-1]["half_of_saturation"] = True
    report = {
        "broker": args.broker,
        "seconds_per_step": args.seconds,
        "warmup_s": args.warmup_s,
        "embedding_ceiling_per_s": ceiling,
        "best_answered_per_s": best,
        "best_vs_embedding_ceiling": best / ceiling,
        "onnx_cpu_ms_per_question": {"alone": onnx_alone_ms, "in_full_batches": onnx_batched_ms},
        "steps": results,
    }
    print(json.dumps(report, indent=2))
    warmed = f"; each stack warmed {args.warmup_s:g} s at its first rate" if args.warmup_s else ""
    print(
        f"\nbroker {args.broker}{warmed}; embedding stage alone: {ceiling:.0f} questions/s; best end to end "
        f"{best:.1f}/s ({best / ceiling:.0%} of it)"
    )
    stage_names = sorted({s for r in results for s in r["stage_p50_ms"]})
    print(
        f"{'offered/s':>10}{'answered/s':>11}{'failed':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        + "".join(f"{s[:10]:>12}" for s in stage_names)
    )
    for r in results:
        cells = "".join(f"{r['stage_p50_ms'].get(s, float('nan')):>12.1f}" for s in stage_names)
        p = [r[k] if r[k] is not None else float("nan") for k in ("p50_ms", "p95_ms", "p99_ms")]
        print(
            f"{r['offered_per_s']:>10.0f}{r['answered_per_s']:>11.1f}{r['failures']:>7}"
            f"{p[0]:>9.0f}{p[1]:>9.0f}{p[2]:>9.0f}{cells}"
            + ("  (half of saturation, fresh stack)" if r.get("half_of_saturation") else "")
        )
    parts = sorted({k for r in results for k in r["cores_busy"]})
    print(f"\ncores busy per part of the stack ({os.cpu_count()} cores), and CPU ms per answer")
    print(f"{'offered/s':>10}" + "".join(f"{p[:14]:>16}" for p in parts))
    for r in results:
        busy, per_answer = r["cores_busy"], r["cpu_ms_per_answer"]
        cells = "".join(f"{busy.get(p, 0):>7.2f} /{per_answer.get(p, 0):>6.1f}ms" for p in parts)
        print(f"{r['offered_per_s']:>10.0f}{cells}")
    print(
        f"\nONNX alone, CPU ms per question: {onnx_alone_ms:.1f} one at a time, "
        f"{onnx_batched_ms:.1f} in full micro-batches; the worker's CPU ms per answer without it:"
    )
    for r in results:
        worker = r["cpu_ms_per_answer"].get("worker", 0.0)
        print(
            f"{r['offered_per_s']:>10.0f}/s  {worker - onnx_alone_ms:>6.1f} (one at a time)"
            f"  {worker - onnx_batched_ms:>6.1f} (full batches)"
        )


if __name__ == "__main__":
    main()
