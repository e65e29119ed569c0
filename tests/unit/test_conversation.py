"""Conversation memory and ordering, condense, user variables: the pure parts, with no
Kafka and no faust (the stage's memory is a dict here, a faust table in the worker)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import ValidationError

from agents import conversation, conversation_nodes, generation, prompting
from agents.config import PipelineSettings
from agents.conversation import ConversationSettings, step
from agents.deps import Dependencies
from agents.telemetry import TelemetrySettings
from connectors.llm import ExtractiveBackend, LLMSettings
from connectors.ports import Generation
from schemas import (
    ContextRetrieved,
    PermanentError,
    QueryReceived,
    ResponseGenerated,
    decode,
    encode,
    utc_now,
)
from schemas.conversations import FINISHED_KEPT, ConversationState, Turn, TurnCompleted, conversation_key
from schemas.prompts import PromptVersion, VariableSpec
from schemas.telemetry import StageCompleted

SETTINGS = ConversationSettings(memory_turns=2, retention_s=3600, turn_timeout_s=60)
NOW = utc_now()


def turn(
    question: str, trace: str, conversation_id: str = "c-1", tenant: str = "acme", **fields
) -> QueryReceived:
    return QueryReceived(
        trace_id=trace,
        producer="test",
        question=question,
        tenant=tenant,
        conversation_id=conversation_id,
        **fields,
    )


def done(
    trace: str, answer: str = "an answer", ok: bool = True, conversation_id: str = "c-1"
) -> TurnCompleted:
    remembered = (
        Turn(trace_id=trace, question=f"q of {trace}", answer=answer, citations=["p-1"]) if ok else None
    )
    return TurnCompleted(
        trace_id=trace,
        producer="test",
        tenant="acme",
        conversation_id=conversation_id,
        ok=ok,
        turn=remembered,
    )


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("acme", "c1"), ("beta", "c1")),
        (("acme", "x/c1"), ("acme-x", "c1")),
        (("beta", "acme/c1"), ("acme", "c1")),
        (("acme", "beta/acme/c1"), ("acme", "beta")),
        (("a", "b/c"), ("a.b", "c")),
    ],
)
def test_no_id_of_one_tenant_names_a_conversation_of_another(a, b):
    assert conversation_key(*a) != conversation_key(*b)
    # The key splits back at its first "/" into the tenant it was made for.
    for tenant, conversation_id in (a, b):
        assert conversation_key(tenant, conversation_id).split("/", 1) == [tenant, conversation_id]


def test_conversation_ids_and_variables_are_bounded_at_the_edge():
    with pytest.raises(ValidationError):
        turn("q", "t", conversation_id="bad\nid")
    with pytest.raises(ValidationError):
        turn("q", "t", conversation_id="x" * 129)
    with pytest.raises(ValidationError, match="variables"):
        turn("q", "t", variables={f"v{i}": "x" for i in range(17)})
    with pytest.raises(ValidationError, match="variables"):
        turn("q", "t", variables={"audience": "x" * 1001})
    with pytest.raises(ValidationError, match="variables"):
        turn("q", "t", variables={"not a name": "x"})
    ok = turn("q", "t", variables={"audience": "beginner"})
    assert decode(encode(ok), QueryReceived) == ok


def test_older_queries_without_the_new_fields_still_decode():
    old = b'{"trace_id": "t", "producer": "p", "question": "q", "schema_version": 2}'
    query = decode(old, QueryReceived)
    assert (query.conversation_id, query.variables, query.memory) == (None, {}, [])


# --- the conversation stage's state machine ---------------------------------------------------


def test_a_turn_waits_for_the_previous_turn_and_then_carries_it_in_memory():
    state, started = step(None, turn("What is a lambda?", "t1"), SETTINGS, NOW)
    assert started is not None and started.trace_id == "t1" and started.memory == []
    assert state is not None and state.in_flight == "t1"

    state, started = step(state, turn("Can it contain statements?", "t2"), SETTINGS, NOW)
    assert started is None and state is not None and state.in_flight == "t1" and len(state.pending) == 1

    state, started = step(state, done("t1", "Lambdas are anonymous functions."), SETTINGS, NOW)
    assert started is not None and started.trace_id == "t2"
    assert [t.answer for t in started.memory] == ["Lambdas are anonymous functions."]
    assert started.producer == conversation.STAGE
    assert state is not None and state.in_flight == "t2" and state.pending == [] and state.turn_count == 1


def test_redelivered_events_change_nothing_but_an_in_flight_turn_is_sent_again():
    state, _ = step(None, turn("q1", "t1"), SETTINGS, NOW)
    state, _ = step(state, turn("q2", "t2"), SETTINGS, NOW)
    again, started = step(state, turn("q1", "t1"), SETTINGS, NOW)
    assert again == state and started is not None and started.trace_id == "t1"
    again, started = step(state, turn("q2", "t2"), SETTINGS, NOW)
    assert again == state and started is None
    state, _ = step(state, done("t1"), SETTINGS, NOW)
    again, started = step(state, done("t1"), SETTINGS, NOW)  # a duplicate completion
    assert again == state and started is None
    again, started = step(state, turn("q1", "t1"), SETTINGS, NOW)  # an answered turn, redelivered
    assert again == state and started is None


def test_a_turn_that_is_over_never_starts_again_when_its_question_is_redelivered():
    # t1 failed, t2 was given up on (turn timeout), t3 and t4 were answered and t3 left
    # the memory (N = 2): a crash redelivers all four questions behind t5's.
    state, _ = step(None, turn("q1", "t1"), SETTINGS, NOW)
    state, _ = step(state, done("t1", ok=False), SETTINGS, NOW)
    state, _ = step(state, turn("q2", "t2"), SETTINGS, NOW)
    late = NOW + timedelta(seconds=61)
    state, _ = step(state, turn("q3", "t3"), SETTINGS, late)
    for n in (3, 4):
        state, _ = step(state, done(f"t{n}"), SETTINGS, late)
        state, _ = step(state, turn(f"q{n + 1}", f"t{n + 1}"), SETTINGS, late)
    state, _ = step(state, done("t5"), SETTINGS, late)
    assert state is not None and [t.trace_id for t in state.turns] == ["t4", "t5"]
    assert state.finished == ["t1", "t2", "t3", "t4", "t5"]
    for n in (1, 2, 3, 4):
        again, started = step(state, turn(f"q{n}", f"t{n}"), SETTINGS, late)
        assert again == state and started is None, f"t{n} started again"


def test_only_the_last_finished_turns_are_kept():
    state = None
    for n in range(FINISHED_KEPT + 3):
        state, _ = step(state, turn(f"q{n}", f"t{n}"), SETTINGS, NOW)
        state, _ = step(state, done(f"t{n}"), SETTINGS, NOW)
    assert state is not None and state.finished == [f"t{n}" for n in range(3, FINISHED_KEPT + 3)]


def test_a_state_stored_before_finished_was_kept_still_ignores_its_remembered_turns():
    state, _ = step(None, turn("q1", "t1"), SETTINGS, NOW)
    state, _ = step(state, done("t1"), SETTINGS, NOW)
    assert state is not None
    stored = state.model_dump(mode="json")
    del stored["finished"]
    old = ConversationState.model_validate(stored)
    again, started = step(old, turn("q1", "t1"), SETTINGS, NOW)
    assert again == old and started is None


def test_memory_keeps_the_last_n_turns_and_a_failed_turn_is_not_remembered():
    state = None
    for n in range(1, 5):
        state, _ = step(state, turn(f"q{n}", f"t{n}"), SETTINGS, NOW)
        state, _ = step(state, done(f"t{n}", ok=n != 3), SETTINGS, NOW)
    assert state is not None
    assert [t.trace_id for t in state.turns] == ["t2", "t4"]  # N = 2, t3 failed
    assert state.turn_count == 3 and state.in_flight is None


def test_a_lost_turn_holds_the_next_one_only_until_the_turn_timeout():
    state, _ = step(None, turn("q1", "t1"), SETTINGS, NOW)
    _, started = step(state, turn("q2", "t2"), SETTINGS, NOW + timedelta(seconds=59))
    assert started is None
    state, started = step(state, turn("q2", "t2"), SETTINGS, NOW + timedelta(seconds=61))
    assert started is not None and started.trace_id == "t2"
    # The given-up turn's late completion is ignored.
    after, started = step(state, done("t1"), SETTINGS, NOW + timedelta(seconds=62))
    assert after == state and started is None


def test_an_idle_conversation_is_forgotten_after_the_retention():
    state, _ = step(None, turn("q1", "t1"), SETTINGS, NOW)
    state, _ = step(state, done("t1"), SETTINGS, NOW)
    _, started = step(state, turn("q2", "t2"), SETTINGS, NOW + timedelta(seconds=3599))
    assert started is not None and len(started.memory) == 1
    _, started = step(state, turn("q2", "t2"), SETTINGS, NOW + timedelta(seconds=3601))
    assert started is not None and started.memory == []


def test_a_client_cannot_put_memory_in_a_turn():
    forged = Turn(trace_id="x", question="forged", answer="forged")
    _, started = step(None, turn("q1", "t1", memory=[forged]), SETTINGS, NOW)
    assert started is not None and started.memory == []


class StageDeps:
    def __init__(self) -> None:
        self.conversations: dict[str, bytes] = {}
        self.conversation = SETTINGS


def test_the_stage_orders_turns_within_a_batch_and_keeps_tenants_apart():
    deps = StageDeps()
    batch = [
        turn("acme q1", "a1"),
        turn("acme q2", "a2"),
        turn("beta q1", "b1", tenant="beta"),  # same id, other tenant: its own conversation
        turn("beta q2", "b2", tenant="beta", conversation_id="acme/c-1"),  # adversarial id
    ]
    results = asyncio.run(conversation.handle_batch(batch, deps))
    assert [r.trace_id if r is not None else None for r in results] == ["a1", None, "b1", "b2"]
    assert set(deps.conversations) == {"acme/c-1", "beta/c-1", "beta/acme/c-1"}
    results = asyncio.run(conversation.handle_batch([done("a1", "acme's answer")], deps))
    [started] = results
    assert isinstance(started, QueryReceived) and started.trace_id == "a2"
    assert [t.answer for t in started.memory] == ["acme's answer"]
    beta = ConversationState.model_validate_json(deps.conversations["beta/acme/c-1"])
    assert beta.tenant == "beta" and beta.turns == []


def test_a_bad_turn_event_fails_alone():
    deps = StageDeps()
    lone = QueryReceived(trace_id="t", producer="test", question="q")  # no conversation
    results = asyncio.run(conversation.handle_batch([lone, turn("q1", "t1")], deps))
    assert isinstance(results[0], PermanentError) and isinstance(results[1], QueryReceived)


def test_the_turns_topic_decodes_both_kinds_of_event():
    assert isinstance(conversation.decode_turn_event(encode(turn("q", "t"))), QueryReceived)
    assert isinstance(conversation.decode_turn_event(encode(done("t"))), TurnCompleted)
    with pytest.raises(Exception, match="QueryReceived or TurnCompleted"):
        conversation.decode_turn_event(b'{"nonsense": 1}')


# --- prompting: variables and condense ---------------------------------------------------------


def prompt(**fields) -> PromptVersion:
    return PromptVersion(
        **{"name": "rag-answer", "system": "s", "template": "$context\n$question", **fields}  # type: ignore[arg-type]
    )


def deps(llm=None) -> Dependencies:
    return Dependencies(
        pipeline=PipelineSettings(),
        embedder=None,  # type: ignore[arg-type]  # prompting embeds nothing
        store=None,  # type: ignore[arg-type]
        llm=llm or ExtractiveBackend(LLMSettings()),
    )


AUDIENCE = {
    "template": "For a $audience reader:\n$context\n$question",
    "variables": {"audience": VariableSpec(max_chars=10)},
}


def test_declared_variables_are_rendered_and_checked():
    values = conversation.template_variables(
        prompt(**AUDIENCE), turn("q", "t", variables={"audience": "beginner"})
    )
    assert values == {"audience": "beginner"}
    with pytest.raises(PermanentError, match="needs the variable 'audience'"):
        conversation.template_variables(prompt(**AUDIENCE), turn("q", "t"))
    with pytest.raises(PermanentError, match="11 characters; the limit is 10"):
        conversation.template_variables(prompt(**AUDIENCE), turn("q", "t", variables={"audience": "x" * 11}))
    optional = {**AUDIENCE, "variables": {"audience": VariableSpec(required=False)}}
    assert conversation.template_variables(prompt(**optional), turn("q", "t")) == {"audience": ""}
    with pytest.raises(PermanentError, match=r"uses \$product but declares no such variable"):
        conversation.template_variables(prompt(template="$product $question $context"), turn("q", "t"))


def test_reserved_names_cannot_be_declared_and_new_fields_keep_old_versions():
    with pytest.raises(ValidationError, match="filled by the pipeline"):
        prompt(variables={"question": VariableSpec()})
    # Left at their defaults, the fields added for conversations leave the hash alone.
    assert prompt().version == prompt(condense=True, variables={}).version
    assert prompt().version != prompt(condense=False).version
    assert PipelineSettings().prompt.version == "68bab262e8be"  # the built-in: conversations left it alone


def test_prompting_renders_variables_and_refuses_a_missing_one():
    from agents.routing import Registry

    d = deps()
    d.pipeline = PipelineSettings(prompt=prompt(**AUDIENCE).model_dump(exclude={"version"}))
    d.registry = Registry({})
    assembled = asyncio.run(prompting.handle(turn("What is x?", "t", variables={"audience": "novice"}), d))
    assert assembled.prompt.variables == {"audience": "novice", "question": "What is x?"}
    with pytest.raises(PermanentError, match="needs the variable"):
        asyncio.run(prompting.handle(turn("What is x?", "t"), d))


def remembered(*questions: str) -> list[Turn]:
    return [Turn(trace_id=f"t{n}", question=q, answer=f"answer {n}") for n, q in enumerate(questions)]


def test_extractive_condense_prepends_the_previous_question():
    follow_up = turn("Can it contain statements?", "t2", memory=remembered("What is a lambda expression?"))
    condensed = asyncio.run(conversation_nodes.condense(prompt(), follow_up, follow_up.question, deps()))
    assert condensed.text == "What is a lambda expression? Can it contain statements?"
    assert condensed.model == ""
    first = turn("What is a lambda expression?", "t1")
    assert (
        asyncio.run(conversation_nodes.condense(prompt(), first, first.question, deps())).text
        == first.question
    )
    off = asyncio.run(
        conversation_nodes.condense(prompt(condense=False), follow_up, follow_up.question, deps())
    )
    assert off.text == follow_up.question


class WritingLLM:
    name = "openai"

    def __init__(self) -> None:
        self.prompts = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, rendered):
        self.prompts.append(rendered)
        return Generation(
            text='"Can a lambda expression contain statements?"\n',
            citations=[],
            model="smol",
            usage_details={"input": 40, "output": 9},
        )


def test_lm_condense_uses_the_prompt_versions_own_settings_and_reports_its_row():
    llm = WritingLLM()
    d = deps(llm)
    version = prompt(condense_temperature=0.3, condense_seed=11, condense_max_tokens=40)
    d.pipeline = PipelineSettings(prompt=version.model_dump(exclude={"version"}))
    follow_up = turn("Can it contain statements?", "t2", memory=remembered("What is a lambda expression?"))
    assembled = asyncio.run(prompting.handle(follow_up, d))
    [sent] = llm.prompts
    assert (sent.temperature, sent.seed, sent.max_tokens) == (0.3, 11, 40)
    assert "User: What is a lambda expression?" in sent.user and "Can it contain statements?" in sent.user
    spec = assembled.prompt
    assert spec.retrieval_text == "Can a lambda expression contain statements?"
    assert spec.variables["question"] == "Can it contain statements?"
    assert spec.history == follow_up.memory and spec.conversation_id == "c-1"
    said = conversation.announcements(follow_up, assembled, TelemetrySettings())
    [(field, key, row)] = said
    assert field == "telemetry" and key == b"t2" and isinstance(row, StageCompleted)
    assert (row.stage, row.model, row.input_tokens, row.output_tokens) == ("condense", "smol", 40, 9)
    assert row.conversation_id == "c-1" and row.latency_ms == spec.condense_ms


def test_the_answer_prompt_shows_the_earlier_turns():
    from schemas import PromptSpec, Served

    spec = PromptSpec(
        served=Served(prompt="p", version="v", temperature=0.0),
        system="s",
        template="Passages:\n$context\n\nQuestion: $question",
        variables={"question": "Can it contain statements?"},
        retrieval_text="x",
        top_k=1,
        max_tokens=10,
        history=remembered("What is a lambda expression?"),
    )
    event = ContextRetrieved(trace_id="t", producer="test", prompt=spec, passages=[])
    user = generation.render(event).user
    assert user.startswith(
        "Earlier in this conversation:\nUser: What is a lambda expression?\nAssistant: answer 0"
    )
    placed = spec.model_copy(update={"template": "$history\n--\n$context $question"})
    user = generation.render(event.model_copy(update={"prompt": placed})).user
    assert user.startswith("User: What is a lambda expression?") and "Earlier" not in user


# --- what the query path announces -------------------------------------------------------------


def test_an_answer_or_a_failure_announces_the_turn_over_keyed_by_conversation():
    from schemas import PromptSpec, Served

    spec = PromptSpec(
        served=Served(prompt="p", version="v", temperature=0.0),
        system="s",
        template="t",
        variables={"question": "Can it?"},
        retrieval_text="What is a lambda? Can it?",
        top_k=1,
        max_tokens=10,
        conversation_id="c-1",
    )
    source = ContextRetrieved(trace_id="t2", tenant="acme", producer="test", prompt=spec, passages=[])
    answer = source.follow(
        ResponseGenerated,
        "generation",
        question="Can it?",
        answer="No.",
        citations=["p-1"],
        passages=[],
        model="extractive",
        served=spec.served,
    )
    [(field, key, event)] = conversation.announcements(source, answer, TelemetrySettings())
    assert (field, key) == ("turns", b"acme/c-1")
    assert isinstance(event, TurnCompleted) and event.ok and event.trace_id == "t2"
    assert event.turn is not None and (event.turn.standalone, event.turn.citations) == (
        "What is a lambda? Can it?",
        ["p-1"],
    )
    [(_, _, failed)] = conversation.announcements(source, PermanentError("boom"), TelemetrySettings())
    assert isinstance(failed, TurnCompleted) and not failed.ok and failed.reason == "boom"
    lone = source.model_copy(update={"prompt": spec.model_copy(update={"conversation_id": None})})
    assert conversation.announcements(lone, answer, TelemetrySettings()) == []


def test_the_sweep_forgets_idle_conversations_only():
    memory: dict[str, bytes] = {}
    for name, since in (("idle", 3601), ("recent", 10)):
        state, _ = step(
            None, turn("q1", f"{name}-1", conversation_id=name), SETTINGS, NOW - timedelta(seconds=since)
        )
        state, _ = step(
            state, done(f"{name}-1", conversation_id=name), SETTINGS, NOW - timedelta(seconds=since)
        )
        memory[conversation_key("acme", name)] = state.model_dump_json().encode()
    # Idle for long, but a turn is still being answered: kept.
    waiting, _ = step(
        None, turn("q1", "w-1", conversation_id="waiting"), SETTINGS, NOW - timedelta(seconds=9999)
    )
    memory[conversation_key("acme", "waiting")] = waiting.model_dump_json().encode()
    assert conversation.expired(memory, SETTINGS, NOW) == ["acme/idle"]


def test_turns_that_leave_the_memory_wait_for_the_summary_and_leave_the_list_once_taken_in():
    state = None
    for n in range(1, 5):
        state, _ = step(state, turn(f"q{n}", f"t{n}"), SETTINGS, NOW)
        state, _ = step(state, done(f"t{n}"), SETTINGS, NOW)
    assert state is not None
    assert [t.trace_id for t in state.turns] == ["t3", "t4"]
    assert [t.trace_id for t in state.unsummarized] == ["t1", "t2"] and state.summary == ""
    state, started = step(state, turn("q5", "t5"), SETTINGS, NOW)
    assert started is not None and [t.trace_id for t in started.unsummarized] == ["t1", "t2"]
    written = done("t5").model_copy(update={"summary": "t1 and t2 were about x.", "summarized": 2})
    state, _ = step(state, written, SETTINGS, NOW)
    assert state is not None and state.summary == "t1 and t2 were about x."
    assert [t.trace_id for t in state.turns] == ["t4", "t5"]
    assert [t.trace_id for t in state.unsummarized] == ["t3"]  # left after the summary was written
    # With no LM (the summary never changes) the list stays bounded: the oldest are dropped.
    for n in range(6, 10):
        state, _ = step(state, turn(f"q{n}", f"t{n}"), SETTINGS, NOW)
        state, _ = step(state, done(f"t{n}"), SETTINGS, NOW)
    assert len(state.unsummarized) == SETTINGS.memory_turns


def test_the_summarize_node_folds_older_turns_into_the_summary_condense_and_the_answer_see():
    llm = WritingLLM()
    d = deps(llm)
    d.pipeline = PipelineSettings(prompt=prompt(summarize_temperature=0.1).model_dump(exclude={"version"}))
    follow_up = turn(
        "Can it contain statements?",
        "t9",
        memory=remembered("What is a lambda expression?"),
        summary="",
        unsummarized=remembered("What is a generator?"),
    )
    assembled = asyncio.run(prompting.handle(follow_up, d))
    summarizing, condensing = llm.prompts
    assert "Turns to add:\nUser: What is a generator?" in summarizing.user and summarizing.temperature == 0.1
    spec = assembled.prompt
    written = '"Can a lambda expression contain statements?"'  # what WritingLLM writes, one line
    assert (spec.summary, spec.summarized, spec.summarize_model) == (written, 1, "smol")
    assert f"Summary of earlier turns: {written}" in condensing.user
    rows = conversation.announcements(follow_up, assembled, TelemetrySettings())
    assert [(r.stage, r.output_tokens) for _, _, r in rows] == [("condense", 9), ("summarize", 9)]
    # Extractive: no summary is written; the turns are dropped instead.
    plain = asyncio.run(conversation_nodes.summarize(prompt(), follow_up, deps()))
    assert (plain.text, plain.taken) == ("", 0)


def test_table_writes_go_to_the_partition_the_producers_put_the_key_in():
    from aiokafka.partitioner import DefaultPartitioner

    from topology.conversations import KeyedByText, key_partition

    for key in (b"acme/c-1", b"beta/acme/c-1", b"t/" + "ü".encode() * 40):
        assert key_partition(key, 6) == DefaultPartitioner()(key, list(range(6)), list(range(6)))

    class Table(dict):
        def __init__(self) -> None:
            super().__init__()
            self.data, self.sent = self, []

        def send_changelog(self, partition, key, value, value_serializer=None):
            self.sent.append((partition, key, value))

    table = Table()
    memory = KeyedByText(table, 6)
    memory["acme/c-1"] = b"state"
    del memory["acme/c-1"]
    partition = key_partition(b"acme/c-1", 6)
    assert table.sent == [(partition, b"acme/c-1", b"state"), (partition, b"acme/c-1", None)]
