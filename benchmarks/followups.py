"""Follow-up questions: does retrieval find the passage a second turn asks about when the
question alone names nothing ("Can it contain statements?" after "What is a lambda
expression?")?

    python -m benchmarks.followups [--data benchmarks/dialogues/followups.jsonl]
        [--modes off,extractive,local] [--limit N] [--concurrency 1] [--timeout 180]
        [--answer-tokens 32] [--answer-prompt-tokens 256] [--third 8] [--out FILE]

The dialogues (benchmarks/dialogues/followups.jsonl) have one JSON object per line:
  first        the first turn, which names the topic
  second       the follow-up, which only makes sense after the first
  passage_ids  the sample corpus's passages that answer the follow-up: every chunk (as
               `llmops demo` indexes the corpus for tenant "default") that contains one
               of the evidence quotes
  doc_ids      their documents (pydoc-<topic>)
  evidence     quotes (lower case) of the answer
tests/unit/test_followups.py recomputes the passages from the evidence, so a change of
corpus or chunking fails there, not silently here.

Modes, each a conversation per dialogue (the first turn, then the second), top 4:
  off         condense off: retrieval searches with the follow-up as it is (extractive)
  extractive  condense on with the extractive backend: the previous question prepended
  local       condense on with the local model (SmolLM2-135M through llama.cpp, started
              by the stack): the model rewrites the follow-up from the earlier turn
`off` and `extractive` share one embedded stack, `local` starts its own with the openai
backend. Answers are not scored here, so the local model's answers are capped
(`--answer-tokens`, and `--answer-prompt-tokens` for the whole answer prompt) to keep
the run short; the first turn's capped answer is what condense sees of it. Two turns never
summarize, so in `local` the first `--third` dialogues get a third turn (THIRD) with
`memory_turns` 1: its summarize node folds the first turn into the summary (not scored;
its rows time the summarize node).

Hit@4: an expected passage among the 4 that retrieval found for the follow-up (read back
from the retrieval stage's telemetry row: a response carries only the passages that fit
the prompt budget). Latency per LM node: p50/p95 of the node's own telemetry rows
(condense, summarize, and generation, the answer node) per mode, and of the follow-up's
end-to-end time as the client saw it. Prints JSON and a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.answer_quality import Backend, environment, until_served
from benchmarks.ask_latency import pct
from connectors.analytics import Analytics
from connectors.client import Client, RequestError
from connectors.registry_log import append
from schemas.errors import PermanentError
from schemas.prompts import PromptVersion
from topology.samples import python_reference
from topology.settings import Settings
from topology.stack import LocalStack
from topology.topics import registry_topic

DIALOGUES = Path(__file__).resolve().parent / "dialogues" / "followups.jsonl"
TENANT = "default"  # the passage ids in the dialogues are this tenant's
TOP_K = 4
MODES = ("off", "extractive", "local")
# The LM nodes of the query path, as their telemetry rows name them (generation: answer).
NODES = ("summarize", "condense", "hyde", "generation")
THIRD = "Is there anything else to know about it?"


@dataclass(frozen=True)
class Dialogue:
    first: str
    second: str
    passages: frozenset[str]  # any of them answers the follow-up
    doc_ids: tuple[str, ...]
    evidence: tuple[str, ...]


def load_dialogues(path: Path, limit: int | None = None) -> list[Dialogue]:
    dialogues = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            dialogue = Dialogue(
                first=str(row["first"]),
                second=str(row["second"]),
                passages=frozenset(str(p) for p in row["passage_ids"]),
                doc_ids=tuple(row["doc_ids"]),
                evidence=tuple(row["evidence"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"{path.name}:{number}: {exc!r}") from exc
        if not dialogue.passages or not dialogue.evidence:
            raise PermanentError(f"{path.name}:{number}: no passage_ids or no evidence")
        dialogues.append(dialogue)
    return dialogues[:limit]


def hit_at(found: Sequence[str], expected: frozenset[str], k: int = TOP_K) -> float:
    return 1.0 if expected & set(found[:k]) else 0.0


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50_ms": round(pct(list(values), 0.5), 1) if values else None,
        "p95_ms": round(pct(list(values), 0.95), 1) if values else None,
    }


def versions(builtin: PromptVersion, answer_tokens: int | None) -> dict[str, PromptVersion]:
    """The built-in prompt with top 4, condense on and off (answers capped when asked)."""
    base = {**builtin.model_dump(exclude={"version"}), "top_k": TOP_K}
    if answer_tokens is not None:
        base["max_tokens"] = answer_tokens
    return {
        "on": PromptVersion.model_validate({**base, "condense": True}),
        "off": PromptVersion.model_validate({**base, "condense": False}),
    }


async def converse(
    client: Client, dialogue: Dialogue, mode: str, version: str, timeout: float, third: bool = False
) -> dict[str, Any]:
    conversation = f"followups-{mode}-{uuid.uuid4().hex[:10]}"
    row: dict[str, Any] = {"mode": mode, "second": dialogue.second, "conversation": conversation}
    try:
        first = await client.ask(
            dialogue.first, tenant=TENANT, conversation=conversation, prompt=version, timeout=timeout
        )
        began = time.perf_counter()
        second = await client.ask(
            dialogue.second, tenant=TENANT, conversation=conversation, prompt=version, timeout=timeout
        )
        second_ms = (time.perf_counter() - began) * 1000
        if third:
            more = await client.ask(
                THIRD, tenant=TENANT, conversation=conversation, prompt=version, timeout=timeout
            )
            row["third_trace"] = more.trace_id
    except (RequestError, TimeoutError) as exc:
        return {**row, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {
        **row,
        "first_trace": first.trace_id,
        "second_trace": second.trace_id,
        "second_ms": second_ms,
        "answer": second.answer,
    }


async def read_back(settings: Settings, traces: list[str], wait_s: float = 60) -> dict[str, list[dict]]:
    """Each trace's telemetry rows, once every trace has its retrieval and generation
    rows (the sink writes in batches, so the last rows arrive a moment after the last
    answer)."""
    analytics = await Analytics.connect(settings.clickhouse, settings.analytics)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            rows = (await analytics.trace_stages(traces)).dicts()
            by_trace: dict[str, list[dict]] = {}
            for r in rows:
                by_trace.setdefault(r["trace_id"], []).append(r)
            complete = {
                t for t, rs in by_trace.items() if {"retrieval", "generation"} <= {r["stage"] for r in rs}
            }
            if complete >= set(traces) or time.monotonic() > deadline:
                return by_trace
            await asyncio.sleep(1)
    finally:
        await analytics.close()


def score(
    mode: str, results: list[dict[str, Any]], rows: dict[str, list[dict]], dialogues: list[Dialogue]
) -> dict[str, Any]:
    hits: list[float] = []
    ends: list[float] = []
    nodes: dict[str, list[float]] = {n: [] for n in NODES}
    # In the dialogues' order (two dialogues may share a follow-up's words).
    for r, dialogue in zip(results, dialogues, strict=True):
        if "error" in r:
            hits.append(0.0)  # a failed follow-up is a miss
            continue
        second = rows.get(r["second_trace"], [])
        found = next((list(x["passage_ids"]) for x in second if x["stage"] == "retrieval"), [])
        r["retrieved"] = found[:TOP_K]
        r["hit"] = hit_at(found, dialogue.passages)
        # What retrieval searched with, where an LM condensed the follow-up.
        r["condensed"] = next((x["question"] for x in second if x["stage"] == "condense"), None)
        hits.append(r["hit"])
        ends.append(r["second_ms"])
        for trace in (r["first_trace"], r["second_trace"], r.get("third_trace")):
            for x in rows.get(trace or "", []):
                if x["stage"] in nodes and x["status"] == "ok":
                    nodes[x["stage"]].append(float(x["latency_ms"]))
    return {
        "mode": mode,
        "dialogues": len(results),
        "failed": sum("error" in r for r in results),
        "hit_at_4": round(sum(hits) / len(hits), 3) if hits else None,
        "followup_end_to_end": percentiles(ends),
        "nodes": {n: percentiles(v) for n, v in nodes.items() if v},
        "per_dialogue": results,
    }


async def run_modes(
    settings: Settings,
    dialogues: list[Dialogue],
    modes: Sequence[str],
    answer_tokens: int | None,
    concurrency: int,
    timeout: float,
    thirds: int = 0,
) -> tuple[float, list[dict[str, Any]]]:
    chosen = versions(settings.pipeline.prompt, answer_tokens)
    gate = asyncio.Semaphore(concurrency)
    async with Client(settings, producer_name="followups") as client:
        started = time.perf_counter()
        await client.ingest(python_reference(), tenant=TENANT, timeout=900)
        ingest_s = time.perf_counter() - started
        await append(settings.kafka, registry_topic(settings.worker.app_id), list(chosen.values()))
        results = []
        for mode in modes:
            version = chosen["off" if mode == "off" else "on"].version
            await until_served(client, version, timeout)

            async def one(n: int, d: Dialogue, mode: str = mode, version: str = version) -> dict[str, Any]:
                async with gate:
                    return await converse(client, d, mode, version, timeout, third=n < thirds)

            results.append((mode, list(await asyncio.gather(*(one(n, d) for n, d in enumerate(dialogues))))))
    keys = ("first_trace", "second_trace", "third_trace")
    traces = [r[k] for _, rs in results for r in rs for k in keys if r.get(k)]
    rows = await read_back(settings, traces)
    return ingest_s, [score(mode, rs, rows, dialogues) for mode, rs in results]


def run_stack(
    backend: Backend, modes: Sequence[str], dialogues: list[Dialogue], args: argparse.Namespace
) -> list[dict[str, Any]]:
    with environment(backend.env):
        base = Settings()
    with tempfile.TemporaryDirectory(prefix="llmops-followups-") as tmp:
        update = {
            "stack": base.stack.model_copy(
                update={"data_dir": Path(tmp), "broker_port": 0, "milvus_port": 0}
            ),
            "analytics": base.analytics.model_copy(update={"port": 0}),
        }
        began = time.perf_counter()
        with LocalStack(base.model_copy(update=update), env=backend.env) as stack:
            up_s = time.perf_counter() - began
            local = backend.name == "local"
            ingest_s, scored = asyncio.run(
                run_modes(
                    stack.settings,
                    dialogues,
                    modes,
                    args.answer_tokens if local else None,
                    args.concurrency,
                    args.timeout,
                    args.third if local else 0,
                )
            )
    return [
        {"backend": backend.name, "stack_up_s": round(up_s, 1), "ingest_s": round(ingest_s, 1), **s}
        for s in scored
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DIALOGUES, help="dialogues (JSON Lines)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--modes", default=",".join(MODES), help="of off, extractive, local (default: all)")
    parser.add_argument("--limit", type=int, help="only the first N dialogues")
    parser.add_argument("--concurrency", type=int, default=1, help="dialogues in flight (1: clean latencies)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait per answer")
    parser.add_argument("--answer-tokens", type=int, default=32, help="local: the answers' max_tokens")
    parser.add_argument(
        "--third", type=int, default=8, help="local: a third turn for the first N dialogues (times summarize)"
    )
    parser.add_argument(
        "--answer-prompt-tokens",
        type=int,
        default=256,
        help="local: LLMOPS_LLM__MAX_PROMPT_TOKENS of answers",
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; choose from {', '.join(MODES)}")
    dialogues = load_dialogues(args.data, args.limit)
    extractive = [m for m in modes if m != "local"]
    configs = []
    if extractive:
        configs += run_stack(
            Backend("extractive", {"LLMOPS_LLM__BACKEND": "extractive"}), extractive, dialogues, args
        )
    if "local" in modes:
        env = {
            "LLMOPS_LLM__BACKEND": "openai",
            "LLMOPS_LLM__MAX_PROMPT_TOKENS": str(args.answer_prompt_tokens),
            "LLMOPS_CONVERSATION__MEMORY_TURNS": "1",  # so that a third turn summarizes the first
            # A free port: a stack of another run on the default 8080 would take our requests.
            "LLMOPS_LOCAL_LLM__PORT": "0",
        }
        configs += run_stack(Backend("local", env), ["local"], dialogues, args)
    report = {"data": str(args.data), "dialogues": len(dialogues), "top_k": TOP_K, "configs": configs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print(f"\n{len(dialogues)} two-turn dialogues from {args.data}; Hit@{TOP_K} of the follow-up's passage")
    print(f"{'mode':<12}{'Hit@4':>7}{'failed':>8}{'follow-up p50/p95 ms':>24}   LM nodes p50/p95 ms (rows)")
    for c in configs:
        e2e = c["followup_end_to_end"]
        nodes = "  ".join(
            f"{n} {v['p50_ms']:.0f}/{v['p95_ms']:.0f} ({v['n']})" for n, v in c["nodes"].items()
        )
        hit = f"{c['hit_at_4']:.3f}" if c["hit_at_4"] is not None else "-"
        spread = f"{e2e['p50_ms']:.0f}/{e2e['p95_ms']:.0f}" if e2e["n"] else "-"
        print(f"{c['mode']:<12}{hit:>7}{c['failed']:>8}{spread:>24}   {nodes or '-'}")


if __name__ == "__main__":
    main()
