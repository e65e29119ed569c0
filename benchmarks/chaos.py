"""Chaos on Apache Kafka: questions and ratings at a steady rate while workers and the
analytics process are SIGKILLed. `make chaos`; a benchmark, not part of CI.

    python -m benchmarks.chaos [--questions 10000] [--rate 18] [--retrieval-mode dense]

Starts Apache Kafka (needs Java and Maven, as the broker tests do) and the stack on it:
the Milvus Lite server, the analytics process and two workers in one group (`worker`,
`worker-2`); extractive generation unless LLMOPS_LLM__BACKEND says otherwise; dense
retrieval unless `--retrieval-mode`. It indexes the sample corpus for its own tenant, then
one Client sends `--questions` questions open-loop at `--rate` a second, and as many
ratings (FeedbackReceived, thumbs) at the same rate, each for a trace already answered.
Meanwhile, at fixed shares of the sending time: `worker` is SIGKILLed and restarted
(10%), `worker-2` is SIGKILLed for good (30%), `worker` again (50%), the analytics
process is SIGKILLed and restarted (65%), `worker` a third time (80%).

Reported: questions sent, answered, lost (no answer within `--timeout`, or failed) and
answered twice at the client; ResponseGenerated events per trace on the responses topic
(redeliveries inside the pipeline, which the client drops); from the analytics store,
feedback rows after FINAL, distinct feedback event ids and ratings linked to their trace
(as many as ratings sent expected; the raw rows also hold the unlinked first revision of
a rating that came before its trace's telemetry), and the raw telemetry rows (no FINAL,
so a duplicate shows) and distinct event ids of the answered traces (one row per event id
expected). Per kill: seconds until the process was back (restarted and serving), until
the first answer to a question sent after the kill, and until every question sent before
the kill was answered; and the longest wait of a question sent in the 30 s after it.
Prints JSON and a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from benchmarks.ask_latency import machinery_settings, pct
from benchmarks.pipeline_load import stack as started_stack
from connectors.client import Client
from schemas.queries import RetrievalMode
from topology.faults import members_with_queries, responses_on_topic, stored
from topology.samples import QUESTIONS, python_reference
from topology.stack import LocalStack

# (share of the sending time, process, restarted afterwards)
KILLS = (
    (0.10, "worker", True),
    (0.30, "worker-2", False),
    (0.50, "worker", True),
    (0.65, "analytics", True),
    (0.80, "worker", True),
)


@dataclass
class Outcomes:
    sent: dict[int, float] = field(default_factory=dict)  # question -> when sent
    answered: dict[int, tuple[float, str]] = field(default_factory=dict)  # -> when, trace id
    failed: dict[int, str] = field(default_factory=dict)
    ratings_sent: int = 0
    rating_failures: list[str] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)


async def questions(
    client: Client,
    owner: str,
    count: int,
    rate: float,
    mode: RetrievalMode,
    timeout: float,
    out: Outcomes,
    answered: asyncio.Queue[str],
) -> None:
    async def one(i: int) -> None:
        out.sent[i] = time.monotonic()
        try:
            response = await client.ask(
                QUESTIONS[i % len(QUESTIONS)],
                tenant=owner,
                retrieval_mode=mode,
                timeout=timeout,
            )
        except Exception as exc:  # noqa: BLE001  # a lost question is a result here
            out.failed[i] = f"{type(exc).__name__}: {exc}"[:200]
            return
        out.answered[i] = (time.monotonic(), response.trace_id)
        answered.put_nowait(response.trace_id)

    began, tasks = time.monotonic(), []
    for i in range(count):
        await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


async def ratings(
    client: Client,
    owner: str,
    count: int,
    rate: float,
    out: Outcomes,
    answered: asyncio.Queue[str],
    done: asyncio.Event,
) -> None:
    """One rating a tick for the next answered trace; waits for answers when none is left."""
    began = time.monotonic()
    for j in range(count):
        await asyncio.sleep(max(0.0, began + j / rate - time.monotonic()))
        while answered.empty():
            if done.is_set():
                return  # every question has its outcome: no more traces to rate
            await asyncio.sleep(0.05)
        trace = answered.get_nowait()
        try:
            await client.feedback(trace, j % 2 == 0, tenant=owner)
            out.ratings_sent += 1
        except Exception as exc:  # noqa: BLE001
            out.rating_failures.append(f"{type(exc).__name__}: {exc}"[:200])


async def faults(stack: LocalStack, sending_s: float, out: Outcomes) -> None:
    """The kills of KILLS, each at its share of the sending time or once the previous
    restart is done, whichever is later."""
    began = time.monotonic()
    for share, name, restart in KILLS:
        await asyncio.sleep(max(0.0, began + share * sending_s - time.monotonic()))
        kill: dict[str, Any] = {"process": name, "restarted": restart, "at_s": time.monotonic() - began}
        killed_at = time.monotonic()
        await asyncio.to_thread(stack.stop_process, name, signal.SIGKILL)
        if restart:
            start = stack.start_analytics if name == "analytics" else stack.start_worker
            await asyncio.to_thread(start)
            kill["back_s"] = time.monotonic() - killed_at
        kill["killed_at"] = killed_at
        out.kills.append(kill)
        print(json.dumps({k: v for k, v in kill.items() if k != "killed_at"}), file=sys.stderr, flush=True)


def recovery(out: Outcomes) -> list[dict[str, Any]]:
    """Per kill: the first answer to a question sent after it, and when the last question
    sent before it was answered."""
    rows = []
    for kill in out.kills:
        at = kill["killed_at"]
        # An answer already on its way when the kill came says nothing of recovery: the
        # next answer counted is one to a question sent after the kill.
        after = [t for i, (t, _) in out.answered.items() if out.sent[i] >= at]
        before = [out.answered[i][0] for i, sent in out.sent.items() if sent <= at and i in out.answered]
        # Questions sent in the 30 s after the kill that landed on a dead worker's partitions
        # wait for the group to move them (or for the restart): the longest such wait.
        waits = [t - out.sent[i] for i, (t, _) in out.answered.items() if at <= out.sent[i] < at + 30]
        rows.append(
            {
                **{k: v for k, v in kill.items() if k != "killed_at"},
                "next_answer_s": min(after) - at if after else None,
                "sent_before_all_answered_s": max(0.0, max(before) - at) if before else 0.0,
                "longest_wait_after_s": max(waits) if waits else None,
            }
        )
    return rows


async def settled(
    stack: LocalStack, owner: str, traces: list[str], ratings: int, timeout: float = 180
) -> dict[str, int]:
    """The analytics rows once every rating is stored linked to its trace and every
    answered trace has its generation row (or `timeout` passed), and 5 s later (what a
    redelivery would still add)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await stored(stack, owner, traces)
        if counts["feedback_linked"] >= ratings and counts["traces_answered"] >= len(traces):
            break
        if time.monotonic() > deadline:
            return counts
        await asyncio.sleep(2)
    await asyncio.sleep(5)
    return await stored(stack, owner, traces)


async def chaos(
    stack: LocalStack, count: int, rate: float, mode: RetrievalMode, timeout: float
) -> dict[str, Any]:
    owner = f"chaos-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(stack.start_worker, "worker-2")
    deadline = time.monotonic() + 90
    while await asyncio.to_thread(members_with_queries, stack) < 2:
        if time.monotonic() > deadline:
            raise SystemExit("the second worker never got a partition of the queries topic")
        await asyncio.sleep(1)
    out, answered, done = Outcomes(), asyncio.Queue[str](), asyncio.Event()
    async with Client(stack.settings, producer_name="chaos") as client:
        await client.ingest(python_reference(), tenant=owner, timeout=900)
        for question in QUESTIONS[:3]:  # warm-up: the first searches load the index
            await client.ask(question, tenant=owner, retrieval_mode=mode, timeout=120)
        began = time.monotonic()

        async def asking() -> None:
            try:
                await questions(client, owner, count, rate, mode, timeout, out, answered)
            finally:
                done.set()

        await asyncio.gather(
            asking(),
            ratings(client, owner, count, rate, out, answered, done),
            faults(stack, count / rate, out),
        )
        elapsed = time.monotonic() - began
    traces = [trace for _, trace in out.answered.values()]
    on_topic = await asyncio.to_thread(responses_on_topic, stack, set(traces))
    rows = await settled(stack, owner, traces, out.ratings_sent)
    latencies = [(t - out.sent[i]) * 1000 for i, (t, _) in out.answered.items()]
    return {
        "questions_sent": len(out.sent),
        "answered": len(out.answered),
        "lost": len(out.sent) - len(out.answered),
        "lost_examples": list(out.failed.values())[:3],
        "answered_twice_at_client": len(traces) - len(set(traces)),
        "responses_on_topic": sum(on_topic.values()),
        "traces_redelivered_inside": sum(n > 1 for n in on_topic.values()),
        "ratings_sent": out.ratings_sent,
        "rating_failures": len(out.rating_failures),
        **rows,
        "telemetry_duplicate_rows": rows["telemetry_rows"] - rows["telemetry_events"],
        "seconds": elapsed,
        "answered_per_s": len(out.answered) / elapsed,
        "p50_ms": pct(latencies, 0.5) if latencies else None,
        "p99_ms": pct(latencies, 0.99) if latencies else None,
        "kills": recovery(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=10_000, help="questions, and as many ratings")
    parser.add_argument("--rate", type=float, default=18.0, help="questions (and ratings) per second")
    parser.add_argument("--retrieval-mode", default="dense", choices=["dense", "bm25", "hybrid"])
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds a question may wait for its answer"
    )
    args = parser.parse_args()
    base = machinery_settings()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, started_stack("kafka", base, Path(tmp)) as running:
        result = asyncio.run(
            chaos(running, args.questions, args.rate, cast(RetrievalMode, args.retrieval_mode), args.timeout)
        )
    report = {
        "broker": "apache kafka",
        "workers": 2,
        "rate_per_s": args.rate,
        "retrieval_mode": args.retrieval_mode,
        "llm_backend": base.llm.backend,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        **result,
    }
    print(json.dumps(report, indent=2))
    print(
        f"\n{report['questions_sent']} questions at {args.rate:g}/s on Apache Kafka, 2 workers, "
        f"{args.retrieval_mode} retrieval, {base.llm.backend} generation; {report['seconds']:.0f} s"
    )
    checks = [
        ("questions answered", report["answered"], report["questions_sent"]),
        ("questions lost", report["lost"], 0),
        ("answered twice at the client", report["answered_twice_at_client"], 0),
        ("feedback rows (FINAL)", report["feedback_final_rows"], report["ratings_sent"]),
        ("feedback event ids", report["feedback_events"], report["ratings_sent"]),
        ("feedback linked to its trace", report["feedback_linked"], report["ratings_sent"]),
        ("telemetry rows", report["telemetry_rows"], report["telemetry_events"]),
        ("traces with a generation row", report["traces_answered"], report["answered"]),
    ]
    print(f"{'':<32}{'counted':>10}{'expected':>10}")
    for name, counted, expected in checks:
        print(f"{name:<32}{counted:>10}{expected:>10}{'' if counted == expected else '   <-- differs'}")
    print(
        f"raw feedback rows {report['feedback_rows']} (a rating stored before its trace's telemetry "
        "is stored again once linked, as a higher revision)"
    )
    print(
        f"responses on the topic {report['responses_on_topic']} for {report['answered']} answers "
        f"({report['traces_redelivered_inside']} traces redelivered inside, dropped by the client); "
        f"p50 {report['p50_ms'] or float('nan'):.0f} ms, p99 {report['p99_ms'] or float('nan'):.0f} ms"
    )
    print(
        f"\n{'kill':<12}{'at s':>7}{'back s':>8}{'next answer s':>15}{'earlier all answered s':>24}"
        f"{'longest wait, next 30 s':>25}"
    )
    for k in report["kills"]:
        back = f"{k['back_s']:.1f}" if "back_s" in k else "never"
        nxt = f"{k['next_answer_s']:.2f}" if k["next_answer_s"] is not None else "-"
        wait = f"{k['longest_wait_after_s']:.1f}" if k["longest_wait_after_s"] is not None else "-"
        print(
            f"{k['process']:<12}{k['at_s']:>7.0f}{back:>8}{nxt:>15}{k['sent_before_all_answered_s']:>24.1f}"
            f"{wait:>25}"
        )


if __name__ == "__main__":
    main()
