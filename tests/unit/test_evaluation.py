"""Golden sets and their metrics."""

from __future__ import annotations

import json

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
