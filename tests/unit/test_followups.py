"""The follow-up dialogues (benchmarks/dialogues/followups.jsonl) match the sample corpus
as the demo indexes it, and the benchmark's Hit@4 counts what it says."""

from __future__ import annotations

import json

import pytest

from benchmarks.followups import DIALOGUES, hit_at, load_dialogues
from schemas.errors import PermanentError


def sample_passages(tenant: str = "default") -> dict[str, tuple[str, str]]:
    """Passage id -> (document id, text), chunked as the indexing stage does by default."""
    from agents.config import PipelineSettings
    from agents.indexing import chunk_id, chunk_words
    from topology.samples import python_reference

    cfg = PipelineSettings()
    return {
        chunk_id(tenant, doc["doc_id"], index): (doc["doc_id"], text)
        for doc in python_reference()
        for index, text in enumerate(chunk_words(doc["text"], cfg.chunk_words, cfg.chunk_overlap))
    }


def test_the_dialogues_match_the_sample_corpus():
    """Each follow-up lists exactly the passages that contain one of its evidence quotes,
    and their documents: a change of chunking or of the corpus text fails here."""
    dialogues = load_dialogues(DIALOGUES)
    passages = sample_passages()
    flat = {pid: " ".join(text.lower().split()) for pid, (_, text) in passages.items()}
    assert len(dialogues) >= 30
    assert len({(d.first, d.second) for d in dialogues}) == len(dialogues)
    assert len({d.first for d in dialogues}) == len(dialogues)  # one topic each
    for d in dialogues:
        carrying = {pid for pid, text in flat.items() if any(q.lower() in text for q in d.evidence)}
        assert d.passages == carrying, f"{d.second!r}: passages are now {sorted(carrying)}"
        assert set(d.doc_ids) == {passages[p][0] for p in d.passages}, d.second


def test_a_follow_up_does_not_name_its_topic():
    """The follow-up leans on the first turn: it names none of its documents' topics."""
    for d in load_dialogues(DIALOGUES):
        words = set(d.second.lower().replace("?", " ").replace("'", " ").split())
        topics = {doc.removeprefix("pydoc-") for doc in d.doc_ids}
        assert not words & topics, (d.second, words & topics)


def test_hit_at_4_counts_an_expected_passage_in_the_first_four():
    expected = frozenset({"b", "z"})
    assert hit_at(["a", "b", "c", "d"], expected) == 1.0
    assert hit_at(["a", "c", "d", "e", "b"], expected) == 0.0
    assert hit_at([], expected) == 0.0


def test_a_bad_dialogue_line_is_refused_with_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    good = {"first": "q", "second": "r", "passage_ids": ["p"], "doc_ids": ["d"], "evidence": ["e"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "passage_ids": []}) + "\n")
    with pytest.raises(PermanentError, match="d.jsonl:2"):
        load_dialogues(path)
    path.write_text(json.dumps({"first": "q"}) + "\n")
    with pytest.raises(PermanentError, match="d.jsonl:1"):
        load_dialogues(path)


def test_each_follow_up_is_scored_against_its_own_dialogue_even_when_two_share_its_words():
    from benchmarks.followups import Dialogue, score

    def dialogue(first: str, passage: str) -> Dialogue:
        return Dialogue(first, "Where can it be used?", frozenset({passage}), ("d",), ("e",))

    dialogues = [dialogue("What is yield?", "p-yield"), dialogue("What is await?", "p-await")]
    results = [
        {"second": d.second, "first_trace": f"f{n}", "second_trace": f"s{n}", "second_ms": 10.0}
        for n, d in enumerate(dialogues)
    ]
    rows = {
        "s0": [{"stage": "retrieval", "passage_ids": ["p-yield"], "status": "ok", "latency_ms": 1}],
        "s1": [
            {"stage": "condense", "question": "Where can await be used?", "status": "ok", "latency_ms": 900},
            {"stage": "retrieval", "passage_ids": ["x", "p-await"], "status": "ok", "latency_ms": 1},
        ],
    }
    scored = score("local", results, rows, dialogues)
    assert scored["hit_at_4"] == 1.0 and [r["hit"] for r in scored["per_dialogue"]] == [1.0, 1.0]
    assert scored["nodes"]["condense"] == {"n": 1, "p50_ms": 900.0, "p95_ms": 900.0}
    assert scored["per_dialogue"][1]["condensed"] == "Where can await be used?"
