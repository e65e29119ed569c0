"""Conversation memory bounded by tokens: the remembered turns shown in prompts stay
within `conversation.memory_tokens` (counted as the prompt budget counts), the turns over
it fold into the rolling summary, and the conversation stage lets go of exactly the turns
the summary took in. Pure: no Kafka, no faust, no model."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from agents import conversation_nodes, prompting
from agents.config import PipelineSettings
from agents.conversation import ConversationSettings, step
from agents.conversation_nodes import over_budget, turn_tokens
from connectors.ports import Generation, TokenCount
from schemas import utc_now
from schemas.conversations import Turn
from tests.unit.test_conversation import WritingLLM, deps, done, prompt, turn

NOW = utc_now()


def turns(*answers: str) -> list[Turn]:
    return [Turn(trace_id=f"t{n}", question=f"q{n}", answer=a) for n, a in enumerate(answers, start=1)]


class CountingLLM(WritingLLM):
    """An LM backend with a tokenizer of its own (Budgeted): one token per word."""

    max_prompt_tokens = 512

    def __init__(self) -> None:
        super().__init__()
        self.counted: list[str] = []

    async def count_tokens(self, texts):
        self.counted += texts
        return TokenCount([len(t.split()) for t in texts], "server")

    async def generate(self, rendered):
        self.prompts.append(rendered)
        return Generation(text="They asked about q1 and q2.", citations=[], model="smol", usage_details={})


def test_the_newest_turns_that_fit_stay_and_the_last_always_does():
    assert over_budget([10, 10, 10], 30) == 0
    assert over_budget([10, 10, 10], 25) == 1  # the oldest leaves
    assert over_budget([10, 10, 10], 9) == 2  # the last stays even alone over the budget
    assert over_budget([5, 50, 10], 30) == 2  # newest first: stops at the first that does not fit
    assert over_budget([10, 10, 10], 0) == 0  # 0: no limit
    assert over_budget([], 10) == 0


def test_turns_are_counted_by_the_backends_tokenizer_else_by_characters():
    remembered = turns("x" * 37)
    # "User: q1\nAssistant: " + 37 characters = 57 characters: 15 tokens at 4 a token.
    assert asyncio.run(turn_tokens(remembered, deps().llm)) == [15]
    llm = CountingLLM()
    assert asyncio.run(turn_tokens(remembered, llm)) == [4]  # by its tokenizer: words here
    assert llm.counted == ["User: q1\nAssistant: " + "x" * 37]


def test_turns_over_the_token_budget_fold_into_the_summary_and_leave_the_prompts():
    llm = CountingLLM()
    d = deps(llm)
    d.conversation = ConversationSettings(memory_turns=4, memory_tokens=12)
    d.pipeline = PipelineSettings(prompt=prompt().model_dump(exclude={"version"}))
    # Each turn is "User:", "qN", "Assistant:" and its answer's four words: 7 tokens here.
    memory = turns("one two three four", "five six seven eight", "nine ten eleven twelve")
    follow_up = turn("And it?", "t9", memory=memory, unsummarized=turns("old")[:1])
    assembled = asyncio.run(prompting.handle(follow_up, d))
    spec = assembled.prompt
    assert [t.trace_id for t in spec.history] == ["t3"]  # 7 tokens fit in 12; 14 would not
    summarizing, condensing = llm.prompts
    # The summary takes in the unsummarized turn, then the two remembered ones over budget.
    assert "Turns to add:\nUser: q1\nAssistant: old\nUser: q1\nAssistant: one two" in summarizing.user
    assert "User: q2\nAssistant: five" in summarizing.user
    assert (spec.summary, spec.summarized) == ("They asked about q1 and q2.", 3)
    assert "Summary of earlier turns: They asked about q1 and q2." in condensing.user
    assert "User: q2" not in condensing.user and "User: q1" not in condensing.user
    assert "User: q3\nAssistant: nine" in condensing.user


def test_with_no_lm_the_turns_over_budget_are_only_left_out_of_the_prompt():
    d = deps()
    d.conversation = ConversationSettings(memory_tokens=10)
    memory = turns("a long answer " * 20, "short")
    summarized = asyncio.run(conversation_nodes.summarize(prompt(), turn("And?", "t9", memory=memory), d))
    assert (summarized.text, summarized.taken) == ("", 0)
    assert [t.trace_id for t in summarized.kept] == ["t2"]


def test_the_stage_lets_go_of_the_turns_the_summary_took_in_and_no_others():
    settings = ConversationSettings(memory_turns=3, retention_s=3600, turn_timeout_s=60)
    state = None
    for n in range(1, 5):
        state, _ = step(state, turn(f"q{n}", f"t{n}"), settings, NOW)
        state, _ = step(state, done(f"t{n}"), settings, NOW)
    assert state is not None
    assert [t.trace_id for t in state.turns] == ["t2", "t3", "t4"]
    assert [t.trace_id for t in state.unsummarized] == ["t1"]
    state, started = step(state, turn("q5", "t5"), settings, NOW)
    assert started is not None and [t.trace_id for t in started.memory] == ["t2", "t3", "t4"]
    # The summary took t1 (unsummarized) and t2, t3 (over the token budget).
    written = done("t5").model_copy(update={"summary": "t1 to t3.", "summarized": 3})
    state, _ = step(state, written, settings, NOW)
    assert state is not None and state.summary == "t1 to t3."
    assert [t.trace_id for t in state.turns] == ["t4", "t5"] and state.unsummarized == []
    # A summary that took in only part of the unsummarized list leaves the turns alone.
    state, _ = step(state, turn("q6", "t6"), settings, NOW)
    state, _ = step(state, done("t6").model_copy(update={"summary": "same", "summarized": 0}), settings, NOW)
    assert [t.trace_id for t in state.turns] == ["t4", "t5", "t6"]


def test_the_sweep_deletes_idle_conversations_of_owned_partitions_only():
    """A worker's table also holds standby copies of other workers' partitions: their
    idle-looking conversations are the owners' to delete (a stale copy could otherwise
    tombstone a conversation its owner just continued)."""
    from types import SimpleNamespace

    from faust.types import TP

    from topology.conversations import KeyedByText, key_partition, sweep_idle

    class Table(dict):
        changelog_topic = SimpleNamespace(get_topic_name=lambda: "app-conversations-changelog")

        def __init__(self) -> None:
            super().__init__()
            self.data, self.sent = self, []

        def send_changelog(self, partition, key, value, value_serializer=None):
            self.sent.append((partition, key, value))

    settings = ConversationSettings(retention_s=60, sweep_every_s=5)
    memory = KeyedByText(Table(), 4)
    long_ago = NOW - timedelta(hours=1)
    keys = [f"acme/c-{n}" for n in range(12)]
    for key in keys:
        idle, _ = step(None, turn("q", "t1", conversation_id=key.split("/")[1]), settings, long_ago)
        idle, _ = step(idle, done("t1", conversation_id=key.split("/")[1]), settings, long_ago)
        memory[key] = idle.model_dump_json().encode()
    mine = {key_partition(keys[0].encode(), 4)}
    timers = []
    app = SimpleNamespace(
        timer=lambda interval, name: lambda fn: timers.append((interval, fn)),
        assignor=SimpleNamespace(
            assigned_actives=lambda: (
                {TP("app-conversations-changelog", p) for p in mine} | {TP("app-turns", p) for p in range(4)}
            )  # another topic's partitions say nothing
        ),
    )
    sweep_idle(app, memory, settings)  # type: ignore[arg-type]
    [(interval, forget)] = timers
    asyncio.run(forget())
    assert interval == 5
    assert sorted(memory) == sorted(k for k in keys if key_partition(k.encode(), 4) not in mine)
    assert len(memory) < len(keys)  # some were deleted: the keys span several partitions


def test_the_prompting_row_says_how_many_earlier_turns_the_prompts_showed():
    from agents.telemetry import TelemetrySettings, stage_completed

    def row(memory: list[Turn]) -> int:
        query = turn("And it?", "t9", memory=memory)
        assembled = asyncio.run(prompting.handle(query, deps()))
        recorded = stage_completed("prompting", query, assembled, NOW, NOW, "t9", "acme", TelemetrySettings())
        assert recorded.conversation_id == "c-1"
        return recorded.memory_turns

    assert row([]) == 0
    assert row(turns("one", "two")) == 2


def test_conversation_show_prints_the_summary_and_each_turns_question_answer_and_trace():
    from schemas.conversations import ConversationState
    from topology.cli.conversation import conversation_text

    state = ConversationState(
        tenant="acme",
        conversation_id="c-1",
        turns=[
            Turn(trace_id="t3", question="q3", standalone="q2 q3", answer="a3", citations=["p-9"]),
            Turn(trace_id="t4", question="q4", answer="a4"),
        ],
        summary="They asked about lambdas.",
        turn_count=4,
    )
    row = {"stage": "condense", "latency_ms": 812.5, "input_tokens": 90, "output_tokens": 12}
    shown = conversation_text(state, {"t3": [row], "t4": []})
    assert "turns answered 4 (remembered: the last 2)" in shown
    assert "summary of the turns before these: They asked about lambdas." in shown
    assert "turn 3  trace t3" in shown and "searched as: q2 q3" in shown and "cited: p-9" in shown
    assert "trace: condense 812.5 ms (90+12 tok)" in shown
    assert "turn 4  trace t4" in shown and "trace: not in the analytics store (yet)" in shown
