"""False-alarm rate and detection delay of the monitor's drift checks, on real text
through the real pipeline.

    python -m benchmarks.drift_detection --data ../shared/data/scifact [--window 5] [--stable 40]

Starts the embedded stack (Tansu, Milvus Lite, the analytics process, a worker), indexes
300 SciFact abstracts, then asks SciFact claims, several at a time, for --stable windows
drawn uniformly from all 1,109 claims (about 11% of them are about cancer), then for
--shifted windows with the topic mix moved: 60% cancer claims. Every query makes the
whole trip (embedding, retrieval, generation, telemetry into chDB). Afterwards the
monitor's own `evaluate` runs over each stored window with a trailing reference, with
the default thresholds and a stricter and a looser variant, and we count:

- false alarms: stable windows in which a drift check fired, over stable windows
  evaluated (those with a full reference);
- detection delay: shifted windows until the embedding-drift check first fired.

Prints JSON and a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agents.monitor import Monitor, MonitorSettings, Window
from benchmarks.ask_latency import machinery_settings
from connectors.analytics import Analytics
from connectors.clickhouse import ChdbStore, ClickHouseSettings
from connectors.client import Client
from topology.report import text_table
from topology.settings import Settings
from topology.stack import LocalStack

CANCER = re.compile(r"cancer|tumou?r|carcinoma|oncogen|metasta|leukemia|lymphoma|melanoma", re.I)
DRIFT_CHECKS = ("embedding_drift", "retrieval_top1", "retrieval_empty", "answer_length", "citation_rate")


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


async def stream(
    settings: Settings, claims: list[str], cancer: list[str], args: argparse.Namespace
) -> datetime:
    """Ask until the stable and the shifted phases are over; returns when the shift began
    (a window boundary)."""
    rng = random.Random(7)
    async with Client(settings, producer_name="drift-bench") as client:
        now = time.time()
        start = (now // args.window + 1) * args.window
        await asyncio.sleep(start - now)
        shift_at = start + args.stable * args.window
        end = shift_at + args.shifted * args.window
        asked = 0
        while time.time() < end:
            shifted = time.time() >= shift_at
            batch = [
                rng.choice(cancer) if shifted and rng.random() < args.share else rng.choice(claims)
                for _ in range(args.concurrency)
            ]
            await asyncio.gather(*(client.ask(q, timeout=60) for q in batch))
            asked += len(batch)
        print(f"asked {asked} claims in {end - start:.0f}s")
        return datetime.fromtimestamp(shift_at, UTC)


async def evaluate(
    path: Path, shift_at: datetime, args: argparse.Namespace, settings: MonitorSettings
) -> dict:
    store = ChdbStore(ClickHouseSettings(path=path))
    await store.open()
    try:
        monitor = Monitor(Analytics(store), settings)
        size = timedelta(seconds=args.window)
        first = shift_at - size * args.stable
        fired: dict[str, list[int]] = {c: [] for c in DRIFT_CHECKS}
        stable_evaluated = 0
        delay = None
        for k in range(args.reference, args.stable + args.shifted):
            w = Window(first + size * k, first + size * (k + 1))
            findings = {f.check: f for f in await monitor.evaluate(w) if f.check in DRIFT_CHECKS}
            stable = k < args.stable
            stable_evaluated += stable
            for check, finding in findings.items():
                if finding.firing:
                    fired[check].append(k - args.stable)
            embedding = findings.get("embedding_drift")
            if not stable and delay is None and embedding is not None and embedding.firing:
                delay = k - args.stable
        return {
            "stable_windows_evaluated": stable_evaluated,
            "false_alarm_rate": {c: sum(1 for k in v if k < 0) / stable_evaluated for c, v in fired.items()},
            "embedding_detection_delay_windows": delay,
            "shifted_windows_firing": {c: sum(1 for k in v if k >= 0) for c, v in fired.items()},
        }
    finally:
        await store.close()


async def feed(
    settings: Settings, docs: list[dict], claims: list[str], cancer: list[str], args: argparse.Namespace
) -> datetime:
    async with Client(settings, producer_name="drift-bench") as client:
        await client.ingest(docs, timeout=900)
    shift_at = await stream(settings, claims, cancer, args)
    await asyncio.sleep(3)  # the sink's last batch
    return shift_at


def main(args: argparse.Namespace) -> dict:
    claims = [q["text"] for q in load(args.data / "queries.jsonl")]
    cancer = [c for c in claims if CANCER.search(c)]
    corpus = load(args.data / "corpus.jsonl")[:300]
    docs = [{"doc_id": d["_id"], "title": d["title"], "text": d["text"]} for d in corpus]
    base = machinery_settings()
    with tempfile.TemporaryDirectory(prefix="llmops-drift-") as tmp:
        stack_cfg = base.stack.model_copy(update={"data_dir": Path(tmp), "broker_port": 0, "milvus_port": 0})
        settings = base.model_copy(
            update={"stack": stack_cfg, "analytics": base.analytics.model_copy(update={"port": 0})}
        )
        with LocalStack(settings) as stack:  # LocalStack runs its own event loops: not inside one
            shift_at = asyncio.run(feed(stack.settings, docs, claims, cancer, args))
        default = MonitorSettings(window_s=args.window, reference_windows=args.reference)
        variants = {
            "default (alpha 0.01, min centroid distance 0.02)": default,
            "stricter (alpha 0.001, 0.03)": default.model_copy(
                update={"alpha": 0.001, "min_centroid_distance": 0.03}
            ),
            "looser (alpha 0.05, 0.01)": default.model_copy(
                update={"alpha": 0.05, "min_centroid_distance": 0.01}
            ),
        }
        results = {
            name: asyncio.run(evaluate(stack.settings.clickhouse.path, shift_at, args, monitor_settings))
            for name, monitor_settings in variants.items()
        }
    return {
        "window_s": args.window,
        "reference_windows": args.reference,
        "stable_windows": args.stable,
        "shifted_windows": args.shifted,
        "cancer_share": {"stable": len(cancer) / len(claims), "shifted": args.share},
        "results": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="BEIR SciFact directory")
    parser.add_argument("--window", type=int, default=5, help="window length, seconds")
    parser.add_argument("--reference", type=int, default=6, help="trailing windows in the reference")
    parser.add_argument("--stable", type=int, default=40, help="windows before the shift")
    parser.add_argument("--shifted", type=int, default=12, help="windows after the shift")
    parser.add_argument("--share", type=float, default=0.6, help="share of cancer claims after the shift")
    parser.add_argument("--concurrency", type=int, default=8, help="asks in flight")
    result = main(parser.parse_args())
    print(json.dumps(result, indent=2))
    rows = []
    for name, r in result["results"].items():
        far = r["false_alarm_rate"]
        rows.append(
            [
                name,
                f"{far['embedding_drift']:.1%}",
                f"{max(v for k, v in far.items() if k != 'embedding_drift'):.1%}",
                r["embedding_detection_delay_windows"],
                f"{r['shifted_windows_firing']['embedding_drift']}/{result['shifted_windows']}",
            ]
        )
    print()
    headers = (
        "thresholds",
        "false alarms: embedding",
        "other drift (max)",
        "delay (windows)",
        "shifted firing",
    )
    print(text_table(headers, rows))
