"""Feedback validation (the schema checks the value's type, the agent checks the range),
and the rows and links decided from trace facts given as plain data (an in-memory
FeedbackLinks; the SQL is tested on chDB)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from agents.feedback import FeedbackSettings, Linker, check, rows
from connectors.ports import TraceFacts
from schemas import FeedbackReceived
from schemas.errors import PermanentError


def feedback(data_type: str, value: object) -> FeedbackReceived:
    return FeedbackReceived(trace_id="t", producer="test", data_type=data_type, value=value)


@pytest.mark.parametrize(
    ("data_type", "value", "score"),
    [("BOOLEAN", True, 1.0), ("BOOLEAN", False, 0.0), ("NUMERIC", 4, 4.0), ("CATEGORICAL", "wrong", None)],
)
def test_values_that_suit_their_type_are_accepted(data_type, value, score):
    event = feedback(data_type, value)
    check(event, FeedbackSettings())
    assert event.score == score


@pytest.mark.parametrize(
    ("data_type", "value"),
    [
        ("STARS", 4),
        ("BOOLEAN", "yes"),
        ("BOOLEAN", 1.0),
        ("NUMERIC", "4"),
        ("NUMERIC", float("nan")),
        ("NUMERIC", True),
        ("CATEGORICAL", 3),
        ("CATEGORICAL", ""),
    ],
)
def test_values_that_do_not_suit_their_type_are_invalid(data_type, value):
    with pytest.raises(ValidationError):
        feedback(data_type, value)


def test_numeric_values_outside_the_configured_range_are_refused_with_the_range():
    rules = FeedbackSettings(numeric_min=1, numeric_max=5)
    check(feedback("NUMERIC", 5), rules)
    with pytest.raises(PermanentError, match=r"outside \[1.0, 5.0\]"):
        check(feedback("NUMERIC", 9), rules)
    with pytest.raises(PermanentError):
        check(feedback("NUMERIC", 0.5), rules)


def test_categories_are_checked_only_when_configured():
    check(feedback("CATEGORICAL", "anything"), FeedbackSettings())
    with pytest.raises(PermanentError, match="not one of"):
        check(feedback("CATEGORICAL", "meh"), FeedbackSettings(categories=("good", "bad")))


class Traces:
    """The linker's store as a dict: an in-memory FeedbackLinks."""

    def __init__(self, facts: dict[tuple[str, str], TraceFacts]) -> None:
        self.facts = facts
        self.links: list[tuple[list[str], int]] = []

    async def trace_facts(self, trace_ids: Sequence[str]) -> dict[tuple[str, str], TraceFacts]:
        return {key: f for key, f in self.facts.items() if key[0] in trace_ids}

    async def link_feedback(self, trace_ids: Sequence[str], settle_s: int) -> None:
        self.links.append((list(trace_ids), settle_s))


def rated(trace_id: str, tenant: str = "acme") -> FeedbackReceived:
    return FeedbackReceived(
        trace_id=trace_id, tenant=tenant, producer="test", data_type="BOOLEAN", value=True
    )


def test_rows_carry_their_traces_facts_per_tenant_and_refuse_out_of_range_values():
    data = Traces({("t1", "acme"): TraceFacts("rag", "2", "gpt")})
    out_of_range = FeedbackReceived(trace_id="t1", producer="test", data_type="NUMERIC", value=9)
    built = asyncio.run(rows([rated("t1"), rated("t1", "other"), out_of_range], data, FeedbackSettings()))
    linked, other, refused = built
    assert isinstance(linked, dict) and isinstance(other, dict) and isinstance(refused, PermanentError)
    assert (linked["trace_seen"], linked["template_version"], linked["model"]) == (True, "2", "gpt")
    assert (other["trace_seen"], other["template_version"]) == (False, "")  # never another tenant's trace


def test_the_linker_links_what_arrived_unlinked_once_its_trace_lands():
    data = Traces({})
    linker = Linker(data, settle_s=30)

    async def scenario() -> None:
        await linker.feedback_stored(
            [{"trace_id": "t5", "trace_seen": False}, {"trace_id": "t6", "trace_seen": True}]
        )
        await linker.telemetry_stored([{"trace_id": "t9"}])  # nobody waits for t9
        await linker.telemetry_stored([{"trace_id": "t5"}])
        await linker.link(sweep=True)
        await linker.link([])  # nothing named, no sweep: nothing to do

    asyncio.run(scenario())
    assert data.links == [(["t5"], 0), (["t5"], 0), ([], 30)]
    assert linker.pending == set()
