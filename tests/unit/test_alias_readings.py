"""How often a store reads what its collection name points at: the query side (the query
tower, searches) reuses a reading for up to LLMOPS_MILVUS__ALIAS_CHECK_S and reads afresh
before refusing a question's vectors; writers, deletions and alias moves read every time.
A fake Milvus (the store's `_call`) and a fake clock: no server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from connectors import milvus as milvus_module
from connectors.embedder import EmbeddingSettings
from connectors.encoders import EncoderRecord
from connectors.following_towers import FollowingTower
from connectors.milvus import Chunk, MilvusSettings, MilvusStore
from connectors.milvus_aliases import ENCODER_PROPERTY, PREVIOUS_PROPERTY, switch
from schemas.errors import PermanentError, TransientError

NAME = "passages"
MINILM, E5 = "all-MiniLM-L6-v2", "e5-small-v2"


def record(name: str) -> EncoderRecord:
    return EncoderRecord(name, f"fp-{name}", "0" * 64, {})


class FakeMilvus:
    """The alias `passages` over collections that record their encoder; `point` moves it."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, str]] = {}
        self.target = ""
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_next: Exception | None = None

    def add(self, collection: str, encoder: str, previous: str = "") -> None:
        properties = {ENCODER_PROPERTY: record(encoder).to_json()}
        if previous:
            properties[PREVIOUS_PROPERTY] = previous
        self.collections[collection] = properties

    def point(self, collection: str) -> None:
        self.target = collection

    def describes(self, name: str = NAME) -> int:
        return sum(1 for m, kw in self.calls if m == "describe_collection" and kw["collection_name"] == name)

    def searched(self) -> list[str]:
        return [kw["collection_name"] for m, kw in self.calls if m == "search"]

    def __call__(self, method: str, **kwargs: Any) -> Any:
        self.calls.append((method, kwargs))
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if method == "describe_collection":
            name = kwargs["collection_name"]
            behind = self.target if name == NAME else name
            return {"collection_name": behind, "properties": dict(self.collections[behind])}
        if method == "search":
            return [[] for _ in kwargs["data"]]
        if method == "list_collections":
            return list(self.collections)
        if method == "alter_alias":
            self.target = kwargs["collection_name"]
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(milvus_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


class Tower:
    """A tower as the store and FollowingTower see it, embedding without a model."""

    def __init__(self, name: str) -> None:
        self.name, self.dim = name, 4

    def open(self) -> None: ...

    def record(self) -> EncoderRecord:
        return record(self.name)

    def embed(self, texts: Any) -> np.ndarray:
        return np.ones((len(texts), self.dim), dtype=np.float32)


def store_on(fake: FakeMilvus, check_s: float = 0.5, **towers: Any) -> MilvusStore:
    store = MilvusStore(MilvusSettings(collection=NAME, alias_check_s=check_s), **towers)
    store._call = fake  # type: ignore[method-assign]
    return store


@pytest.fixture
def fake() -> FakeMilvus:
    fake = FakeMilvus()
    fake.add("passages_v1", MINILM)
    fake.add("passages_v2", E5, previous="passages_v1")
    fake.point("passages_v1")
    return fake


def search(store: MilvusStore, encoder: str) -> None:
    store.search([[1.0, 0.0, 0.0, 0.0]], "acme", 3, encoder=encoder)


def test_the_default_is_half_a_second_and_zero_is_allowed():
    assert MilvusSettings().alias_check_s == 0.5
    assert MilvusSettings(alias_check_s=0).alias_check_s == 0
    with pytest.raises(ValueError):
        MilvusSettings(alias_check_s=-1)


def test_searches_reuse_a_reading_within_the_age_and_read_again_after_it(fake: FakeMilvus, clock: Clock):
    store = store_on(fake)
    search(store, MINILM)
    clock.now += 0.4
    search(store, MINILM)
    assert fake.describes() == 1 and store.current_for_reads().collection == "passages_v1"
    clock.now += 0.2
    search(store, MINILM)
    assert fake.describes() == 2
    assert fake.searched() == ["passages_v1"] * 3


def test_after_a_switch_the_query_path_keeps_the_old_collection_until_the_reading_is_old(
    fake: FakeMilvus, clock: Clock
):
    store = store_on(fake)
    search(store, MINILM)
    fake.point("passages_v2")
    # MiniLM questions embedded by the old reading belong in the old collection: no refusal.
    search(store, MINILM)
    assert fake.searched()[-1] == "passages_v1" and fake.describes() == 1
    clock.now += 0.5
    search(store, MINILM)  # the fresh reading sends them to the kept collection it replaced
    search(store, E5)
    assert fake.searched()[-2:] == ["passages_v1", "passages_v2"] and fake.describes() == 2


def test_a_refusal_on_a_reused_reading_reads_again_and_searches_where_the_vectors_belong(
    fake: FakeMilvus, clock: Clock
):
    store = store_on(fake)
    search(store, MINILM)
    fake.point("passages_v2")  # the query tower followed it (a fresher reading): e5 vectors
    search(store, E5)
    assert fake.searched()[-1] == "passages_v2" and fake.describes() == 2
    search(store, E5)  # the fresh reading is reused from now on
    assert fake.describes() == 2


def test_a_refusal_on_a_fresh_reading_is_raised_without_reading_again(fake: FakeMilvus, clock: Clock):
    store = store_on(fake)
    with pytest.raises(PermanentError, match="does not belong"):
        search(store, E5)  # nothing reused yet: the first reading is fresh
    assert fake.describes() == 1
    with pytest.raises(PermanentError, match="does not belong"):
        search(store, "bge-small-en-v1.5")  # reused, refused; read afresh, refused again
    assert fake.describes() == 2 and fake.searched() == []


def test_zero_reads_for_every_search(fake: FakeMilvus, clock: Clock):
    store = store_on(fake, check_s=0)
    for _ in range(3):
        search(store, MINILM)
    assert fake.describes() == 3


def test_a_failed_reading_is_not_kept(fake: FakeMilvus, clock: Clock):
    store = store_on(fake)
    fake.fail_next = TransientError("Milvus describe_collection failed: unavailable")
    with pytest.raises(TransientError):
        store.current_for_reads()
    assert store.current_for_reads().collection == "passages_v1"
    assert store.current_for_reads().collection == "passages_v1"
    assert fake.describes() == 2


def test_writers_deletions_and_alias_moves_read_every_time(fake: FakeMilvus, clock: Clock):
    store = store_on(fake, writer=Tower(MINILM))
    store.current_for_reads()  # a reading the query side would reuse
    chunk = Chunk("c", "acme", "d", 0, "", "text", [1.0, 0.0, 0.0, 0.0])
    store._bm25["passages_v1"] = False
    store.upsert([chunk])
    store.delete_documents("acme", ["d"])
    assert store.current().collection == "passages_v1"
    assert fake.describes() == 4

    fake.point("passages_v2")
    assert store.current().collection == "passages_v2"
    # switch reads afresh: on the reused reading it would think the alias is there already.
    moved = switch(store, "passages_v1")
    assert (moved.before, moved.after) == ("passages_v2", "passages_v1")


class NotFound(Exception):
    code = 100  # Milvus's "collection not found"


def test_a_missing_collection_is_asked_about_again_afresh(fake: FakeMilvus, clock: Clock):
    store = store_on(fake)
    search(store, MINILM)
    missing = PermanentError("Milvus search failed: collection not found")
    missing.__cause__ = NotFound()
    fake.fail_next = missing
    fake.point("passages_v2")
    fake.collections["passages_v2"] = fake.collections["passages_v1"]  # renamed, same record
    search(store, MINILM)
    assert fake.describes() == 2 and fake.searched()[-1] == "passages_v2"


@pytest.mark.parametrize(("side", "reads"), [("query", 1), ("document", 3)])
def test_the_query_tower_reuses_a_reading_and_the_document_tower_does_not(
    fake: FakeMilvus, clock: Clock, side: str, reads: int
):
    fake.add("passages_v1", "fake")
    tower = FollowingTower(Tower("fake"), EmbeddingSettings(), side)  # type: ignore[arg-type]
    tower.follow(store_on(fake))
    for _ in range(3):
        vectors = tower.embed(["a question"])
    assert getattr(vectors, "encoder", "") == "fake"
    assert fake.describes() == reads
