"""Embedding throughput: our ONNX embedder against sentence-transformers (PyTorch), and
both against the machine's fp32 matrix-multiply peak measured in the same run.

    python -m benchmarks.embedding --data ../shared/data/scifact [--texts 2000] [--runs 3]

Texts: the first half of `--texts` SciFact claims (short) and the first half abstracts
("title text", long), so lengths vary as they do in use. Both engines get the same thread
count (`--threads`, default all cores), the same 256-token truncation and the same batch
sizes. Per engine and batch size: sentences per second (median of `--runs`), the ratio to
PyTorch, and achieved GFLOP/s: the FLOPs the model needs for the texts' real tokens (no
padding counted) over the wall time, tokenisation included, against numpy's fp32 matmul
peak with the same threads. Also: the share of executed FLOPs that padding wasted, and the
cosine of each ONNX embedding to the PyTorch one. Prints JSON and a table."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from connectors.embedder import EmbeddingSettings, OnnxEmbedder
from connectors.model_export import bundled_weights

# all-MiniLM-L6-v2: 6 layers, hidden 384, feed-forward 1536.
LAYERS, HIDDEN, FFN = 6, 384, 1536


def flops(tokens: int) -> float:
    """Forward FLOPs for one sequence: the dense layers (Q, K, V, output, two FFN
    matrices) per token, and attention's two L x L x hidden products."""
    dense = 2 * tokens * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)
    attention = 2 * 2 * tokens * tokens * HIDDEN
    return LAYERS * (dense + attention)


def padded_flops(lengths: list[int], batch: int) -> float:
    """What runs when texts sorted by length are batched and padded to each batch's longest."""
    ordered = sorted(lengths)
    return sum(
        len(ordered[s : s + batch]) * flops(max(ordered[s : s + batch]))
        for s in range(0, len(ordered), batch)
    )


def load_texts(data: Path, count: int) -> list[str]:
    claims = [json.loads(line)["text"] for line in (data / "queries.jsonl").open()][: count // 2]
    abstracts = [
        f"{d.get('title', '')} {d['text']}".strip() for d in map(json.loads, (data / "corpus.jsonl").open())
    ][: count - len(claims)]
    return claims + abstracts


def matmul_peak(threads: int, size: int = 2048, repeats: int = 7) -> float:
    """Best fp32 GFLOP/s of numpy's matmul (BLAS) on square matrices."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = (
        rng.standard_normal((size, size), dtype=np.float32),
        rng.standard_normal((size, size), dtype=np.float32),
    )
    best = float("inf")
    with threadpool_limits(threads):
        a @ b  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def timed(fn: Any, runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="BEIR SciFact directory")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batches", default="1,8,32,128", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime provider")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    texts = load_texts(args.data, args.texts)
    peak = matmul_peak(args.threads)
    reference_model = SentenceTransformer(str(bundled_weights()), device="cpu")
    reference_model.max_seq_length = 256
    settings = EmbeddingSettings(threads=args.threads, device=args.device)
    probe = OnnxEmbedder(settings)
    probe.open()
    lengths = probe.count_tokens(texts)
    useful = sum(flops(n) for n in lengths)

    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    for batch in batches:
        torch_s, torch_out = timed(
            lambda b=batch: reference_model.encode(texts, batch_size=b, normalize_embeddings=True), args.runs
        )
        reference = torch_out if reference is None else reference
        embedder = OnnxEmbedder(settings.model_copy(update={"batch_size": batch}))
        embedder.open()
        onnx_s, onnx_out = timed(lambda e=embedder: e.embed(texts), args.runs)
        cosine = np.sum(onnx_out * reference, axis=1)
        executed = padded_flops(lengths, batch)
        for engine, seconds in (("onnx", onnx_s), ("pytorch", torch_s)):
            rows.append(
                {
                    "engine": engine,
                    "batch": batch,
                    "sentences_per_s": len(texts) / seconds,
                    "gflops": useful / seconds / 1e9,
                    "share_of_peak": useful / seconds / 1e9 / peak,
                    "padding_waste": 1 - useful / executed,
                    "vs_pytorch": torch_s / seconds,
                }
            )
        rows[-2]["min_cosine_to_pytorch"] = float(cosine.min())
        rows[-2]["mean_cosine_to_pytorch"] = float(cosine.mean())
    report = {
        "texts": len(texts),
        "tokens_mean": statistics.mean(lengths),
        "tokens_max": max(lengths),
        "threads": args.threads,
        "onnx_providers": probe.providers,
        "numpy_fp32_peak_gflops": peak,
        "useful_gflop": useful / 1e9,
        "runs": args.runs,
        "results": rows,
    }
    print(json.dumps(report, indent=2))
    print(
        f"\n{len(texts)} SciFact texts, {report['tokens_mean']:.0f} tokens on average (max "
        f"{report['tokens_max']}), {args.threads} threads; numpy fp32 peak {peak:.1f} GFLOP/s"
    )
    print(
        f"{'engine':<9}{'batch':>6}{'sent/s':>9}{'vs torch':>10}{'GFLOP/s':>9}"
        f"{'of peak':>9}{'padding':>9}{'min cos':>10}"
    )
    for r in rows:
        cos = f"{r['min_cosine_to_pytorch']:.5f}" if "min_cosine_to_pytorch" in r else ""
        print(
            f"{r['engine']:<9}{r['batch']:>6}{r['sentences_per_s']:>9.1f}{r['vs_pytorch']:>9.2f}x"
            f"{r['gflops']:>9.1f}{r['share_of_peak']:>8.0%}{r['padding_waste']:>8.1%}{cos:>10}"
        )


if __name__ == "__main__":
    main()
