"""Golden sets and their scores: what `llmops prompts evaluate` and the retrieval
benchmarks measure. Pure: no I/O beyond reading the golden set's files.

A golden set is a directory with either `golden.jsonl` (one case per line: `question`,
`doc_ids` expected among the passages, optional `answer`) or BEIR's layout
(`queries.jsonl` with `_id` and `text`, `qrels/test.tsv` with query-id, corpus-id, score)."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import PermanentError

_TOKEN = re.compile(r"\w+")


@dataclass(frozen=True)
class GoldenCase:
    question: str
    relevant: frozenset[str] = field(default_factory=frozenset)  # document ids
    answer: str = ""


def read_qrels(path: Path) -> dict[str, set[str]]:
    """BEIR relevance judgements: query id -> ids of the documents judged relevant."""
    qrels: dict[str, set[str]] = {}
    for line in path.read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(did)
    return qrels


def load_beir(directory: Path) -> tuple[list[str], list[str], list[str], list[str], dict[str, set[str]]]:
    """A BEIR set for benchmarks: document ids and texts ("title text", as BEIR joins them),
    then the test split's query ids, texts and judgements."""
    corpus = [json.loads(line) for line in (directory / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (directory / "queries.jsonl").open())}
    qrels = read_qrels(directory / "qrels" / "test.tsv")
    qids = sorted(qrels)
    doc_ids = [d["_id"] for d in corpus]
    texts = [f"{d.get('title', '')} {d['text']}".strip() for d in corpus]
    return doc_ids, texts, qids, [queries[q] for q in qids], qrels


def load_golden(directory: Path, limit: int | None = None) -> list[GoldenCase]:
    golden, beir = directory / "golden.jsonl", directory / "qrels" / "test.tsv"
    if golden.is_file():
        cases = []
        for number, line in enumerate(golden.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                relevant = frozenset(map(str, row.get("doc_ids", [])))
                cases.append(GoldenCase(row["question"], relevant, row.get("answer", "")))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                expected = "a JSON object with question, doc_ids and/or answer"
                raise PermanentError(f"{golden}:{number}: expected {expected}: {exc!r}") from exc
    elif beir.is_file() and (directory / "queries.jsonl").is_file():
        texts = {q["_id"]: q["text"] for q in map(json.loads, (directory / "queries.jsonl").open())}
        qrels = read_qrels(beir)
        cases = [GoldenCase(texts[q], frozenset(qrels[q])) for q in sorted(qrels) if q in texts]
    else:
        raise PermanentError(f"{directory}: no golden.jsonl, and no BEIR queries.jsonl + qrels/test.tsv")
    if not cases:
        raise PermanentError(f"{directory}: the golden set is empty")
    unscorable = [c.question for c in cases if not c.relevant and not c.answer]
    if unscorable:
        raise PermanentError(f"{len(unscorable)} cases name no doc_ids and no answer, e.g. {unscorable[0]!r}")
    return cases[:limit] if limit else cases


def ndcg_at(ranked: Sequence[str], relevant: set[str] | frozenset[str], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal


def recall_at(ranked: Sequence[str], relevant: set[str] | frozenset[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant)


def documents_in_order(doc_ids: Sequence[str]) -> list[str]:
    """Chunks to documents: each document where its best chunk ranks."""
    return list(dict.fromkeys(doc_ids))


def answer_f1(predicted: str, expected: str) -> float:
    """Token-overlap F1 of two answers (SQuAD's), lower-cased words."""
    p, e = Counter(_TOKEN.findall(predicted.lower())), Counter(_TOKEN.findall(expected.lower()))
    common = sum((p & e).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(e.values())
    return 2 * precision * recall / (precision + recall)


def case_scores(case: GoldenCase, doc_ids: Sequence[str], answer: str) -> dict[str, float]:
    """The metrics one answer earns: retrieval ones when the case names documents, answer
    F1 when it names an answer."""
    scores: dict[str, float] = {}
    if case.relevant:
        ranked = documents_in_order(doc_ids)
        scores.update(
            ndcg_at_10=ndcg_at(ranked, case.relevant, 10),
            recall_at_10=recall_at(ranked, case.relevant, 10),
            hit_at_1=float(bool(ranked) and ranked[0] in case.relevant),
        )
    if case.answer:
        scores["answer_f1"] = answer_f1(answer, case.answer)
    return scores


def mean_scores(per_case: Sequence[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for scores in per_case for name in scores})
    return {n: statistics.mean(s[n] for s in per_case if n in s) for n in names}
