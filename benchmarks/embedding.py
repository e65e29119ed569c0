"""Embedding throughput and quality per precision: our ONNX embedder against
sentence-transformers (PyTorch), and both against the machine's fp32 matrix-multiply peak
measured in the same run.

    python -m benchmarks.embedding --data ../shared/data/scifact [--texts 2000] [--runs 3]
        [--precisions fp32,int8] [--quality]
    python -m benchmarks.embedding --data DIR --device cuda --precisions fp32,fp16 --no-pytorch

Texts: the first half of `--texts` SciFact claims (short) and the first half abstracts
("title text", long), so lengths vary as they do in use. Every engine gets the same thread
count (`--threads`, default all cores), the same 256-token truncation and the same batch
sizes. Per engine and batch size: sentences per second (median of `--runs`), the ratio to
the baseline (PyTorch on CPU; with --no-pytorch, ONNX fp32 on CPU), and achieved GFLOP/s:
the FLOPs the model needs for the texts' real tokens (no padding counted) over the wall
time, tokenisation included, against numpy's fp32 matmul peak with the same threads (on
CUDA, against torch's fp32 and fp16 matmul peak on the GPU). Also: the share of executed
FLOPs that padding wasted, and the cosine of each embedding to the reference (PyTorch, else
ONNX fp32 on CPU). With int8: ONNX Runtime's int8 GEMM against its fp32 GEMM on the model's
layer shapes, the ceiling of what int8 can gain here. `--quality` embeds the whole corpus
and the test queries at each precision and reports nDCG@10 of exact search. Prints JSON
and a table."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import load_beir, ndcg_at
from connectors.embedder import EmbeddingSettings, OnnxEmbedder
from connectors.model_precision import PRECISIONS, Precision, derive

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
    with threadpool_limits(threads):
        a @ b  # warm-up
        best = best_seconds(lambda: a @ b, repeats)
    return 2 * size**3 / best / 1e9


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` calls of `run`: the machine's ceiling, not its noise."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def ort_matmul_ratio(
    threads: int, tokens: int = 1024, repeats: int = 10, rounds: int = 5
) -> dict[str, float]:
    """ONNX Runtime's own int8 GEMM (MatMulInteger, uint8 x int8) against its fp32 MatMul on
    this CPU, over the model's layer shapes weighted by their FLOPs: the most an int8 model
    can gain here before quantising activations and the ops that stay fp32."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1

    def session(k: int, n: int, int8: bool) -> Callable[[], object]:
        kind = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32) if int8 else (TensorProto.FLOAT,) * 3
        weights = rng.integers(-127, 127, (k, n), dtype=np.int8) if int8 else rng.standard_normal((k, n))
        weights = weights.astype(np.int8 if int8 else np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger" if int8 else "MatMul", ["a", "w"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("a", kind[0], [tokens, k])],
            [helper.make_tensor_value_info("y", kind[2], [tokens, n])],
            initializer=[helper.make_tensor("w", kind[1], [k, n], weights.tobytes(), raw=True)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        a = rng.integers(0, 255, (tokens, k), dtype=np.uint8) if int8 else rng.standard_normal((tokens, k))
        feed = {"a": a if int8 else a.astype(np.float32)}
        sess.run(None, feed)
        return lambda: sess.run(None, feed)

    # Per layer: Q, K, V and the output projection (384x384 each), FFN up and down.
    shapes = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, FFN), (FFN, HIDDEN)]
    fp32_runs = [session(k, n, False) for k, n in shapes]
    int8_runs = [session(k, n, True) for k, n in shapes]
    fp32, int8 = [], []
    for _ in range(rounds):  # interleaved: a drift in the machine's load hits both alike
        fp32.append(sum(best_seconds(r, repeats) for r in fp32_runs))
        int8.append(sum(best_seconds(r, repeats) for r in int8_runs))
    work = sum(2 * tokens * k * n for k, n in shapes)
    return {
        "fp32_gflops": work / statistics.median(fp32) / 1e9,
        "int8_gops": work / statistics.median(int8) / 1e9,
        "int8_vs_fp32": statistics.median(f / i for f, i in zip(fp32, int8, strict=True)),
    }


def gpu_matmul_peaks(size: int = 8192, repeats: int = 10) -> dict[str, float]:
    """torch's fp32 (no TF32) and fp16 matmul GFLOP/s on the GPU; empty without one."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    torch.backends.cuda.matmul.allow_tf32 = False
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        a = torch.randn(size, size, device="cuda", dtype=dtype)
        b = torch.randn(size, size, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        torch.cuda.synchronize()
        peaks[name] = 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9
    return peaks


def timed(fn: Callable[[], np.ndarray], runs: int) -> tuple[float, np.ndarray]:
    times, result = [], np.zeros(0)
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def onnx_embedder(settings: EmbeddingSettings, **update: Any) -> OnnxEmbedder:
    embedder = OnnxEmbedder(settings.model_copy(update=update))
    embedder.open()
    embedder.embed(["warm-up"] * 8)  # CUDA allocates and picks kernels on first use
    return embedder


def exact_ndcg(embed: Callable[[list[str]], np.ndarray], data: Path) -> float:
    """nDCG@10 of exact cosine search over the whole corpus, on the test queries."""
    doc_ids, texts, qids, questions, qrels = load_beir(data)
    corpus, queries = embed(texts), embed(questions)
    top = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    return statistics.mean(
        ndcg_at([doc_ids[i] for i in row], qrels[q]) for row, q in zip(top, qids, strict=True)
    )


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
    parser.add_argument(
        "--precisions", default="fp32,int8", help=f"comma-separated, of {', '.join(PRECISIONS)}"
    )
    parser.add_argument("--no-pytorch", action="store_true", help="baseline is ONNX fp32 on CPU")
    parser.add_argument("--quality", action="store_true", help="nDCG@10 of exact search per precision")
    parser.add_argument("--model-dir", type=Path, help="default: embedding.model_dir's default")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    precisions: list[Precision] = [p for p in PRECISIONS if p in args.precisions.split(",")]

    texts = load_texts(args.data, args.texts)
    base = EmbeddingSettings(threads=args.threads, device="cpu")
    if args.model_dir:
        base = base.model_copy(update={"model_dir": args.model_dir})
    for precision in precisions:
        derive(base.model_dir, precision)  # once; `llmops model export --precision P` does the same
    probe = onnx_embedder(base)
    lengths = probe.count_tokens(texts)
    useful = sum(flops(n) for n in lengths)

    # engine -> batch size -> embed function; the first engine is the baseline and the
    # reference for cosines.
    engines: dict[str, Callable[[int], Callable[[list[str]], np.ndarray]]] = {}
    if not args.no_pytorch:
        import torch
        from sentence_transformers import SentenceTransformer

        from connectors.model_export import bundled_weights

        torch.set_num_threads(args.threads)
        reference_model = SentenceTransformer(str(bundled_weights()), device="cpu")
        reference_model.max_seq_length = 256
        engines["pytorch cpu fp32"] = lambda b: (
            lambda t: reference_model.encode(t, batch_size=b, normalize_embeddings=True)
        )
    if args.no_pytorch or args.device == "cuda":
        engines["onnx cpu fp32"] = lambda b: onnx_embedder(base, batch_size=b).embed
    for precision in precisions:
        name = f"onnx {args.device} {precision}"
        engines.setdefault(
            name,
            lambda b, p=precision: onnx_embedder(base, batch_size=b, precision=p, device=args.device).embed,
        )

    peak = matmul_peak(args.threads)
    gpu_peaks = gpu_matmul_peaks() if args.device == "cuda" else {}
    ort_gemm = ort_matmul_ratio(args.threads) if "int8" in precisions else {}
    rows: list[dict[str, Any]] = []
    for batch in batches:
        baseline_s, reference = None, None
        for engine, make in engines.items():
            embed = make(batch)
            seconds, out = timed(lambda e=embed: e(texts), args.runs)  # type: ignore[misc]
            baseline_s, reference = baseline_s or seconds, reference if reference is not None else out
            cosine = np.sum(out * reference, axis=1)
            device, precision = engine.split()[1:]
            ceiling = (
                gpu_peaks.get(precision if precision == "fp16" else "fp32") if device == "cuda" else peak
            )
            rows.append(
                {
                    "engine": engine,
                    "batch": batch,
                    "sentences_per_s": len(texts) / seconds,
                    "gflops": useful / seconds / 1e9,
                    "share_of_peak": useful / seconds / 1e9 / ceiling if ceiling else None,
                    "padding_waste": 1 - useful / padded_flops(lengths, batch),
                    "vs_baseline": baseline_s / seconds,
                    "min_cosine": float(cosine.min()),
                    "mean_cosine": float(cosine.mean()),
                }
            )
    quality = {}
    if args.quality:
        best = {
            p: max((r for r in rows if r["engine"].endswith(p)), key=lambda r: r["sentences_per_s"])
            for p in precisions
        }
        for precision in precisions:
            engine = onnx_embedder(
                base, batch_size=best[precision]["batch"], precision=precision, device=args.device
            )
            quality[precision] = exact_ndcg(engine.embed, args.data)
    report = {
        "texts": len(texts),
        "tokens_mean": statistics.mean(lengths),
        "tokens_max": max(lengths),
        "threads": args.threads,
        "device": args.device,
        "numpy_fp32_peak_gflops": peak,
        "gpu_peak_gflops": gpu_peaks,
        "ort_cpu_gemm": ort_gemm,
        "useful_gflop": useful / 1e9,
        "runs": args.runs,
        "results": rows,
        "exact_ndcg_at_10": quality,
    }
    print(json.dumps(report, indent=2))
    print(
        f"\n{len(texts)} SciFact texts, {report['tokens_mean']:.0f} tokens on average (max "
        f"{report['tokens_max']}), {args.threads} threads; numpy fp32 peak {peak:.1f} GFLOP/s"
        + "".join(f"; GPU {k} peak {v / 1000:.0f} TFLOP/s" for k, v in gpu_peaks.items())
        + (
            f"; ONNX Runtime int8 GEMM {ort_gemm['int8_vs_fp32']:.2f}x its fp32 GEMM on the model's shapes"
            if ort_gemm
            else ""
        )
    )
    print(
        f"{'engine':<18}{'batch':>6}{'sent/s':>10}{'vs base':>9}{'GFLOP/s':>10}"
        f"{'of peak':>9}{'padding':>9}{'min cos':>10}"
    )
    for r in rows:
        share = f"{r['share_of_peak']:.0%}" if r["share_of_peak"] is not None else "-"
        print(
            f"{r['engine']:<18}{r['batch']:>6}{r['sentences_per_s']:>10.1f}{r['vs_baseline']:>8.2f}x"
            f"{r['gflops']:>10.1f}{share:>9}{r['padding_waste']:>8.1%}{r['min_cosine']:>10.5f}"
        )
    for precision, ndcg in quality.items():
        print(f"exact search nDCG@10 with {precision} embeddings: {ndcg:.4f}")


if __name__ == "__main__":
    main()
