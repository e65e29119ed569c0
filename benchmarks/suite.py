"""Run the benchmarks and keep their results: `make bench DATA=../shared/data`.

    python -m benchmarks.suite --data ../shared/data [--only embedding,retrieval_quality] [--quick]

--data (a directory holding scifact/) is needed only by the benchmarks that read SciFact.

Each benchmark runs as its own process (its table goes to the terminal as it runs) and
prints its JSON first; the suite collects them into benchmarks/results/latest.json with
the date, the machine and the exact commands. A benchmark that fails is recorded as
failed with its exit status and the others still run; the suite then exits non-zero.
`--quick` passes smaller sizes, for trying the suite out, not for numbers to publish."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (arguments, arguments with --quick); "{scifact}" is the SciFact directory.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "embedding": (["--data", "{scifact}"], ["--data", "{scifact}", "--texts", "200", "--runs", "1"]),
    "milvus_index": (["--data", "{scifact}"], ["--data", "{scifact}", "--runs", "1"]),
    "retrieval_quality": (
        ["--data", "{scifact}"],
        ["--data", "{scifact}", "--runs", "1", "--sequential", "5", "--modes", "dense,hybrid"],
    ),
    "analytics_sink": (
        [],
        ["--events", "2000", "--single", "100", "--rows", "100000", "--runs", "1", "--steady-seconds", "6"],
    ),
    "ask_latency": ([], ["--asks", "5", "--runs", "1"]),
    "milvus_scale": (
        ["--data", "{scifact}"],
        ["--data", "{scifact}", "--sizes", "20000", "--indexes", "FLAT,IVF_FLAT", "--runs", "1"],
    ),
    "stage_overhead": ([], ["--messages", "2000", "--runs", "1"]),
    "pipeline_load": ([], ["--rates", "4,8", "--seconds", "5"]),
    "idle_cpu": ([], ["--seconds", "5", "--runs", "1", "--settle", "3"]),
    "broker_log": ([], ["--sizes", "0,2000", "--messages", "20"]),
    "experiment_split": ([], ["--trials", "50"]),
    # The answer golden set (benchmarks/golden/answers.jsonl) on the sample corpus, extractive
    # beside the openai backend on the local stack's LLM server (or LLMOPS_LLM__BASE_URL's).
    "answer_quality": (
        ["--backend", "extractive", "--backend", "local:LLMOPS_LLM__BACKEND=openai"],
        ["--limit", "10"],
    ),
}


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def run(name: str, args: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    print(f"\n== {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)  # noqa: S603
    elapsed = time.perf_counter() - started
    # The JSON (indented, no blank line) comes first; show what follows it: the table.
    sys.stdout.write(done.stdout[done.stdout.find("\n\n") + 1 :] if done.returncode == 0 else done.stdout)
    entry: dict[str, Any] = {"command": " ".join(command[1:]), "seconds": round(elapsed, 1)}
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        return {**entry, "status": "failed", "exit_status": done.returncode}
    result, _ = json.JSONDecoder().raw_decode(done.stdout.lstrip())
    return {**entry, "status": "ok", "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="directory holding scifact/ (BEIR layout)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the suite")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    if unknown := set(chosen) - set(BENCHMARKS):
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    scifact = args.data / "scifact" if args.data is not None else None
    reading = [n for n in chosen if any("{scifact}" in a for a in BENCHMARKS[n][0] + BENCHMARKS[n][1])]
    if reading and (scifact is None or not (scifact / "corpus.jsonl").is_file()):
        parser.error(
            f"{', '.join(reading)} read SciFact: point --data at a directory holding scifact/ with its "
            "corpus.jsonl (BEIR layout)"
        )

    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "benchmarks": {},
    }
    for name in chosen:
        full, quick = BENCHMARKS[name]
        arguments = [a.replace("{scifact}", str(scifact)) for a in (quick if args.quick else full)]
        report["benchmarks"][name] = run(name, arguments)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'benchmark':<20}{'status':>8}{'seconds':>9}")
    for name, entry in report["benchmarks"].items():
        print(f"{name:<20}{entry['status']:>8}{entry['seconds']:>9.0f}")
    print(f"results: {args.out}")
    if any(e["status"] != "ok" for e in report["benchmarks"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
