"""Answer quality through the whole pipeline, per configuration, with no judge model.

    python -m benchmarks.answer_quality [--data benchmarks/golden/answers.jsonl] [--out FILE]
        [--backend extractive] [--backend local:LLMOPS_LLM__BACKEND=openai,...]
        [--top-k 2,4] [--prompt FILE ...] [--limit N] [--concurrency 4] [--timeout 180]
        [--artifacts benchmarks/golden/few_shot.jsonl --artifacts-k 0,3]

The golden set (benchmarks/golden/answers.jsonl) has one JSON object per line:
  question     asked as written
  passage_ids  per piece of the answer, the list of the sample corpus's passages that carry
               it (the reference repeats sections: `with` also sits in `compound`, special
               methods in `specialnames`; citing any copy covers the piece). Chunk ids as
               the indexing stage makes them for tenant "default" with the default
               chunking (160 words, 32 shared), as `llmops demo` indexes the corpus
  doc_ids      the documents of those passages (pydoc-<topic>)
  key_phrases  2-4 short strings a correct answer contains (case and whitespace ignored)
  evidence     per piece, quotes from the corpus (lower case); a passage carries the piece
               when it contains one of them
tests/unit/test_evaluation.py recomputes every piece's passages from its evidence and
checks each key phrase against them, so a change of corpus or chunking fails there.

A configuration is a backend and a prompt version. For each `--backend` (NAME, or
NAME:KEY=VALUE,... with the LLMOPS_* settings that make it; a bare NAME sets
LLMOPS_LLM__BACKEND=NAME) it starts its own embedded stack with those settings, indexes
the sample corpus, registers one prompt version per `--top-k` (the built-in prompt
retrieving that many passages) and per `--prompt` file (TOML or JSON fields of a prompt
version), and asks every question pinned to each version, one version after the other.

With `--artifacts FILE` (prompt artifacts, JSON Lines as `llmops artifacts push` reads)
the file is pushed for the built-in prompt's name in the tenant, and each `--top-k`
version comes once per `--artifacts-k` N: N = 0 is the version as it is, N > 0 the same
prompt with the N artifacts nearest to the question rendered before the passages
(`artifacts_k` = N, pinned to the file's set). The artifacts each answer was given are
in its row.

Per configuration, means over the cases (a failed question scores 0 on each): citation
precision and recall against the expected passages, context recall (expected passages
among those the generator was given), key-phrase recall, the groundedness proxy
(agents/evaluation.py says what it can't catch), nDCG@10 of the documents; failures,
latency p50/p95 and tokens per answer. Prints JSON (also written to `--out`) and a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.evaluation import GoldenCase, case_scores, load_golden
from benchmarks.ask_latency import pct
from connectors.analytics import PROBE_TENANT
from connectors.client import Client, RequestError
from connectors.registry_log import append
from schemas.artifacts import ArtifactContent, artifact_set_version
from schemas.prompts import PromptVersion
from topology.samples import python_reference
from topology.settings import Settings
from topology.stack import PROBE_QUESTION, LocalStack
from topology.topics import registry_topic

GOLDEN = Path(__file__).resolve().parent / "golden" / "answers.jsonl"
TENANT = "default"  # the passage ids in the golden set are this tenant's
METRICS = (
    "citation_precision",
    "citation_recall",
    "context_recall",
    "key_phrase_recall",
    "groundedness",
    "ndcg_at_10",
)


@dataclass(frozen=True)
class Backend:
    name: str
    env: dict[str, str]


def parse_backend(spec: str) -> Backend:
    name, _, settings = spec.partition(":")
    if not settings:
        return Backend(name, {"LLMOPS_LLM__BACKEND": name})
    env = {}
    for pair in settings.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("LLMOPS_"):
            raise argparse.ArgumentTypeError(f"{pair!r}: expected LLMOPS_KEY=VALUE")
        env[key] = value
    return Backend(name, env)


@contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    """The backend's settings for this process too: the stack it starts reads them."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# The built-in template with the examples before the passages.
FEW_SHOT_TEMPLATE = "Examples:\n$examples\n\nPassages:\n$context\n\nQuestion: $question\nAnswer:"


def read_artifacts(path: Path) -> list[ArtifactContent]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ArtifactContent.model_validate_json(line) for line in lines if line.strip()]


def prompt_versions(
    builtin: PromptVersion,
    top_ks: Sequence[int],
    files: Sequence[Path],
    artifacts: Sequence[ArtifactContent] = (),
    artifacts_ks: Sequence[int] = (0,),
) -> list[tuple[str, PromptVersion]]:
    """(name, version) per configuration: the built-in prompt with each passage count
    (and with artifacts, once per artifact count), then each file."""
    base = builtin.model_dump(exclude={"version"})
    if not artifacts:
        artifacts_ks = (0,)
    few_shot = {"template": FEW_SHOT_TEMPLATE}
    if artifacts:
        few_shot["artifact_set"] = artifact_set_version(builtin.name, list(artifacts))
    versions = [
        (
            f"top{k}" + (f"-examples{n}" if artifacts else ""),
            PromptVersion.model_validate(
                {**base, "top_k": k, **({**few_shot, "artifacts_k": n} if n else {})}
            ),
        )
        for k in top_ks
        for n in artifacts_ks
    ]
    for path in files:
        raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        versions.append((path.stem, PromptVersion.model_validate(raw)))
    return versions


async def until_served(client: Client, version: str, timeout: float) -> None:
    """Workers follow the registry topic: ask pinned to `version` until one knows it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.ask(PROBE_QUESTION, tenant=PROBE_TENANT, prompt=version, timeout=timeout)
            return
        except (RequestError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def ask_case(client: Client, case: GoldenCase, version: str, timeout: float) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        r = await client.ask(case.question, tenant=TENANT, prompt=version, timeout=timeout)
    except (RequestError, TimeoutError) as exc:
        return {"question": case.question, "error": f"{type(exc).__name__}: {exc}"[:300]}
    passages = {p.id: p.text for p in r.passages}
    return {
        "question": case.question,
        "answer": r.answer,
        "citations": r.citations,
        "passages": list(passages),
        "scores": case_scores(
            case, [p.doc_id for p in r.passages], r.answer, citations=r.citations, passages=passages
        ),
        "latency_ms": (time.perf_counter() - began) * 1000,
        "tokens": sum(r.usage_details.values()),
        "passages_seen": len(r.passages),
        "artifacts": list(r.served.artifact_ids),
        "model": r.model,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if "scores" in r]
    latencies = [r["latency_ms"] for r in done]
    return {
        # A failed question scores 0: a configuration that fails more must not look better.
        "scores": {m: sum(r["scores"].get(m, 0.0) for r in done) / len(rows) for m in METRICS},
        "cases": len(rows),
        "failed": len(rows) - len(done),
        "failure_examples": [r["error"] for r in rows if "error" in r][:3],
        "p50_ms": pct(latencies, 0.5) if latencies else None,
        "p95_ms": pct(latencies, 0.95) if latencies else None,
        "tokens_per_answer": statistics.mean(r["tokens"] for r in done) if done else None,
        "passages_seen": statistics.mean(r["passages_seen"] for r in done) if done else None,
        "artifacts_per_answer": statistics.mean(len(r["artifacts"]) for r in done) if done else None,
        "models": sorted({r["model"] for r in done}),
        "per_case": rows,
    }


async def run_backend(
    settings: Settings,
    cases: Sequence[GoldenCase],
    versions: Sequence[tuple[str, PromptVersion]],
    concurrency: int,
    timeout: float,
    artifacts: Sequence[ArtifactContent] = (),
) -> tuple[float, list[dict[str, Any]]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(client: Client, case: GoldenCase, version: str) -> dict[str, Any]:
        async with gate:
            return await ask_case(client, case, version, timeout)

    async with Client(settings, producer_name="answer-quality") as client:
        started = time.perf_counter()
        await client.ingest(python_reference(), tenant=TENANT, timeout=900)
        ingest_s = time.perf_counter() - started
        if artifacts:
            await client.push_artifacts(versions[0][1].name, artifacts, tenant=TENANT, timeout=timeout)
        await append(settings.kafka, registry_topic(settings.worker.app_id), [v for _, v in versions])
        results = []
        for name, version in versions:
            await until_served(client, version.version, timeout)
            rows = await asyncio.gather(*(one(client, c, version.version) for c in cases))
            summary = summarise(list(rows))
            results.append({"prompt": name, "version": version.version, "top_k": version.top_k, **summary})
    return ingest_s, results


def run(backend: Backend, cases: Sequence[GoldenCase], args: argparse.Namespace) -> list[dict[str, Any]]:
    with environment(backend.env):
        base = Settings()
    artifacts = read_artifacts(args.artifacts) if args.artifacts else []
    versions = prompt_versions(base.pipeline.prompt, args.top_k, args.prompt, artifacts, args.artifacts_k)
    with tempfile.TemporaryDirectory(prefix="llmops-answer-quality-") as tmp:
        update = {
            "stack": base.stack.model_copy(
                update={"data_dir": Path(tmp), "broker_port": 0, "milvus_port": 0}
            ),
            "analytics": base.analytics.model_copy(update={"port": 0}),
        }
        with LocalStack(base.model_copy(update=update), env=backend.env) as stack:
            ingest_s, results = asyncio.run(
                run_backend(stack.settings, cases, versions, args.concurrency, args.timeout, artifacts)
            )
    return [
        {"config": f"{backend.name}/{r['prompt']}", "backend": backend.name, "ingest_s": ingest_s, **r}
        for r in results
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=GOLDEN, help="golden set (JSON Lines)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--backend",
        type=parse_backend,
        action="append",
        help="NAME or NAME:LLMOPS_KEY=VALUE,...; repeat to compare (default: extractive)",
    )
    parser.add_argument(
        "--top-k",
        type=lambda s: [int(k) for k in s.split(",")],
        default=[2, 4],
        help="passage counts, one prompt version each (default 2,4)",
    )
    parser.add_argument(
        "--prompt", type=Path, action="append", default=[], help="a prompt version file; repeatable"
    )
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument(
        "--artifacts", type=Path, help="prompt artifacts (JSON Lines) for the built-in prompt"
    )
    parser.add_argument(
        "--artifacts-k",
        type=lambda s: [int(k) for k in s.split(",")],
        default=[0, 3],
        help="with --artifacts: artifacts per prompt, one version each (default 0,3)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="questions in flight")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait per answer")
    args = parser.parse_args()
    backends = args.backend or [parse_backend("extractive")]
    cases = load_golden(args.data, args.limit)

    configs = [row for backend in backends for row in run(backend, cases, args)]
    report = {"data": str(args.data), "cases": len(cases), "tenant": TENANT, "configs": configs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print(f"\n{len(cases)} questions from {args.data}; means per configuration, a failed question scores 0")
    heads = ("cite P", "cite R", "ctx R", "phrase R", "grounded", "nDCG@10")
    print(
        f"{'configuration':<28}"
        + "".join(f"{h:>9}" for h in heads)
        + f"{'failed':>7}{'p50 ms':>9}{'tokens':>8}{'passages':>9}{'examples':>9}"
    )
    for c in configs:
        p50, tokens = (f"{v:.0f}" if v is not None else "-" for v in (c["p50_ms"], c["tokens_per_answer"]))
        print(
            f"{c['config'][:28]:<28}"
            + "".join(f"{c['scores'][m]:>9.3f}" for m in METRICS)
            + f"{c['failed']:>7}{p50:>9}{tokens:>8}"
            + "".join(
                f"{c[k]:>9.2f}" if c[k] is not None else f"{'-':>9}"
                for k in ("passages_seen", "artifacts_per_answer")
            )
        )


if __name__ == "__main__":
    main()
