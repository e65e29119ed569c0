"""Documents through the indexing path against the embedder alone on the same chunks.

    python -m benchmarks.ingest --data DIR [--docs 1000] [--profile DIR]

DIR holds scifact/ (BEIR layout); the first `--docs` abstracts of its corpus are the
documents. Baseline in the same run: the document tower (`OnnxEmbedder`, the worker's
settings and threads) embeds exactly the texts the indexing stage will embed (each chunk
with its title, `agents.indexing.chunk_words`), in one call, with nothing else running,
once before the stack starts and once after it stopped (the path is compared with their
mean). Then the embedded stack starts (Tansu, the Milvus Lite server, one worker, the
analytics process) and the same documents go through the Client, as
`llmops ingest FILE` sends them: DocumentSubmitted → chunk → embed → Milvus upsert →
DocumentIndexed. Reported for both: chunks per second (wall clock, first send to last
reply for the path) and CPU milliseconds per chunk (this process for the baseline; the
worker and the Milvus server from /proc for the path), and the path's rate as a share of
the baseline's. The passages Milvus holds for the run's tenant are counted at the end.

`--profile DIR`: py-spy (if installed) records the worker while it indexes, into
DIR/worker.txt (raw, collapsed stacks); the table lists where its samples were taken.
Prints JSON and a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from agents.indexing import chunk_words
from benchmarks.ask_latency import machinery_settings
from benchmarks.idle_cpu import own_cpu
from connectors.client import Client
from connectors.embedder import towers
from connectors.milvus import MilvusStore
from topology.settings import Settings
from topology.stack import LocalStack


def documents(data: Path, count: int) -> list[dict[str, str]]:
    docs = []
    with (data / "scifact" / "corpus.jsonl").open() as lines:
        for line in lines:
            row = json.loads(line)
            docs.append({"doc_id": row["_id"], "title": row["title"], "text": row["text"]})
            if len(docs) == count:
                break
    return docs


def chunk_texts(settings: Settings, docs: list[dict[str, str]]) -> list[str]:
    """What the indexing stage embeds: each chunk, after its document's title."""
    cfg = settings.pipeline
    return [
        f"{d['title']}\n{p}" if d["title"] else p
        for d in docs
        for p in chunk_words(d["text"], cfg.chunk_words, cfg.chunk_overlap)
    ]


def baseline(settings: Settings, texts: list[str]) -> dict[str, float]:
    """The document tower alone on the same texts, one call (it sorts and batches them)."""
    _, document = towers(settings.embedding)
    document.open()
    document.embed(texts[:16])  # warm-up
    cpu, began = time.process_time(), time.perf_counter()
    document.embed(texts)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    return {"seconds": wall, "chunks_per_s": len(texts) / wall, "cpu_ms_per_chunk": cpu * 1000 / len(texts)}


def mean(runs: list[dict[str, float]], chunks: int) -> dict[str, float]:
    """The runs as one: their mean time, and the rate that time gives (not the mean rate)."""
    seconds = sum(r["seconds"] for r in runs) / len(runs)
    cpu = sum(r["cpu_ms_per_chunk"] for r in runs) / len(runs)
    return {"seconds": seconds, "chunks_per_s": chunks / seconds, "cpu_ms_per_chunk": cpu}


def summarize(path: Path, seconds: float) -> dict[str, Any]:
    """Busy samples per second by the deepest frame of our own code (agents/, connectors/,
    topology/) and the library function it was in: where the worker's time went."""
    where: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        ours = [i for i, f in enumerate(frames) if re.search(r"[(/](agents|connectors|topology)/", f)]
        if not ours:
            where[f"(outside our code) {frames[-1].split(' (')[0]}"] += n
            continue
        deepest = frames[ours[-1]].split(" (")[0]
        below = frames[ours[-1] + 1].split(" (")[0] if ours[-1] + 1 < len(frames) else "-"
        where[f"{deepest} > {below}"] += n
    return {
        "busy_samples_per_s": total / seconds,
        "by_function": {w: n / seconds for w, n in where.most_common(15)},
    }


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(  # noqa: S603
        [spy, "record", "-d", str(int(seconds)), "-r", "100", "--nonblocking", "-f", "raw"]
        + ["-o", str(out / "worker.txt"), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def through_the_path(stack: LocalStack, docs: list[dict[str, str]], tenant: str) -> dict[str, Any]:
    pids = {"worker": stack.pid("worker"), "milvus": stack.pid("milvus")}
    async with Client(stack.settings, producer_name="benchmark") as client:
        # Warm-up: the first upsert and flush of a collection cost more than the rest.
        await client.ingest(docs[:2], tenant=f"{tenant}-warmup", timeout=300)
        cpu = {name: own_cpu(pid) for name, pid in pids.items()}
        began = time.perf_counter()
        indexed = await client.ingest(docs, tenant=tenant, timeout=3600)
        wall = time.perf_counter() - began
    used = {name: own_cpu(pid) - cpu[name] for name, pid in pids.items()}
    chunks = sum(d.chunks for d in indexed)
    return {"seconds": wall, "chunks": chunks, "chunks_per_s": chunks / wall, "cpu_s": used}


def stored(settings: Settings, tenant: str) -> int:
    store = MilvusStore(settings.milvus)
    store.open()
    try:
        return store.count(tenant)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="directory holding scifact/")
    parser.add_argument("--docs", type=int, default=1000, help="abstracts to index (corpus order)")
    parser.add_argument("--profile", type=Path, help="py-spy the worker while it indexes; files here")
    args = parser.parse_args()
    settings = machinery_settings()
    docs = documents(args.data, args.docs)
    texts = chunk_texts(settings, docs)
    before = baseline(settings, texts)
    print(json.dumps({"baseline": before}), file=sys.stderr, flush=True)  # progress
    tenant = f"ingest-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = settings.stack.model_copy(update={"data_dir": Path(tmp), "broker_port": 0, "milvus_port": 0})
        with LocalStack(settings.model_copy(update={"stack": cfg})) as stack:
            spy = None
            if args.profile is not None:
                # Long enough for the whole run at the baseline's rate five times over.
                spy = start_profile(stack.pid("worker"), 5 * before["seconds"] + 60, args.profile)
            path = asyncio.run(through_the_path(stack, docs, tenant))
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
                spy.wait()
            path["stored"] = stored(stack.settings, tenant)
    # Again once the stack is gone: on a shared machine the load can change meanwhile, so
    # the path is compared with the mean of the two.
    after = baseline(settings, texts)
    alone = mean([before, after], len(texts))
    path["cpu_ms_per_chunk"] = {k: v * 1000 / max(1, path["chunks"]) for k, v in path.pop("cpu_s").items()}
    report: dict[str, Any] = {
        "documents": len(docs),
        "chunks": len(texts),
        "chunk_words": settings.pipeline.chunk_words,
        "embedding": {
            "batch_size": settings.embedding.batch_size,
            "threads": settings.embedding.threads,
            "cores": os.cpu_count(),
        },
        "embedder_alone": alone,
        "embedder_alone_before": before,
        "embedder_alone_after": after,
        "indexing_path": path,
        "path_vs_embedder": path["chunks_per_s"] / alone["chunks_per_s"],
        # CPU is less disturbed by other load than wall time: the embedder's CPU per chunk
        # over all the CPU the path spent per chunk (worker and Milvus).
        "path_vs_embedder_cpu": alone["cpu_ms_per_chunk"] / sum(path["cpu_ms_per_chunk"].values()),
    }
    if args.profile is not None:
        report["profile"] = (
            summarize(args.profile / "worker.txt", path["seconds"])
            if (args.profile / "worker.txt").is_file()
            else {"skipped": "py-spy not installed (uv pip install py-spy)"}
        )
    print(json.dumps(report, indent=2))
    cpu = path["cpu_ms_per_chunk"]
    print(f"\n{len(docs)} documents, {len(texts)} chunks ({settings.pipeline.chunk_words} words)")
    print(f"{'':<24}{'seconds':>9}{'chunks/s':>10}{'CPU ms/chunk':>24}")
    for name, run in (
        ("embedder alone, before", before),
        ("embedder alone, after", after),
        ("embedder alone", alone),
    ):
        print(f"{name:<24}{run['seconds']:>9.1f}{run['chunks_per_s']:>10.1f}{run['cpu_ms_per_chunk']:>24.1f}")
    print(
        f"{'indexing path':<24}{path['seconds']:>9.1f}{path['chunks_per_s']:>10.1f}"
        f"{'worker ' + format(cpu['worker'], '.1f') + ', milvus ' + format(cpu['milvus'], '.1f'):>24}"
    )
    print(
        f"path / embedder: {report['path_vs_embedder']:.0%} by wall clock, "
        f"{report['path_vs_embedder_cpu']:.0%} by CPU per chunk; chunks stored for the tenant: "
        f"{path['stored']} of {path['chunks']}"
    )
    if "by_function" in report.get("profile", {}):
        print("\nworker while indexing (py-spy, busy samples per second at 100/s):")
        for where, rate in report["profile"]["by_function"].items():
            print(f"{rate:>8.1f}  {where}")


if __name__ == "__main__":
    main()
