"""End-to-end latency of sequential asks on the embedded stack (Tansu, Milvus Lite server,
one faust worker, ONNX on CPU, extractive generation).

    python -m benchmarks.ask_latency [--asks 20] [--runs 3]

Starts its own stack on free ports, indexes the sample corpus, then asks the sample
questions in turn. Prints JSON and a table: per run, the median and p95 of end-to-end
latency and of each stage's handler time; the time the worker took to become ready."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from connectors.client import Client
from topology.samples import QUESTIONS, python_reference
from topology.settings import Settings
from topology.stack import LocalStack


def machinery_settings() -> Settings:
    """The settings, with extractive generation unless LLMOPS_LLM__BACKEND names another:
    these benchmarks measure the pipeline's machinery, not a language model."""
    settings = Settings()
    if "backend" in settings.llm.model_fields_set:
        return settings
    return settings.model_copy(update={"llm": settings.llm.model_copy(update={"backend": "extractive"})})


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(settings: Settings, asks: int) -> dict:
    async with Client(settings) as client:
        await client.ingest(python_reference(), timeout=600)
        await client.ask(QUESTIONS[0])  # warm-up: first search loads the index
        total: list[float] = []
        stages: dict[str, list[float]] = {}
        for i in range(asks):
            started = time.perf_counter()
            response = await client.ask(QUESTIONS[i % len(QUESTIONS)])
            total.append((time.perf_counter() - started) * 1000)
            for stage, ms in response.latency_ms.items():
                stages.setdefault(stage, []).append(ms)
    summary = {"end_to_end": total, **stages}
    return {k: {"p50_ms": statistics.median(v), "p95_ms": pct(v, 0.95)} for k, v in summary.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--asks", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = machinery_settings()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = base.stack.model_copy(update={"data_dir": Path(tmp), "broker_port": 0, "milvus_port": 0})
            with LocalStack(base.model_copy(update={"stack": cfg})) as stack:
                result = asyncio.run(measure(stack.settings, args.asks))
                result["worker_ready_s"] = stack.timings["worker_ready_s"]
                runs.append(result)
    print(json.dumps({"asks": args.asks, "runs": runs}, indent=2))
    print(f"\n{'metric':<14}" + "".join(f"{'run ' + str(i + 1):>18}" for i in range(len(runs))))
    for key in [k for k in runs[0] if k != "worker_ready_s"]:
        cells = "".join(f"{r[key]['p50_ms']:>8.1f} / {r[key]['p95_ms']:>6.1f}" for r in runs)
        print(f"{key + ' ms':<14}{cells}   (p50 / p95)")
    print(f"{'worker ready':<14}" + "".join(f"{r['worker_ready_s']:>17.1f}s" for r in runs))


if __name__ == "__main__":
    main()
