"""A golden set run through the running pipeline (`llmops prompts evaluate`): every case
asked once per prompt version, pinned to it, and scored with agents.evaluation: the
retrieval metrics, answer F1, and the answer metrics that need no judge model (citations
against the expected passages, key phrases, the groundedness proxy)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from agents.evaluation import GoldenCase, case_scores, mean_scores
from connectors.client import Client, HasClientSettings, RequestError


async def run_golden(
    settings: HasClientSettings,
    cases: Sequence[GoldenCase],
    refs: Sequence[str | None],
    tenant: str,
    concurrency: int,
    timeout: float,
) -> list[dict[str, Any]]:
    """Ask every case pinned to each ref (None: the served prompt); per ref, the mean
    scores, latency percentiles, tokens per query and failures."""
    gate = asyncio.Semaphore(concurrency)

    async def one(
        client: Client, case: GoldenCase, ref: str | None
    ) -> tuple[dict[str, float], float, int] | None:
        async with gate:
            began = time.perf_counter()
            try:
                answer = await client.ask(case.question, tenant=tenant, prompt=ref, timeout=timeout)
            except RequestError:
                return None
            elapsed = (time.perf_counter() - began) * 1000
            tokens = sum(answer.usage_details.values())
            scores = case_scores(
                case,
                [p.doc_id for p in answer.passages],
                answer.answer,
                citations=answer.citations,
                passages={p.id: p.text for p in answer.passages},
            )
            return scores, elapsed, tokens

    async with Client(settings, producer_name="prompt-evaluation") as client:
        runs = await asyncio.gather(*(asyncio.gather(*(one(client, c, ref) for c in cases)) for ref in refs))
    results = []
    for run in runs:
        done = [r for r in run if r is not None]
        failed = len(run) - len(done)
        # A failed question scores zero: a version that fails more must not look better.
        per_case = [r[0] for r in done] + [dict.fromkeys(done[0][0] if done else {}, 0.0)] * failed
        latencies = sorted(r[1] for r in done) or [0.0]
        results.append(
            {
                "scores": mean_scores(per_case) if per_case and per_case[0] else {},
                "p50_ms": statistics.median(latencies),
                "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                "tokens_per_query": statistics.mean(r[2] for r in done) if done else 0.0,
                "failed": failed,
            }
        )
    return results
