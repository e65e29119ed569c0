"""The life of a passage index on real parts (Tansu, Milvus Lite server, the ONNX models):
an alias switch from MiniLM to e5-small-v2 while questions keep coming (none fails, none
mixes encoders, readers move without a restart), the rollback, the events and rows of
each step, the gate refusing a worse index, and a re-index resumed after SIGKILL.

e5-small-v2 comes from its Maven Central jar (skipped without java/mvn, as in
test_encoders.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from agents.index_changes import decode_change
from connectors.analytics import Analytics
from connectors.analytics.index_changes import recent_changes
from connectors.client import Client
from connectors.embedder import OnnxEmbedder, towers
from connectors.encoders import CATALOGUE, MANIFEST, fetch
from connectors.kafka import librdkafka_config
from connectors.milvus import Chunk, MilvusStore, content
from schemas.indexes import GateJudged, IndexChange, IndexRolledBack, IndexSwitched, ReindexCompleted
from tests.integration.conftest import require_java, stack_settings
from tests.integration.test_cli import ROOT, llmops
from topology.samples import python_reference
from topology.settings import Settings
from topology.stack import LocalStack

DOCS = {d["doc_id"]: d for d in python_reference()}
NAMES = ["lambda", "yield", "assert", "nonlocal", "for", "break", "while", "global", "try", "import"]
NAMES += ["raise", "with", "in", "booleans", "power", "slicings", "del", "return", "continue", "if"]
LATE = "pass"  # ingested after the switch: the indexing stage writes through the alias too
# Each asker's pause between questions: the checks need answers in every phase, not as many
# as the pipeline can give; asked back to back they only cost CPU on a two-core machine.
PACE_S = 0.2
QUESTIONS = [
    "How do I write a small anonymous function?",
    "How does a generator produce values one at a time?",
    "How do I repeat a block as long as a condition holds?",
    "How can I catch an exception and clean up afterwards?",
    "How do I load a module from another file?",
    "How do I leave a loop early?",
    "What does the del statement do?",
    "How do I raise an exception?",
]


@pytest.fixture(scope="module")
def e5(base_settings: Settings) -> Path:
    require_java("encoders from Maven Central")
    return fetch("e5-small-v2", base_settings.embedding.models_dir)


def golden_file(directory: Path, names: list[str]) -> Path:
    """The repository's golden questions about the documents these tests index."""
    held = {f"pydoc-{n}" for n in names}
    lines = [
        line
        for line in (ROOT / "benchmarks" / "golden" / "answers.jsonl").read_text().splitlines()
        if line.strip() and set(json.loads(line)["doc_ids"]) <= held
    ]
    path = directory / "golden.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def tower_pair(settings: Settings, name: str) -> tuple[OnnxEmbedder, OnnxEmbedder]:
    """Both towers of one encoder over one loaded model."""
    update = {"query_encoder": name, "document_encoder": name}
    query, document = towers(settings.embedding.model_copy(update=update))
    query.open()
    document.open()
    return query, document


@dataclass
class Asked:
    sent: float
    done: float
    question: str
    passages: list[tuple[str, float]] = field(default_factory=list)  # (chunk id, score)
    error: str = ""


class AliasWatch:
    """Polls what the collection name points at: when the switch and the rollback were seen."""

    def __init__(self, store: MilvusStore) -> None:
        self._store, self.seen = store, []  # (monotonic time, collection)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AliasWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now, collection = time.monotonic(), self._store.current().collection
            if not self.seen or self.seen[-1][1] != collection:
                self.seen.append((now, collection))
            time.sleep(0.02)


def read_changes(stack: LocalStack) -> list[IndexChange]:
    topic = stack.settings.kafka.topics.index_changes
    consumer = Consumer(
        librdkafka_config(
            stack.settings.kafka, **{"group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    # Every event is on the broker already (the CLI published each before it exited): read
    # each partition up to the end it has now.
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found, deadline = [], time.monotonic() + 30
    read = {p: 0 for p in partitions}
    while any(read[p] < ends[p] for p in partitions) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            read[message.partition() or 0] = (message.offset() or 0) + 1
            found.append(decode_change(message.value()))
    consumer.close()
    return sorted(found, key=lambda e: e.occurred_at)


@pytest.mark.timeout(600)
def test_the_alias_switch_under_load_loses_no_question_and_never_mixes_encoders(
    base_settings: Settings, e5: Path, tmp_path_factory: pytest.TempPathFactory
):
    """Questions are asked without pause while `llmops reindex --model e5-small-v2` fills
    the new collection, gates it and switches the alias, and while `--rollback` switches
    it back. Every answer's passage scores equal the inner products of one encoder pair
    (MiniLM question with MiniLM passages, or e5 with e5): none is mixed. Answers asked
    after the switch come from e5, without a worker restart or a setting, once the query
    side's reading of the alias is older than LLMOPS_MILVUS__ALIAS_CHECK_S."""
    data_dir = tmp_path_factory.mktemp("lifecycle")
    owner = f"life-{uuid.uuid4().hex[:8]}"
    golden = golden_file(data_dir, NAMES)
    with LocalStack(stack_settings(base_settings, data_dir)) as stack:
        env = stack.env()
        # The worker's query side may answer from the replaced collection this long after a
        # switch, as for a question in flight during it.
        reused_s = stack.settings.milvus.alias_check_s
        admin = MilvusStore(stack.settings.milvus)
        admin.open()
        asked: list[Asked] = []
        timings: dict[str, float] = {}

        async def answers_sent_after(since: float, n: int = 10) -> None:
            """Wait until `n` questions sent after `since` have come back (answered or not):
            each phase of the switch gets answers, however fast the machine is."""
            deadline = time.monotonic() + 120
            while sum(1 for a in asked if a.sent > since) < n:
                assert time.monotonic() < deadline, f"fewer than {n} answers since the last step"
                await asyncio.sleep(0.05)

        async def ask_until(stop: asyncio.Event, client: Client) -> None:
            i = 0
            while not stop.is_set():
                question = QUESTIONS[i % len(QUESTIONS)]
                i += 1
                sent = time.monotonic()
                try:
                    answer = await client.ask(
                        question, tenant=owner, top_k=3, retrieval_mode="dense", timeout=60
                    )
                    passages = [(p.id, p.score) for p in answer.passages]
                    asked.append(Asked(sent, time.monotonic(), question, passages))
                except Exception as exc:  # noqa: BLE001  # every failure is counted
                    asked.append(
                        Asked(sent, time.monotonic(), question, error=f"{type(exc).__name__}: {exc}")
                    )
                await asyncio.sleep(PACE_S)

        async def run_cli(*args: str) -> subprocess.CompletedProcess:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "topology.cli", *args, env=env, cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())

        async def scenario() -> tuple[subprocess.CompletedProcess, ...]:
            async with Client(stack.settings) as client:
                docs = [DOCS[f"pydoc-{n}"] for n in NAMES]
                assert all(d.chunks > 0 for d in await client.ingest(docs, tenant=owner))
                stop = asyncio.Event()
                askers = [asyncio.create_task(ask_until(stop, client)) for _ in range(2)]
                await answers_sent_after(0.0)
                began = timings["began"] = time.monotonic()
                switched = await run_cli(
                    "reindex", "--model", "e5-small-v2", "--golden", str(golden), "--tenant", owner,
                    "--margin", "1",
                )  # fmt: skip
                timings["reindex_s"] = time.monotonic() - began
                await answers_sent_after(time.monotonic() + reused_s)
                [late] = await client.ingest([DOCS[f"pydoc-{LATE}"]], tenant=owner)
                late_answer = await client.ask("What does the pass statement do?", tenant=owner, top_k=3)
                timings["late_found"] = float(any(p.doc_id == f"pydoc-{LATE}" for p in late_answer.passages))
                status = await run_cli("reindex", "--status")
                rolled = await run_cli("reindex", "--rollback")
                # (the check below counts answers sent that long after the rollback)
                await answers_sent_after(time.monotonic() + 0.5 + reused_s)
                stop.set()
                await asyncio.gather(*askers)
                return switched, status, rolled

        try:
            with AliasWatch(admin) as watch:
                switched, status, rolled = asyncio.run(scenario())
            assert switched.returncode == 0, switched.stderr[-2000:]
            assert rolled.returncode == 0, rolled.stderr[-2000:]
            current = admin.current()
            # The passages as stored (a response may carry the last one cut to fit the prompt).
            ids = sorted({pid for a in asked for pid, _ in a.passages})
            stored = {}
            for name in admin._call("list_collections"):
                expr = f"id in {json.dumps(ids)}"
                for row in admin._call(
                    "query", collection_name=name, filter=expr, output_fields=["title", "text"]
                ):
                    stored[str(row["id"])] = content(row["title"], row["text"])
            events = read_changes(stack)
            rows = asyncio.run(stored_rows(stack))
        finally:
            admin.close()

    collection = stack.settings.milvus.collection
    old, new = f"{collection}_v1", switched.stdout.split(f"{collection} -> ")[1].split()[0]
    # The plain collection became the alias's first version; the switch and the rollback seen.
    assert [c for _, c in watch.seen] == [collection, old, new, old] or [c for _, c in watch.seen] == [
        old,
        new,
        old,
    ]
    switch_at = next(t for t, c in watch.seen if c == new)
    back_at = next(t for t, c in reversed(watch.seen) if c == old)
    assert current.collection == old and current.previous == new
    assert "gate passed" in switched.stdout and f"{collection} -> {new}" in switched.stdout
    assert f"{collection} -> {new}" in status.stdout and "e5-small-v2" in status.stdout

    failed = [a for a in asked if a.error]
    assert not failed, failed[:3]
    settings = stack.settings
    pairs = {"minilm": tower_pair(settings, "all-MiniLM-L6-v2"), "e5": tower_pair(settings, "e5-small-v2")}

    questions = {
        name: dict(zip(QUESTIONS, q.embed(QUESTIONS), strict=True)) for name, (q, _) in pairs.items()
    }
    texts = sorted(stored)
    passages = {
        name: dict(zip(texts, d.embed([stored[t] for t in texts]), strict=True))
        for name, (_, d) in pairs.items()
    }

    def served_by(a: Asked) -> set[str]:
        scores = np.array([s for _, s in a.passages])
        fits = set()
        for name in pairs:
            expected = np.array([passages[name][pid] @ questions[name][a.question] for pid, _ in a.passages])
            # e5's int8 graph quantizes activations per batch, so its vectors move by a few
            # thousandths with the batch a text was embedded in; another pairing misses by tenths.
            if np.allclose(scores, expected, atol=0.03):
                fits.add(name)
        return fits

    verdicts = [(a, served_by(a)) for a in asked]
    assert all(len(fits) == 1 for _, fits in verdicts), [
        (a.question, fits) for a, fits in verdicts if len(fits) != 1
    ][:3]
    # Sent when the worker's reading of the alias can no longer predate the switch (and
    # before the rollback): e5; done before the switch: MiniLM.
    assert all(fits == {"e5"} for a, fits in verdicts if switch_at + reused_s < a.sent and a.done < back_at)
    assert all(
        fits == {"minilm"} for a, fits in verdicts if a.done < switch_at or a.sent > back_at + 0.5 + reused_s
    )
    assert any(fits == {"e5"} for _, fits in verdicts)
    # Questions were answered while the new collection was being filled and gated, too.
    assert any(timings["began"] < a.sent and a.done < switch_at for a in asked)
    assert timings["late_found"] == 1.0

    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "ReindexStarted" and kinds[-1] == "IndexRolledBack", kinds
    [completed] = [e for e in events if isinstance(e, ReindexCompleted)]
    [verdict] = [e for e in events if isinstance(e, GateJudged)]
    [switch] = [e for e in events if isinstance(e, IndexSwitched)]
    [back] = [e for e in events if isinstance(e, IndexRolledBack)]
    assert completed.rows_total == completed.rows_done > 0 and completed.rows_per_s > 0
    assert verdict.passed and verdict.queries > 0 and switch.target_score == verdict.target_score
    assert (switch.source, switch.target, switch.encoder) == (old, new, "e5-small-v2") and "@" in switch.actor
    assert (back.source, back.target) == (new, old)
    assert {r["event_type"] for r in rows} >= {
        "ReindexStarted",
        "GateJudged",
        "IndexSwitched",
        "IndexRolledBack",
    }
    e5_answers = [a for a, fits in verdicts if fits == {"e5"}]
    minilm_after = [a.done - switch_at for a, fits in verdicts if fits == {"minilm"} and a.sent < switch_at]
    last_old = max(minilm_after, default=0.0)
    print(
        f"\nre-index {timings['reindex_s']:.1f} s, {completed.rows_done} passages at "
        f"{completed.rows_per_s:.1f}/s; gate nDCG@10 {verdict.source_score:.4f} -> "
        f"{verdict.target_score:.4f} over {verdict.queries} questions; switch {switch.switch_ms:.1f} ms; "
        f"{len(asked)} answers, {len(failed)} failed, {len(e5_answers)} from e5; the last answer "
        f"from the old collection came {last_old:.2f} s after the switch"
    )


async def stored_rows(stack: LocalStack) -> list[dict]:
    """The index_changes rows, once the analytics process has stored the rollback's."""
    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        for _ in range(60):
            rows = await recent_changes(analytics)
            if any(r["event_type"] == "IndexRolledBack" for r in rows):
                return rows
            await asyncio.sleep(0.5)
        return rows
    finally:
        await analytics.close()


def minilm_collection(stack: LocalStack, embedder: OnnxEmbedder, collection: str, tenant: str) -> MilvusStore:
    store = MilvusStore(stack.settings.milvus.model_copy(update={"collection": collection}))
    store.open()
    store.ensure_collection(embedder.dim, filled_by=embedder.record())
    # Every reference document, its first 150 words: one passage each.
    texts = [(d, " ".join(DOCS[d]["text"].split()[:150])) for d in DOCS]
    vectors = embedder.embed([content(d, t) for d, t in texts])
    chunks = [
        Chunk(f"{collection}-{d}", tenant, d, 0, d, t, v) for (d, t), v in zip(texts, vectors, strict=True)
    ]
    store.upsert(chunks)
    return store


def test_the_gate_refuses_a_worse_index_and_a_rollback_restores_the_old_one(
    tansu_stack: LocalStack, embedder: OnnxEmbedder, e5: Path, tmp_path: Path
):
    """A deliberately bad encoder (e5-small-v2's files with the first token's vector
    instead of its mean pooling, installed by hand) fills a new collection; the gate
    scores it below MiniLM's and refuses: the alias stays. The real e5 passes the gate
    and is switched to; --rollback points the alias back at the kept MiniLM collection."""
    collection = f"gate_{uuid.uuid4().hex[:8]}"
    store = minilm_collection(tansu_stack, embedder, collection, "acme")
    models = tmp_path / "models"
    bad = models / "e5-cls"
    bad.mkdir(parents=True)
    for name in ("model.onnx", "tokenizer.json"):
        os.symlink(e5 / name, bad / name)
    spec = CATALOGUE["e5-small-v2"].model_copy(update={"name": "e5-cls", "pooling": "cls", "maven": ""})
    (bad / MANIFEST).write_text(json.dumps({"name": "e5-cls", "encoder": spec.model_dump()}))
    shutil.copytree(e5, models / "e5-small-v2")
    env = {
        **tansu_stack.env(),
        "LLMOPS_MILVUS__COLLECTION": collection,
        "LLMOPS_EMBEDDING__MODELS_DIR": str(models),
    }
    golden = golden_file(tmp_path, [d.removeprefix("pydoc-") for d in DOCS])
    gate = ["--golden", str(golden), "--tenant", "acme", "--mode", "dense"]
    try:
        refused = llmops("reindex", "--model", "e5-cls", *gate, env=env, timeout=300)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "the gate refused" in refused.stderr and f"still points at '{collection}_v1'" in refused.stderr
        assert store.current().collection == f"{collection}_v1"

        passed = llmops("reindex", "--model", "e5-small-v2", *gate, "--margin", "1", env=env, timeout=300)
        assert passed.returncode == 0, passed.stderr
        after = store.current()
        assert after.record is not None and after.record.name == "e5-small-v2"
        assert after.previous == f"{collection}_v1"

        back = llmops("reindex", "--rollback", env=env)
        assert back.returncode == 0, back.stderr
        restored = store.current()
        assert restored.collection == f"{collection}_v1" and restored.record == embedder.record()
        again = llmops("reindex", "--rollback", env=env)  # back to e5: the rollback is kept too
        assert again.returncode == 0 and store.current().collection == after.collection
    finally:
        for name in store._call("list_collections"):
            if name.startswith(collection):
                store._call("drop_collection", collection_name=name)
        store.close()


def test_a_reindex_killed_with_sigkill_resumes_where_it_stopped(tansu_stack: LocalStack):
    """`llmops reindex --model` killed (SIGKILL) after its first pages: run again, it embeds
    only the passages the new collection lacks, and ends with all of them."""
    suffix = uuid.uuid4().hex[:8]
    source = MilvusStore(tansu_stack.settings.milvus.model_copy(update={"collection": f"src_{suffix}"}))
    source.open()
    rng = np.random.default_rng(7)
    words = " ".join(DOCS["pydoc-compound"]["text"].split()[:2000]).split()
    total = 600
    try:
        source.ensure_collection(384)
        vectors = rng.normal(size=(total, 384)).astype(np.float32)
        chunks = [
            Chunk(f"{suffix}-{i}", "acme", f"doc-{i}", 0, f"t{i}", " ".join(words[i : i + 40]), vectors[i])
            for i in range(total)
        ]
        for start in range(0, total, 200):
            source.upsert(chunks[start : start + 200])
        target = MilvusStore(tansu_stack.settings.milvus.model_copy(update={"collection": f"dst_{suffix}"}))
        target.open()
        args = ["reindex", "--model", "all-MiniLM-L6-v2", "--from", f"src_{suffix}", "--to", f"dst_{suffix}"]
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "topology.cli", *args], env=tansu_stack.env(), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if target._call("has_collection", collection_name=f"dst_{suffix}") and target.count() >= 128:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the re-index ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        held = target.count()
        assert 0 < held < total
        done = llmops(*args, env=tansu_stack.env(), timeout=300)
        assert done.returncode == 0, done.stderr
        assert (
            f"{total - held} passages embedded (" in done.stdout
            and f"{held} were there already" in done.stdout
        )
        assert target.count() == total
        target.close()
    finally:
        for name in (f"src_{suffix}", f"dst_{suffix}"):
            source._call("drop_collection", collection_name=name)
        source.close()
