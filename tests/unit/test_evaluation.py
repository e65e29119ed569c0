"""Golden sets and their metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.evaluation import answer_f1, case_scores, load_golden, mean_scores, ndcg_at
from schemas.errors import PermanentError


def test_a_golden_jsonl_and_a_beir_directory_load_alike(tmp_path):
    jsonl = tmp_path / "a"
    jsonl.mkdir()
    (jsonl / "golden.jsonl").write_text(
        json.dumps({"question": "q1", "doc_ids": ["d1", 2], "answer": "x"}) + "\n\n"
    )
    [case] = load_golden(jsonl)
    assert (case.question, case.relevant, case.answer) == ("q1", frozenset({"d1", "2"}), "x")

    beir = tmp_path / "b"
    (beir / "qrels").mkdir(parents=True)
    (beir / "queries.jsonl").write_text('{"_id": "1", "text": "q1"}\n{"_id": "2", "text": "q2"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n2\td9\t1\n1\td1\t1\n1\td2\t0\n")
    cases = load_golden(beir)
    assert [(c.question, c.relevant) for c in cases] == [("q1", {"d1"}), ("q2", {"d9"})]
    assert len(load_golden(beir, limit=1)) == 1


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "no golden.jsonl"),
        ("not json\n", "golden.jsonl:1"),
        ('{"question": "q"}\n', "no doc_ids and no answer"),
    ],
)
def test_a_bad_golden_set_says_what_is_wrong(tmp_path, content, error):
    if content is not None:
        (tmp_path / "golden.jsonl").write_text(content)
    with pytest.raises(PermanentError, match=error):
        load_golden(tmp_path)


def test_scores_collapse_chunks_to_documents_and_rank_them():
    from agents.evaluation import GoldenCase

    case = GoldenCase("q", frozenset({"a", "b"}), "Lambda makes anonymous functions")
    perfect = case_scores(case, ["a", "a", "b"], "lambda makes anonymous functions")
    assert perfect == {"ndcg_at_10": 1.0, "recall_at_10": 1.0, "hit_at_1": 1.0, "answer_f1": 1.0}
    late = case_scores(case, ["c", "a"], "functions")
    assert late["recall_at_10"] == 0.5 and late["hit_at_1"] == 0.0 and 0 < late["ndcg_at_10"] < 0.5
    assert mean_scores([perfect, late])["recall_at_10"] == 0.75
    assert ndcg_at(["x"] * 10 + ["a"], {"a"}) == 0.0
    assert answer_f1("", "x") == 0.0


def test_a_golden_file_with_passages_and_key_phrases_loads(tmp_path):
    path = tmp_path / "answers.jsonl"
    row = {"question": "q", "passage_ids": ["p1", ["p2", "p3"]], "key_phrases": ["a b", "c"]}
    path.write_text(json.dumps(row) + "\n" + json.dumps({"question": "r", "key_phrases": ["x"]}) + "\n")
    first, second = load_golden(path)
    assert first.passages == (frozenset({"p1"}), frozenset({"p2", "p3"}))
    assert (first.expected_passages, first.key_phrases, first.relevant) == (
        {"p1", "p2", "p3"},
        ("a b", "c"),
        set(),
    )
    assert (second.passages, second.key_phrases) == ((), ("x",))
    for bad, error in (
        [{"key_phrases": "one string"}, "list of strings"],
        [{"passage_ids": [[]]}, "lists of ids"],
    ):
        path.write_text(json.dumps({"question": "q", **bad}) + "\n")
        with pytest.raises(PermanentError, match=f"answers.jsonl:1.*{error}"):
            load_golden(path)


def test_citation_precision_counts_distinct_passages_and_recall_counts_pieces():
    from agents.evaluation import citation_precision, citation_recall

    expected = {"a", "c", "x"}
    assert citation_precision(["a", "b", "b", "c"], expected) == 2 / 3
    assert citation_precision(["a"], expected) == 1.0
    assert citation_precision([], expected) == 0.0  # nothing cited: nothing checkable
    pieces = [{"a"}, {"c", "c-copy"}, {"x"}]
    assert citation_recall(["a", "b", "b", "c"], pieces) == 2 / 3
    assert citation_recall(["c-copy", "a", "a"], pieces) == 2 / 3  # either copy covers its piece
    assert citation_recall(["c", "c-copy"], pieces) == 1 / 3
    assert citation_recall(["b"], pieces) == 0.0
    assert citation_recall(["a"], []) == 0.0


def test_key_phrase_recall_ignores_case_and_whitespace():
    from agents.evaluation import key_phrase_recall

    answer = "In a dict comprehension the KEY is evaluated\n   before the value [1]."
    phrases = ["key is evaluated before", "after the value", "Dict  Comprehension"]
    assert key_phrase_recall(answer, phrases) == 2 / 3
    assert key_phrase_recall(answer, []) == 0.0


PASSAGE = "The context manager's __exit__() method receives the exception type, value and traceback."


def test_groundedness_is_the_share_of_sentences_mostly_made_of_cited_words():
    from agents.evaluation import content_words, groundedness, sentences

    assert content_words("The type of the exception") == {"type", "exception"}
    assert sentences("One thing [1]. Two!\n\nThree [2, 3]") == ["One thing.", "Two!", "Three"]
    answer = (
        "The __exit__ method gets the exception type, value and traceback [1]. "
        "Bananas grow quickly in tropical climates [2]."
    )
    # First sentence: 6 of its 7 content words are in the passage; the second: none.
    assert groundedness(answer, [PASSAGE]) == 0.5
    assert groundedness(answer, [PASSAGE, "Bananas grow in tropical climates, quickly."]) == 1.0
    assert groundedness(answer, [PASSAGE], threshold=0.9) == 0.0
    assert groundedness(answer, []) == 0.0  # cites nothing
    assert groundedness("", [PASSAGE]) == 0.0
    # Citation markers are not words of the sentence: with "12" counted, 2 of 4 would miss 0.6.
    assert groundedness("Exit gets traceback [12].", ["exit traceback"], threshold=0.6) == 1.0


def test_groundedness_cannot_see_negation_or_swapped_facts():
    """The documented blind spots: the proxy reads words, not meaning."""
    from agents.evaluation import groundedness

    assert (
        groundedness("The __exit__ method never receives the exception type, value or traceback.", [PASSAGE])
        == 1.0
    )
    assert groundedness("The traceback receives the __exit__ method's value.", [PASSAGE]) == 1.0
    assert groundedness("Its teardown hook is handed the error's kind, payload and stack.", [PASSAGE]) == 0.0


def test_case_scores_add_the_answer_metrics_when_citations_are_given():
    from agents.evaluation import GoldenCase

    case = GoldenCase(
        "q",
        frozenset({"d1"}),
        passages=(frozenset({"p1"}), frozenset({"p2", "p2-copy"})),
        key_phrases=("traceback", "nested"),
    )
    passages = {"p1": PASSAGE, "p3": "Something else entirely."}
    answer = "__exit__ gets the exception type, value and traceback [1]."
    scores = case_scores(case, ["d1", "d2"], answer, citations=["p1", "p3"], passages=passages)
    assert scores == {
        "ndcg_at_10": 1.0,
        "recall_at_10": 1.0,
        "hit_at_1": 1.0,
        "citation_precision": 0.5,
        "citation_recall": 0.5,
        "context_recall": 0.5,  # the first piece reached the generator, the second did not
        "key_phrase_recall": 0.5,
        "groundedness": 1.0,
    }
    assert "groundedness" not in case_scores(case, ["d1"], answer)  # no citations: retrieval metrics only


GOLDEN = Path(__file__).resolve().parents[2] / "benchmarks" / "golden" / "answers.jsonl"


def sample_passages(tenant: str = "default") -> dict[str, tuple[str, str]]:
    """Passage id -> (document id, text) of the sample corpus, chunked as the indexing
    stage does with the default settings."""
    from agents.config import PipelineSettings
    from agents.indexing import chunk_id, chunk_words
    from topology.samples import python_reference

    cfg = PipelineSettings()
    return {
        chunk_id(tenant, doc["doc_id"], index): (doc["doc_id"], text)
        for doc in python_reference()
        for index, text in enumerate(chunk_words(doc["text"], cfg.chunk_words, cfg.chunk_overlap))
    }


def test_the_answer_golden_set_matches_the_sample_corpus():
    """Each case lists, per piece of its answer, exactly the sample corpus's passages (as
    the demo indexes it) that contain one of that piece's evidence quotes, and every key
    phrase occurs in one of its passages: a change of chunking or of the corpus text
    fails here, not silently in the benchmark."""
    cases = load_golden(GOLDEN)
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    passages = sample_passages()
    flat = {pid: " ".join(text.lower().split()) for pid, (_, text) in passages.items()}
    assert len(cases) >= 40
    assert len({c.question for c in cases}) == len(cases)
    for case, row in zip(cases, rows, strict=True):
        assert case.passages and 2 <= len(case.key_phrases) <= 4, case.question
        assert len(row["evidence"]) == len(case.passages), case.question
        for piece, quotes in zip(case.passages, row["evidence"], strict=True):
            carrying = {pid for pid, text in flat.items() if any(q.lower() in text for q in quotes)}
            assert piece == carrying, f"{case.question!r}: passages for {quotes} are now {sorted(carrying)}"
        assert case.relevant == {passages[p][0] for p in case.expected_passages}, case.question
        texts = [flat[p] for p in case.expected_passages]
        for phrase in case.key_phrases:
            wanted = " ".join(phrase.lower().split())
            assert any(wanted in t for t in texts), f"{case.question!r}: {phrase!r} in none of its passages"


def test_metrics_names_every_score_and_the_field_each_needs():
    """`llmops prompts evaluate --metric` offers METRICS and names the missing field when
    a golden set cannot give the chosen one: each entry must match what case_scores does."""
    from agents.evaluation import METRICS, GoldenCase

    full = {
        "doc_ids": {"relevant": frozenset({"d1"})},
        "answer": {"answer": "the answer"},
        "passage_ids": {"passages": (frozenset({"p1"}),)},
        "key_phrases": {"key_phrases": ("answer",)},
    }

    def scores(*fields: str) -> set[str]:
        case = GoldenCase("q", **{k: v for f in fields for k, v in full[f].items()})
        return set(case_scores(case, ["d1"], "the answer [1]", citations=["p1"], passages={"p1": "answer"}))

    assert scores(*full) == set(METRICS)
    for metric, field in METRICS.items():
        if field is None:
            assert metric in scores()
        else:
            assert metric not in scores(*(f for f in full if f != field)), metric
            assert metric in scores(field), metric
