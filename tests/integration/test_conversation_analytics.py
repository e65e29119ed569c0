"""Conversations in the analytics store (chDB; a ClickHouse server too when
LLMOPS_CLICKHOUSE__URL is set): the report's turns per conversation and share of turns
that used memory, and feedback joined per turn (each turn is its own trace)."""

from __future__ import annotations

from datetime import timedelta

from connectors.analytics import Analytics
from schemas import Served, utc_now
from tests.integration.analytics_fixtures import stage_event
from tests.integration.test_analytics_store import rating, store_feedback, write
from topology import report

DAY = timedelta(days=1)
START = utc_now() - timedelta(minutes=5)


def turn(trace: str, conversation: str, memory: int, version: str, status: str = "ok") -> list:
    """A question's prompting and generation rows; `memory`: earlier turns its prompts showed."""
    served = Served(prompt="rag", version=version)
    at = {"tenant": "acme", "started": START, "conversation_id": conversation, "served": served}
    return [
        stage_event(trace, "prompting", 2, status=status, memory_turns=memory, **at),
        stage_event(trace, "generation", 50, model=f"gpt-{version}", answer=f"answer of {trace}", **at),
    ]


async def test_the_report_shows_turns_per_conversation_and_the_share_that_used_memory(store):
    await write(
        store,
        turn("a1", "c-a", 0, "1")
        + turn("a2", "c-a", 1, "1")
        + turn("a3", "c-a", 2, "1")
        + turn("b1", "c-b", 0, "1")
        + turn("c1", "c-c", 0, "1")
        + turn("c2", "c-c", 1, "1", status="error")  # failed at prompting: not a turn here
        + turn("lone", "", 0, "1"),  # no conversation
    )
    analytics = Analytics(store)
    rows = (await analytics.turns_per_conversation(DAY)).dicts()
    assert [(r["turns"], r["conversations"], r["turns_with_memory"]) for r in rows] == [(1, 2, 0), (3, 1, 2)]
    assert (await analytics.turns_per_conversation(DAY, "other")).rows == []
    data = await report.collect(analytics, DAY)
    printed = report.text(data)
    assert "3 conversation(s), 5 turns (1.7 per conversation); 2 of 5 turns (40%) used memory" in printed
    assert [r[:4] for r in report._conversation_rows(data)] == [["1", 2, 2, 0], ["3", 1, 3, 2]]
    page = report.html(data)
    assert "Conversations by number of turns" in page and "2 of 5 turns (40%) used memory" in page


async def test_a_rating_of_one_turn_joins_that_turn_only(store):
    """Turns 1 and 2 of a conversation answered by different prompt versions: a rating of
    turn 2's trace is counted for turn 2's version and shows on turn 2's trace only."""
    await write(store, turn("t1", "c-1", 0, "1") + turn("t2", "c-1", 1, "2"))
    await store_feedback(store, [rating("t2", False)])
    analytics = Analytics(store)
    linked = (await store.query("SELECT trace_id, template_version, model FROM feedback FINAL")).rows
    assert linked == [["t2", "2", "gpt-2"]]
    by_version = (await analytics.feedback(DAY)).dicts()
    assert [(r["template_version"], r["events"], r["mean_score"]) for r in by_version] == [("2", 1, 0)]
    _, on_first = await analytics.trace("t1")
    _, on_second = await analytics.trace("t2")
    assert on_first.rows == [] and len(on_second.rows) == 1
