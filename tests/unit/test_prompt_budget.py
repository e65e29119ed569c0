"""The prompt budget and the grouping of streamed text, as pure functions: passages go in
best first while they fit, the first that does not is truncated at a sentence end when
at least half of it fits and dropped otherwise, and nothing after it goes in; streamed
pieces leave in groups by count or by time and join to the whole text."""

from __future__ import annotations

from agents.generation import DeltaGroups
from agents.prompting import fit_passages, passage_block

TEXTS = [
    "First passage. It has two sentences.",
    "Second passage, a longer one. It says more. And more again.",
    "Third.",
]
BLOCKS = [passage_block(n, "T", t) for n, t in enumerate(TEXTS, start=1)]


def test_everything_fits_in_a_big_budget():
    fitted = fit_passages(BLOCKS, TEXTS, [10, 20, 5], 100, "server")
    assert fitted.texts == TEXTS
    b = fitted.budget
    assert (b.passages_sent, b.passages_cut, b.tokens_sent, b.tokens_cut, b.counted_by) == (
        3,
        0,
        35,
        0,
        "server",
    )


def test_a_passage_half_of_which_fits_is_truncated_at_a_sentence_end_and_later_ones_are_dropped():
    # 10 tokens used, 14 left: at least half of the second (20) fits.
    fitted = fit_passages(BLOCKS, TEXTS, [10, 20, 5], 24, "server")
    assert fitted.texts[0] == TEXTS[0]
    part = fitted.texts[1]
    assert TEXTS[1].startswith(part) and part.endswith(".") and part != TEXTS[1]
    b = fitted.budget
    assert len(fitted.texts) == b.passages_sent == 2
    assert b.passages_cut == 2  # the truncated one and the third, though the third would fit
    assert b.tokens_sent <= 24 and b.tokens_sent + b.tokens_cut == 35


def test_a_passage_less_than_half_of_which_fits_is_dropped():
    fitted = fit_passages(BLOCKS, TEXTS, [10, 20, 5], 19, "chars/4")
    assert fitted.texts == [TEXTS[0]]
    b = fitted.budget
    assert (b.passages_sent, b.passages_cut, b.tokens_sent, b.tokens_cut, b.counted_by) == (
        1,
        2,
        10,
        25,
        "chars/4",
    )


def test_a_passage_with_no_sentence_end_in_the_room_is_dropped():
    texts = ["one long sentence without an end in the first half of it, going on and on. End."]
    blocks = [passage_block(1, "T", texts[0])]
    fitted = fit_passages(blocks, texts, [20], 10, "server")
    assert fitted.texts == [] and fitted.budget.passages_cut == 1 and fitted.budget.tokens_cut == 20


def test_no_room_sends_no_passage():
    fitted = fit_passages(BLOCKS, TEXTS, [10, 20, 5], -3, "server")
    assert fitted.texts == [] and fitted.budget.passages_cut == 3 and fitted.budget.tokens_sent == 0


def test_pieces_are_grouped_by_count():
    groups = DeltaGroups(every_tokens=3, every_ms=1e9)
    out = [groups.add(p, now_ms=0) for p in "abcdefg"]
    assert out == [None, None, "abc", None, None, "def", None]
    assert groups.flush() == "g" and groups.flush() is None


def test_pieces_are_grouped_by_time_since_the_group_began():
    groups = DeltaGroups(every_tokens=100, every_ms=50)
    assert groups.add("a", now_ms=1000) is None
    assert groups.add("b", now_ms=1049) is None
    assert groups.add("c", now_ms=1050) == "abc"
    assert groups.add("d", now_ms=5000) is None  # a new group starts with its first piece
    assert groups.flush() == "d"


def test_groups_join_to_the_whole_text():
    pieces = [f" word{i}" for i in range(37)]
    groups = DeltaGroups(every_tokens=5, every_ms=30)
    sent = [g for i, p in enumerate(pieces) if (g := groups.add(p, now_ms=i * 7)) is not None]
    sent.append(groups.flush() or "")
    assert "".join(sent) == "".join(pieces) and 1 < len(sent) < len(pieces)
