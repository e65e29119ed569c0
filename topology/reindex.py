"""The life of a passage index: re-embed every passage with a new document encoder into a
new collection while the old one serves, check both against a golden set, switch the
alias in one call, and roll it back (`llmops reindex`). Each step is an IndexChange event
on the index-changes topic, which the analytics process stores as a row.

Sequence: the configured name becomes an alias if it is a plain collection
(connectors.milvus_aliases.make_alias); the new collection is filled from the one the
alias points at (resumable: chunk ids are stable), then once more for the passages
ingested meanwhile; the gate scores nDCG@10 of the golden set on each collection, each
searched with the query encoder that belongs with it; the alias moves only if the new
score is at least the old one minus the margin."""

from __future__ import annotations

import asyncio
import getpass
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.evaluation import GoldenCase, documents_in_order, ndcg_at
from connectors.embedder import OnnxEmbedder
from connectors.kafka import KafkaSettings, Publisher
from connectors.milvus import MilvusSettings, MilvusStore
from connectors.milvus_aliases import Switched, make_alias, rollback, switch
from connectors.milvus_reindex import reembed_collection
from schemas import new_id
from schemas.errors import PermanentError
from schemas.indexes import (
    GateJudged,
    IndexChange,
    IndexRolledBack,
    IndexSwitched,
    ReindexCompleted,
    ReindexProgressed,
    ReindexStarted,
)
from schemas.queries import RetrievalMode
from topology.settings import Settings

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0
GATE_DEPTH = 100  # passages per golden question (a document ranks where its best chunk does)


def actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def passes(source_score: float, target_score: float, margin: float) -> bool:
    """The gate: the new index may score lower than the old one by at most `margin`."""
    return target_score >= source_score - margin


def target_name(alias: str, encoder: str, fingerprint: str) -> str:
    """The default collection to fill: named by the alias and the encoder's fingerprint,
    so running the same re-index again after a crash resumes it."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", encoder).strip("_").lower()
    return f"{alias}_{slug}_{fingerprint[:8]}"


class Announcer:
    """Publishes each step on the index-changes topic. A broker that cannot be reached is
    said once and does not stop the re-index: the collections are the source of truth,
    the events their record."""

    def __init__(self, kafka: KafkaSettings, say: Callable[[str], None], timeout_s: float = 10.0) -> None:
        self._kafka, self._say, self._timeout = kafka, say, timeout_s
        self._down = False
        self.sent: list[IndexChange] = []

    def __call__(self, event: IndexChange) -> None:
        self.sent.append(event)
        if self._down:
            return
        try:
            asyncio.run(asyncio.wait_for(self._publish(event), self._timeout))
        except Exception as exc:  # noqa: BLE001  # any failure to reach the broker
            self._down = True
            self._say(f"warning: index change events not published ({type(exc).__name__}: {exc})")

    async def _publish(self, event: IndexChange) -> None:
        publisher = Publisher(self._kafka, client_id="llmops-reindex")
        await publisher.start()
        try:
            payload = event.model_dump_json().encode()
            await publisher.publish(self._kafka.topics.index_changes, [(event.change_id.encode(), payload)])
        finally:
            await publisher.stop()


def golden_score(
    settings: Settings,
    collection: str,
    encoder: str,
    cases: Sequence[GoldenCase],
    tenant: str,
    mode: RetrievalMode,
) -> float:
    """Mean nDCG@10 of the golden cases on one collection, searched by its own name with
    the query tower of `encoder`."""
    tower = OnnxEmbedder(settings.embedding.model_copy(update={"query_encoder": encoder}), "query")
    tower.open()
    store = MilvusStore(settings.milvus.model_copy(update={"collection": collection}), reader=tower)
    store.open()
    try:
        scores: list[float] = []
        for start in range(0, len(cases), 64):
            batch = cases[start : start + 64]
            questions = [c.question for c in batch]
            vectors = tower.embed(questions).tolist()
            found = store.search(vectors, tenant, GATE_DEPTH, texts=questions, mode=mode)
            for case, f in zip(batch, found, strict=True):
                scores.append(ndcg_at(documents_in_order([h.doc_id for h in f.hits]), case.relevant))
    finally:
        store.close()
    return sum(scores) / len(scores)


@dataclass(frozen=True)
class Gate:
    cases: Sequence[GoldenCase]
    tenant: str
    margin: float
    mode: RetrievalMode


@dataclass
class Outcome:
    change_id: str
    source: str
    target: str
    embedded: int = 0
    present: int = 0
    rows_per_s: float = 0.0
    seconds: float = 0.0
    verdict: GateJudged | None = None
    switched: Switched | None = None


def reindex(
    settings: Settings,
    model: str,
    *,
    target: str | None,
    gate: Gate | None,
    announce: Callable[[IndexChange], None],
    progress: Callable[[int, int], None] = lambda done, total: None,
    say: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Fill a new collection with `model`'s document tower, gate it, switch the alias
    (no gate: `gate` None). Raises PermanentError when the gate refuses, after announcing
    its verdict; the new collection is kept, the alias unchanged."""
    tower = OnnxEmbedder(settings.embedding.model_copy(update={"document_encoder": model}), "document")
    tower.open()
    admin = MilvusStore(settings.milvus)
    admin.open()
    try:
        current = make_alias(admin)
        if current.record is not None and current.record.fingerprint == tower.record().fingerprint:
            raise PermanentError(
                f"{current.name!r} points at {current.collection!r}, filled by {model} already: nothing to do"
            )
        name = target or target_name(current.name, tower.name, tower.record().fingerprint)
        outcome = Outcome(new_id(), current.collection, name)
        source_encoder = current.record.name if current.record else ""

        def change(kind: type[IndexChange], **fields: Any) -> IndexChange:
            event = kind(
                trace_id=outcome.change_id,
                producer="reindex",
                change_id=outcome.change_id,
                alias=current.name,
                source=current.collection,
                target=name,
                encoder=tower.name,
                source_encoder=source_encoder,
                actor=actor(),
                **fields,
            )
            announce(event)
            return event

        total = admin.count()
        change(ReindexStarted, rows_total=total)
        _fill(settings.milvus, current.collection, name, tower, total, outcome, change, progress)
        change(
            ReindexCompleted,
            rows_done=outcome.embedded,
            rows_total=outcome.embedded + outcome.present,
            rows_per_s=outcome.rows_per_s,
            seconds=outcome.seconds,
        )
        scores: dict[str, float] = {}
        if gate is not None:
            say(f"gate: {len(gate.cases)} golden questions ({gate.mode}) on {current.collection} and {name}")
            old = golden_score(
                settings, current.collection, source_encoder or tower.name, gate.cases, gate.tenant, gate.mode
            )
            new = golden_score(settings, name, tower.name, gate.cases, gate.tenant, gate.mode)
            scores = {"source_score": old, "target_score": new}
            verdict = passes(old, new, gate.margin)
            outcome.verdict = change(  # type: ignore[assignment]
                GateJudged,
                metric="ndcg_at_10",
                margin=gate.margin,
                queries=len(gate.cases),
                passed=verdict,
                **scores,
            )
            if not verdict:
                raise PermanentError(
                    f"the gate refused {name}: nDCG@10 {new:.4f} against {old:.4f} on {current.collection}, "
                    f"worse by more than the margin {gate.margin}; {current.name!r} still points at "
                    f"{current.collection!r} (the new collection is kept: drop it or re-index again)"
                )
        outcome.switched = switch(admin, name)
        change(IndexSwitched, switch_ms=outcome.switched.took_ms, **scores)
        return outcome
    finally:
        admin.close()


def _fill(
    milvus: MilvusSettings,
    source: str,
    target: str,
    tower: OnnxEmbedder,
    total: int,
    outcome: Outcome,
    change: Callable[..., IndexChange],
    progress: Callable[[int, int], None],
) -> None:
    """Re-embed `source` into `target`, then once more for what was ingested meanwhile
    (only the missing passages are embedded)."""
    reader = MilvusStore(milvus.model_copy(update={"collection": source}))
    writer = MilvusStore(milvus.model_copy(update={"collection": target}))
    reader.open()
    writer.open()
    started = last = time.monotonic()
    done = 0

    def step(n: int) -> None:
        nonlocal done, last
        done += n
        progress(n, total)
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            rate = done / max(last - started, 1e-9)
            change(ReindexProgressed, rows_done=done, rows_total=total, rows_per_s=rate)

    try:
        embedded, present = reembed_collection(reader, writer, tower, progress=step)
        caught_up, _ = reembed_collection(reader, writer, tower)
    finally:
        reader.close()
        writer.close()
    outcome.seconds = time.monotonic() - started
    outcome.embedded, outcome.present = embedded + caught_up, present
    outcome.rows_per_s = outcome.embedded / max(outcome.seconds, 1e-9)


def roll_back(settings: Settings, announce: Callable[[IndexChange], None]) -> Switched:
    """Point the alias back at the collection the current one replaced."""
    admin = MilvusStore(settings.milvus)
    admin.open()
    try:
        before = admin.current()
        switched = rollback(admin)
        after = admin.current()
        announce(
            IndexRolledBack(
                trace_id=(change_id := new_id()),
                producer="reindex",
                change_id=change_id,
                alias=switched.alias,
                source=switched.before,
                target=switched.after,
                encoder=after.record.name if after.record else "",
                source_encoder=before.record.name if before.record else "",
                actor=actor(),
                switch_ms=switched.took_ms,
            )
        )
        return switched
    finally:
        admin.close()


def describe_index(settings: Settings) -> list[str]:
    """Lines: what the alias points at, what each collection records, what is kept."""
    admin = MilvusStore(settings.milvus)
    admin.open()
    try:
        current = admin.current()
        lines = [
            f"{current.name} -> {current.collection}"
            + ("" if current.aliased else " (a plain collection: the first version)"),
            f"  filled by {current.record.name if current.record else 'an unrecorded encoder'}, "
            f"{admin.count()} passages",
        ]
        if current.previous:
            kept = admin.record_of(current.previous)
            lines.append(
                f"  replaced {current.previous} ({kept.name if kept else 'unrecorded'}), kept for --rollback"
            )
        return lines
    finally:
        admin.close()
