"""The life of a passage index: re-embed every passage with a new document encoder into a
new collection while the old one serves, check both against a golden set, switch the
alias in one call, and roll it back (`llmops reindex`). Each step is an IndexChange event
on the index-changes topic, which the analytics process stores as a row.

Sequence: the configured name becomes an alias if it is a plain collection
(connectors.milvus_aliases.make_alias); the new collection is filled from the one the
alias points at (resumable: chunk ids are stable), then once more for the passages
ingested meanwhile; the gate scores nDCG@10 of the golden set on each collection, each
searched with the query encoder that belongs with it; the alias moves only if the new
score is at least the old one minus the margin.

The prompt artifacts (`<collection>_artifacts`, embedded by the query tower) go the same
way beside the passages: their name becomes an alias too, a new version is filled with
the new encoder's query tower and switched just before the passages' alias. Just before
the switch each new collection is made equal to its source (what was added or changed
meanwhile embedded, what was deleted deleted; deletions during the re-index also reach
it at once, through FILLING_PROPERTY), and just after it, what the source took in the
last moment is copied. A rollback first brings the kept collections up to date the same
way, with their own encoders."""

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

from connectors.embedder import OnnxEmbedder, towers
from connectors.encoders import Side
from connectors.kafka import KafkaSettings, Publisher
from connectors.milvus import MilvusSettings, MilvusStore
from connectors.milvus_aliases import FILLING_PROPERTY, Current, Switched, make_alias, rollback, switch
from connectors.milvus_artifacts import MilvusArtifacts, artifacts_collection
from connectors.milvus_reindex import converge, kind_of, reembed_collection
from schemas import new_id
from schemas.errors import LLMOpsError, PermanentError
from schemas.indexes import (
    GateJudged,
    IndexChange,
    IndexRolledBack,
    IndexSwitched,
    ReindexCompleted,
    ReindexProgressed,
    ReindexStarted,
)
from topology.reindex_gate import Gate, golden_score, passes
from topology.settings import Settings

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0


def actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


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
    artifacts: Switched | None = None  # None: no artifacts collection
    artifacts_embedded: int = 0
    changed: int = 0  # rows embedded again just before the switch (added or changed meanwhile)
    removed: int = 0  # rows deleted from the new collections (withdrawn meanwhile)
    late: int = 0  # rows the sources took in the moment of the switch, copied after it


@dataclass(frozen=True)
class Pair:
    """One kind of collection moved by a re-index or rollback: the store on its alias,
    where the alias points, the collection to move it to, and the tower that fills it."""

    admin: MilvusStore
    current: Current
    target: str
    tower: OnnxEmbedder | None  # None: a collection that records no encoder, left as it is
    milvus: MilvusSettings

    def store(self, collection: str) -> MilvusStore:
        """A store on one version, by its own name, of the same kind."""
        if isinstance(self.admin, MilvusArtifacts):
            store: MilvusStore = MilvusArtifacts(self.milvus, collection=collection)
        else:
            store = MilvusStore(self.milvus.model_copy(update={"collection": collection}))
        store.open()
        return store

    def converge(self, source: str, target: str) -> tuple[int, int]:
        """Make `target` hold what `source` holds, embedded by the tower (added, changed
        and deleted rows). Returns (embedded, deleted)."""
        if self.tower is None:
            return 0, 0
        reader, writer = self.store(source), self.store(target)
        try:
            return converge(reader, writer, self.tower)
        finally:
            reader.close()
            writer.close()

    def copy_late(self, source: str, target: str) -> int:
        """Embed into `target` the rows `source` holds and `target` lacks (no others: the
        target is live and may hold newer versions)."""
        if self.tower is None:
            return 0
        reader, writer = self.store(source), self.store(target)
        try:
            return reembed_collection(reader, writer, self.tower, changed=False)[0]
        finally:
            reader.close()
            writer.close()

    def mark_filling(self, target: str) -> None:
        """Deletions through the alias also reach `target` ("" : no more)."""
        self.admin._call(
            "alter_collection_properties",
            collection_name=self.current.collection,
            properties={FILLING_PROPERTY: target},
        )


def open_towers(settings: Settings, encoder: str) -> dict[Side, OnnxEmbedder]:
    """Both towers of one encoder, one model loaded: passages are embedded by the
    document side, artifacts by the query side."""
    query, document = towers(
        settings.embedding.model_copy(update={"query_encoder": encoder, "document_encoder": encoder})
    )
    query.open()
    document.open()
    return {"query": query, "document": document}


def artifacts_admin(settings: Settings) -> MilvusArtifacts | None:
    """A store on the artifacts' name, or None when there is no artifacts collection."""
    store = MilvusArtifacts(settings.milvus)
    store.open()
    if store._call("has_collection", collection_name=store.collection):
        return store
    store.close()
    return None


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
    """Fill a new collection with `model`'s document tower (and a new artifacts
    collection with its query tower), gate it, switch the aliases (no gate: `gate` None).
    Raises PermanentError when the gate refuses, after announcing its verdict; the new
    collections are kept, the aliases unchanged."""
    both = open_towers(settings, model)
    tower = both["document"]
    admin = MilvusStore(settings.milvus)
    admin.open()
    arts_admin = artifacts_admin(settings)
    marked: list[Pair] = []
    try:
        current = make_alias(admin)
        if current.record is not None and current.record.fingerprint == tower.record().fingerprint:
            raise PermanentError(
                f"{current.name!r} points at {current.collection!r}, filled by {model} already: nothing to do"
            )
        name = target or target_name(current.name, tower.name, tower.record().fingerprint)
        passages = Pair(admin, current, name, tower, settings.milvus)
        pairs = [passages]
        arts = None
        if arts_admin is not None:
            arts_current = make_alias(arts_admin)
            query = both[kind_of(arts_admin).side]
            arts_name = (
                artifacts_collection(settings.milvus.model_copy(update={"collection": target}))
                if target
                else target_name(arts_current.name, query.name, query.record().fingerprint)
            )
            if (
                arts_current.record is not None
                and arts_current.record.fingerprint == query.record().fingerprint
            ):
                # A run that stopped between the two alias calls: the artifacts have moved.
                say(f"{arts_current.name} points at {arts_current.collection} ({model}) already")
            else:
                arts = Pair(arts_admin, arts_current, arts_name, query, settings.milvus)
                pairs.insert(0, arts)  # switched first: see _switch_all
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

        for pair in pairs:
            pair.mark_filling(pair.target)
            marked.append(pair)
        total = admin.count()
        change(ReindexStarted, rows_total=total)
        _fill(settings.milvus, current.collection, name, tower, total, outcome, change, progress)
        if arts is not None:
            reader, writer = arts.store(arts.current.collection), arts.store(arts.target)
            try:
                first, _ = reembed_collection(reader, writer, query)
                again, _ = reembed_collection(reader, writer, query)
            finally:
                reader.close()
                writer.close()
            outcome.artifacts_embedded = first + again
            say(f"artifacts: {outcome.artifacts_embedded} embedded into {arts.target}")
        change(
            ReindexCompleted,
            rows_done=outcome.embedded,
            rows_total=outcome.embedded + outcome.present,
            rows_per_s=outcome.rows_per_s,
            seconds=outcome.seconds,
            message=f"{outcome.artifacts_embedded} artifacts" if arts is not None else "",
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
        switched = _switch_all(pairs, outcome, say, back=False)
        outcome.switched, outcome.artifacts = switched[-1], (switched[0] if arts is not None else None)
        change(
            IndexSwitched,
            switch_ms=outcome.switched.took_ms,
            message=_moved_note(outcome),
            **scores,
        )
        return outcome
    finally:
        for pair in marked:
            _unmark(pair)
        admin.close()
        if arts_admin is not None:
            arts_admin.close()


def _switch_all(
    pairs: Sequence[Pair], outcome: Outcome, say: Callable[[str], None], *, back: bool
) -> list[Switched]:
    """Bring each target up to date with its source, move the aliases, then copy what the
    sources took in that moment. The artifacts' alias moves first: a question embedded
    between the two calls by the encoder the passages' alias still names finds the
    artifacts it belongs with in the collection the artifacts' alias replaced (a reader
    falls back to that one), where the other order would leave it none."""
    for pair in pairs:
        embedded, removed = pair.converge(pair.current.collection, pair.target)
        outcome.changed, outcome.removed = outcome.changed + embedded, outcome.removed + removed
    switched = [rollback(pair.admin) if back else switch(pair.admin, pair.target) for pair in pairs]
    for pair in pairs:
        outcome.late += pair.copy_late(pair.current.collection, pair.target)
    say(
        f"brought up to date before the switch: {outcome.changed} embedded, {outcome.removed} deleted; "
        f"{outcome.late} copied after it"
    )
    return switched


def _moved_note(outcome: Outcome) -> str:
    note = (
        f"{outcome.changed} rows embedded and {outcome.removed} deleted before the switch, "
        f"{outcome.late} after"
    )
    if outcome.artifacts is not None:
        note += f"; artifacts {outcome.artifacts.before} -> {outcome.artifacts.after}"
    return note


def _unmark(pair: Pair) -> None:
    try:
        pair.mark_filling("")
    except LLMOpsError as exc:  # the re-index's own outcome matters more than this mark
        log.warning("could not clear %s on %s: %s", FILLING_PROPERTY, pair.current.collection, exc)


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


def roll_back(
    settings: Settings, announce: Callable[[IndexChange], None], say: Callable[[str], None] = lambda _: None
) -> Outcome:
    """Point the alias back at the collection the current one replaced (kept for this),
    after bringing that one up to date, with its own encoder, with what was ingested,
    changed or withdrawn since the switch; the artifacts' alias likewise."""
    admin = MilvusStore(settings.milvus)
    admin.open()
    arts_admin = artifacts_admin(settings)
    try:
        before = admin.current()
        pairs = [p for p in (_back(settings, arts_admin, say), _back(settings, admin, say)) if p is not None]
        if not pairs or pairs[-1].admin is not admin:
            rollback(admin)  # refuses, saying why
        outcome = Outcome(change_id := new_id(), before.collection, before.previous)
        switched = _switch_all(pairs, outcome, say, back=True)
        outcome.switched = switched[-1]
        outcome.artifacts = switched[0] if len(switched) > 1 else None
        after = admin.current()
        announce(
            IndexRolledBack(
                trace_id=change_id,
                producer="reindex",
                change_id=change_id,
                alias=outcome.switched.alias,
                source=outcome.switched.before,
                target=outcome.switched.after,
                encoder=after.record.name if after.record else "",
                source_encoder=before.record.name if before.record else "",
                actor=actor(),
                switch_ms=outcome.switched.took_ms,
                message=_moved_note(outcome),
            )
        )
        return outcome
    finally:
        admin.close()
        if arts_admin is not None:
            arts_admin.close()


def _back(settings: Settings, admin: MilvusStore | None, say: Callable[[str], None]) -> Pair | None:
    """What a rollback moves on this alias: None when there is nothing to roll back to
    (for the passages, `rollback` then says why)."""
    if admin is None:
        return None
    current = admin.current()
    if not current.aliased or not current.previous:
        return None
    if current.previous not in set(admin._call("list_collections")):
        return None
    kept = admin.record_of(current.previous)
    kept_tower = None
    if kept is None:
        say(f"{current.previous} records no encoder: rolled back without bringing it up to date")
    else:
        kept_tower = open_towers(settings, kept.name)[kind_of(admin).side]
        if kept_tower.record().fingerprint != kept.fingerprint:
            raise PermanentError(
                f"{current.previous!r} was filled by {kept.name} (fingerprint {kept.fingerprint}); the "
                f"installed {kept.name} is {kept_tower.record().fingerprint}, so the passages ingested "
                "since the switch cannot be added to it: install the encoder it was filled with"
            )
    return Pair(admin, current, current.previous, kept_tower, settings.milvus)


def describe_index(settings: Settings) -> list[str]:
    """Lines: what each alias (passages, artifacts) points at, what each collection
    records, what is kept."""
    lines: list[str] = []
    passages = MilvusStore(settings.milvus)
    passages.open()
    for admin, rows in ((passages, "passages"), (artifacts_admin(settings), "artifacts")):
        if admin is None:
            lines.append(f"{artifacts_collection(settings.milvus)}: none (no artifacts pushed)")
            continue
        try:
            current = admin.current()
            lines += [
                f"{current.name} -> {current.collection}"
                + ("" if current.aliased else " (a plain collection: the first version)"),
                f"  filled by {current.record.name if current.record else 'an unrecorded encoder'}, "
                f"{admin.count()} {rows}",
            ]
            if current.previous:
                kept = admin.record_of(current.previous)
                held = kept.name if kept else "unrecorded"
                lines.append(f"  replaced {current.previous} ({held}), kept for --rollback")
        finally:
            admin.close()
    return lines
