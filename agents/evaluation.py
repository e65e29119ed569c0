"""Golden sets and their scores: what `llmops prompts evaluate` and the retrieval and
answer-quality benchmarks measure. Pure: no I/O beyond reading the golden set's files.

A golden set is a JSON Lines file, or a directory holding one as `golden.jsonl`, with
one case per line: `question`, and any of `doc_ids` (documents expected among the
retrieved passages), `passage_ids` (the passages that answer it: chunk ids, which
depend on the tenant the documents were indexed for; an item may be a list of ids, the
passages that carry one piece of the answer alike, e.g. the same text in two documents,
so citing any of them covers that piece), `key_phrases` (short strings a correct answer
contains) and `answer` (a reference answer). A directory may hold BEIR's
layout instead (`queries.jsonl` with `_id` and `text`, `qrels/test.tsv` with query-id,
corpus-id, score).

The answer metrics need no judge model: citation precision and recall against the
expected passages, key-phrase recall, and a groundedness proxy (see `groundedness`)."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import PermanentError

_TOKEN = re.compile(r"\w+")


@dataclass(frozen=True)
class GoldenCase:
    question: str
    relevant: frozenset[str] = field(default_factory=frozenset)  # document ids
    answer: str = ""
    # The pieces of the answer, each as the ids of the passages that carry it.
    passages: tuple[frozenset[str], ...] = ()
    key_phrases: tuple[str, ...] = ()

    @property
    def expected_passages(self) -> frozenset[str]:
        return frozenset().union(*self.passages)


# Every score case_scores can give -> the golden-set field a case needs for it (None: the
# response alone gives it), in the order `llmops prompts evaluate` offers them.
METRICS: dict[str, str | None] = {
    "ndcg_at_10": "doc_ids",
    "recall_at_10": "doc_ids",
    "hit_at_1": "doc_ids",
    "answer_f1": "answer",
    "citation_precision": "passage_ids",
    "citation_recall": "passage_ids",
    "context_recall": "passage_ids",
    "key_phrase_recall": "key_phrases",
    "groundedness": None,
}


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


def load_golden(path: Path, limit: int | None = None) -> list[GoldenCase]:
    """A golden set from a JSON Lines file, a directory with `golden.jsonl`, or a BEIR
    directory; the first `limit` cases when given."""
    golden = path if path.is_file() else path / "golden.jsonl"
    beir = path / "qrels" / "test.tsv"
    if golden.is_file():
        lines = enumerate(golden.read_text().splitlines(), start=1)
        cases = [_case(golden, number, line) for number, line in lines if line.strip()]
    elif beir.is_file() and (path / "queries.jsonl").is_file():
        texts = {q["_id"]: q["text"] for q in map(json.loads, (path / "queries.jsonl").open())}
        qrels = read_qrels(beir)
        cases = [GoldenCase(texts[q], frozenset(qrels[q])) for q in sorted(qrels) if q in texts]
    else:
        raise PermanentError(f"{path}: no golden.jsonl, and no BEIR queries.jsonl + qrels/test.tsv")
    if not cases:
        raise PermanentError(f"{path}: the golden set is empty")
    unscorable = [c.question for c in cases if not (c.relevant or c.answer or c.passages or c.key_phrases)]
    if unscorable:
        raise PermanentError(
            f"{len(unscorable)} cases name no doc_ids and no answer (nor passage_ids or key_phrases), "
            f"e.g. {unscorable[0]!r}"
        )
    return cases[:limit] if limit else cases


def _case(golden: Path, number: int, line: str) -> GoldenCase:
    try:
        row = json.loads(line)
        phrases = row.get("key_phrases", [])
        if isinstance(phrases, str) or not all(isinstance(p, str) for p in phrases):
            raise TypeError("key_phrases must be a list of strings")
        return GoldenCase(
            row["question"],
            frozenset(map(str, row.get("doc_ids", []))),
            row.get("answer", ""),
            tuple(_group(item) for item in row.get("passage_ids", [])),
            tuple(phrases),
        )
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        expected = "a JSON object with question and doc_ids, passage_ids, key_phrases and/or answer"
        raise PermanentError(f"{golden}:{number}: expected {expected}: {exc!r}") from exc


def _group(item: str | list[str]) -> frozenset[str]:
    if isinstance(item, str):
        return frozenset({item})
    if not item or not all(isinstance(i, str) for i in item):
        raise TypeError("passage_ids items must be ids or non-empty lists of ids")
    return frozenset(item)


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


def case_scores(
    case: GoldenCase,
    doc_ids: Sequence[str],
    answer: str,
    *,
    citations: Sequence[str] | None = None,
    passages: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """The metrics one answer earns: retrieval ones when the case names documents, answer
    F1 when it names an answer, and the answer metrics of `answer_scores` when the
    response's `citations` and `passages` (passage id -> text, as retrieved) are given."""
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
    if citations is not None:
        scores.update(answer_scores(case, answer, citations, passages or {}))
    return scores


def answer_scores(
    case: GoldenCase, answer: str, citations: Sequence[str], passages: Mapping[str, str]
) -> dict[str, float]:
    """Answer metrics that need no judge model. `citations`: the passage ids the answer
    cites; `passages`: passage id -> text of the passages the generator was given.

    - citation_precision: cited passages among the expected ones;
    - citation_recall: pieces of the answer (`GoldenCase.passages`) with a cited passage;
    - context_recall: pieces with a passage among those the generator was given (the
      ceiling of citation recall that retrieval and the prompt's passage count set);
    - key_phrase_recall: the case's key phrases found in the answer;
    - groundedness: see `groundedness`, over the texts of the cited passages."""
    scores: dict[str, float] = {}
    if case.passages:
        scores.update(
            citation_precision=citation_precision(citations, case.expected_passages),
            citation_recall=citation_recall(citations, case.passages),
            context_recall=citation_recall(list(passages), case.passages),
        )
    if case.key_phrases:
        scores["key_phrase_recall"] = key_phrase_recall(answer, case.key_phrases)
    scores["groundedness"] = groundedness(answer, [passages[c] for c in citations if c in passages])
    return scores


def citation_precision(cited: Sequence[str], expected: Collection[str]) -> float:
    """Share of the distinct cited passages that are expected ones. An answer that cites
    nothing scores 0: an uncited claim cannot be checked against anything."""
    distinct = set(cited)
    return len(distinct & set(expected)) / len(distinct) if distinct else 0.0


def citation_recall(cited: Sequence[str], pieces: Sequence[Collection[str]]) -> float:
    """Share of the answer's pieces (each: the ids of the passages that carry it) of
    which the answer cites at least one passage."""
    distinct = set(cited)
    return sum(not distinct.isdisjoint(piece) for piece in pieces) / len(pieces) if pieces else 0.0


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def key_phrase_recall(answer: str, phrases: Sequence[str]) -> float:
    """Share of `phrases` that occur in the answer, ignoring case and runs of whitespace
    (a substring test: "raise" is found in "re-raises")."""
    if not phrases:
        return 0.0
    text = _normalised(answer)
    return sum(_normalised(p) in text for p in phrases) / len(phrases)


# Term splitting as the extractive backend does it (lower-cased runs of letters and digits,
# one-letter terms dropped), with a longer stop list: here every function word a
# paraphrase adds would otherwise count as an unsupported term.
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{2,}")
_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
STOP_WORDS = frozenset(
    """a about above after again all also an and any are as at be because been before being
    below between both but by can could did do does doing done during each either else
    for from further had has have having he her here hers him his how however i if in into
    is it its itself just may might more most must my no nor not of off on once one only
    or other our out over own same shall she should so some such than that the their them
    then there these they this those through to too under until up upon us very was we
    were what when where whether which while who whom why will with within without would
    yet you your""".split()
)


def content_words(text: str) -> set[str]:
    """Lower-cased words of two or more letters or digits, minus stop words."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in STOP_WORDS}


def sentences(text: str) -> list[str]:
    """The answer's sentences, citation markers such as [2] removed."""
    return [s.strip() for s in _SENTENCE_END.split(_CITATION.sub("", text)) if s.strip()]


def groundedness(answer: str, cited_texts: Sequence[str], threshold: float = 0.5) -> float:
    """A groundedness proxy: the share of the answer's sentences (those with any content
    word) at least `threshold` of whose content words occur in the cited passages. An
    answer with no such sentence, or that cites nothing, scores 0.

    It is lexical, so it cannot catch: a faithful paraphrase in other words (scored
    ungrounded); a wrong statement built from the passage's own words, such as swapped
    roles or numbers ("the key is evaluated after the value": scored grounded); a
    negation or hedge added or dropped ("not" is a stop word; "never" is one word of many);
    a claim grounded in a passage the answer did not cite (only the cited ones count)."""
    support: set[str] = set().union(*map(content_words, cited_texts)) if cited_texts else set()
    shares = []
    for sentence in sentences(answer):
        words = content_words(sentence)
        if words:
            shares.append(len(words & support) / len(words))
    return sum(share >= threshold for share in shares) / len(shares) if shares else 0.0


def mean_scores(per_case: Sequence[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for scores in per_case for name in scores})
    return {n: statistics.mean(s[n] for s in per_case if n in s) for n in names}
