"""The runtime's contract, with fake topics: decode -> handle -> emit with key ->
dead-letter, retries for transient errors, replies for failed requests."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest

from agents.runtime import Incoming, RuntimeSettings, StageRunner, per_event
from agents.telemetry import TelemetrySettings
from schemas import (
    DeadLetter,
    PromptAssembled,
    PromptSpec,
    QueryReceived,
    RequestFailed,
    Served,
    StageCompleted,
    decode,
    encode,
)
from schemas.errors import PermanentError, TransientError

SPEC = PromptSpec(
    served=Served(prompt="t", version="1", temperature=0),
    system="s",
    template="$question",
    variables={"question": "q"},
    retrieval_text="q",
    top_k=1,
    max_tokens=5,
)


class Topic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, key: bytes, value: bytes):
        self.sent.append((key, value))

        async def delivered() -> None:
            return None

        return delivered()


def message(value: bytes | None, offset: int = 0) -> Incoming:
    return Incoming(topic="queries", partition=2, offset=offset, key=b"k", value=value)


def query(trace: str, question: str = "q") -> bytes:
    return encode(QueryReceived(trace_id=trace, producer="test", question=question, tenant="acme"))


def runner(handler, attempts: int = 3) -> tuple[StageRunner, Topic, Topic, Topic]:
    out, dlq, replies = Topic(), Topic(), Topic()
    stage = StageRunner(
        name="prompting",
        input_model=QueryReceived,
        handler=handler,
        deps=None,
        emit=out.send,
        dead_letter=dlq.send,
        reply=replies.send,
        settings=RuntimeSettings(max_attempts=attempts, backoff_s=0.001),
    )
    return stage, out, dlq, replies


async def assemble(event: QueryReceived, deps: object) -> PromptAssembled:
    if event.question == "bad":
        raise PermanentError("question refused")
    return event.follow(PromptAssembled, "prompting", prompt=SPEC)


async def test_good_events_are_emitted_keyed_by_trace_with_stage_latency():
    stage, out, dlq, _ = runner(per_event(assemble))
    await stage.process([message(query("t1")), message(query("t2"))])
    assert [k for k, _ in out.sent] == [b"t1", b"t2"]
    emitted = decode(out.sent[0][1], PromptAssembled)
    assert emitted.trace_id == "t1" and emitted.tenant == "acme"
    assert emitted.latency_ms["prompting"] >= 0
    assert dlq.sent == []


async def test_undecodable_bytes_are_dead_lettered_and_the_batch_goes_on():
    stage, out, dlq, replies = runner(per_event(assemble))
    await stage.process([message(b"\x00garbage", offset=5), message(query("t3"), offset=6)])
    assert [k for k, _ in out.sent] == [b"t3"]
    letter = decode(dlq.sent[0][1], DeadLetter)
    assert (letter.original, letter.key, letter.topic, letter.partition, letter.offset) == (
        b"\x00garbage",
        b"k",
        "queries",
        2,
        5,
    )
    assert letter.error_type == "InvalidEvent" and letter.permanent and letter.attempts == 1
    assert replies.sent == []  # no trace id to reply to


async def test_schema_violation_with_a_trace_id_gets_a_reply():
    stage, _, dlq, replies = runner(per_event(assemble))
    await stage.process([message(b'{"trace_id": "t9", "tenant": "acme", "question": 7}')])
    failure = decode(replies.sent[0][1], RequestFailed)
    assert (replies.sent[0][0], failure.trace_id, failure.tenant) == (b"t9", "t9", "acme")
    assert decode(dlq.sent[0][1], DeadLetter).trace_id == "t9"


async def test_permanent_errors_are_not_retried():
    calls = []

    async def handler(event, deps):
        calls.append(event.trace_id)
        return await assemble(event, deps)

    stage, out, dlq, replies = runner(per_event(handler))
    await stage.process([message(query("t4", "bad")), message(query("t5"))])
    assert calls == ["t4", "t5"]
    assert decode(dlq.sent[0][1], DeadLetter).reason == "question refused"
    assert decode(replies.sent[0][1], RequestFailed).stage == "prompting"
    assert [k for k, _ in out.sent] == [b"t5"]


async def test_transient_errors_are_retried_then_succeed():
    failures = {"t6": 2}

    async def flaky(event, deps):
        if failures.get(event.trace_id, 0) > 0:
            failures[event.trace_id] -= 1
            raise TransientError("busy")
        return await assemble(event, deps)

    stage, out, dlq, _ = runner(per_event(flaky), attempts=3)
    await stage.process([message(query("t6")), message(query("t7"))])
    assert sorted(k for k, _ in out.sent) == [b"t6", b"t7"]
    assert dlq.sent == []


async def test_transient_errors_dead_letter_after_the_last_attempt():
    async def down(event, deps):
        raise TransientError("still down")

    stage, out, dlq, replies = runner(per_event(down), attempts=3)
    await stage.process([message(query("t8"))])
    letter = decode(dlq.sent[0][1], DeadLetter)
    assert (letter.attempts, letter.permanent, letter.error_type) == (3, False, "TransientError")
    assert out.sent == [] and len(replies.sent) == 1


async def test_a_crashing_batch_handler_dead_letters_its_batch_without_stopping():
    async def broken(events: Sequence[QueryReceived], deps):
        raise ZeroDivisionError("bug")

    stage, out, dlq, _ = runner(broken)
    await stage.process([message(query("a")), message(query("b"))])
    assert [decode(v, DeadLetter).error_type for _, v in dlq.sent] == ["ZeroDivisionError"] * 2


async def test_a_poison_event_does_not_sink_its_batch():
    async def picky(events: Sequence[QueryReceived], deps):
        if any(e.question == "bad" for e in events):
            raise PermanentError("batch contains a bad one")
        return [e.follow(PromptAssembled, "prompting", prompt=SPEC) for e in events]

    stage, out, dlq, _ = runner(picky)
    await stage.process([message(query("a")), message(query("b", "bad")), message(query("c"))])
    assert [k for k, _ in out.sent] == [b"a", b"c"]
    assert [decode(v, DeadLetter).trace_id for _, v in dlq.sent] == ["b"]


async def test_a_handler_returning_the_wrong_number_of_results_is_caught():
    async def short(events, deps):
        return []

    stage, _, dlq, _ = runner(short)
    await stage.process([message(query("a"))])
    assert "returned 0 results for 1 events" in decode(dlq.sent[0][1], DeadLetter).reason


@pytest.mark.parametrize("value", [None, b"", b"[]", b"null", b'"string"'])
async def test_odd_payloads_never_escape_the_runtime(value):
    stage, _, dlq, _ = runner(per_event(assemble))
    await stage.process([message(value)])
    assert decode(dlq.sent[0][1], DeadLetter).error_type == "InvalidEvent"


async def test_every_handled_event_is_reported_once_with_its_outcome():
    telemetry = Topic()
    stage, out, dlq, _ = runner(per_event(assemble))
    stage = dataclasses.replace(stage, telemetry=telemetry.send)
    await stage.process([message(query("ok")), message(query("no", "bad")), message(b"{not json", offset=3)])
    reports = [decode(v, StageCompleted) for _, v in telemetry.sent]
    assert len(reports) == 3
    by_trace = {r.trace_id: r for r in reports}
    assert by_trace["ok"].status == "ok" and by_trace["ok"].stage == "prompting"
    assert by_trace["ok"].served.version == "1" and by_trace["ok"].question == "q"
    assert by_trace["no"].status == "error" and by_trace["no"].error_class == "PermanentError"
    undecodable = [r for r in reports if r.trace_id not in ("ok", "no")]
    assert undecodable[0].error_class == "InvalidEvent"
    assert all(r.ended_at >= r.started_at and r.latency_ms >= 0 for r in reports)


async def test_telemetry_can_be_switched_off():
    telemetry = Topic()
    stage, *_ = runner(per_event(assemble))
    stage = dataclasses.replace(
        stage, telemetry=telemetry.send, telemetry_settings=TelemetrySettings(enabled=False)
    )
    await stage.process([message(query("ok"))])
    assert telemetry.sent == []


def chained(then_handler) -> tuple[StageRunner, Topic, Topic, Topic, Topic]:
    """prompting chained to a second stage (`worker.chain_stages`): prompting's own topic,
    the second stage's topic, the dead letters and the replies."""
    first, skipped, dlq, replies = runner(per_event(assemble))
    out = Topic()
    then = dataclasses.replace(
        first,
        name="checking",
        input_model=PromptAssembled,
        handler=per_event(then_handler),
        emit=out.send,
        topic="prompts",
    )
    return dataclasses.replace(first, then=then), skipped, out, dlq, replies


async def check(event: PromptAssembled, deps: object) -> PromptAssembled:
    if event.trace_id == "refused":
        raise PermanentError("refused downstream")
    return event.follow(PromptAssembled, "checking", prompt=SPEC, latency_ms=event.latency_ms)


async def test_a_chained_stage_takes_the_outputs_in_process_and_the_batch_waits_for_it():
    stage, skipped, out, dlq, _ = chained(check)
    deliveries = await stage.dispatch([message(query("t1")), message(query("t2"))])
    await asyncio.gather(*deliveries)  # what the consumer awaits before storing offsets
    assert skipped.sent == [] and dlq.sent == []
    assert [k for k, _ in out.sent] == [b"t1", b"t2"]
    assert set(decode(out.sent[0][1], PromptAssembled).latency_ms) == {"prompting", "checking"}


async def test_a_chained_stage_that_fails_an_event_dead_letters_it_replayably():
    stage, skipped, out, dlq, replies = chained(check)
    await stage.process([message(query("refused")), message(query("fine"))])
    assert [k for k, _ in out.sent] == [b"fine"] and skipped.sent == []
    letter = decode(dlq.sent[0][1], DeadLetter)
    assert (letter.stage, letter.topic, letter.partition, letter.offset, letter.key) == (
        "checking",
        "prompts",
        -1,
        -1,
        b"refused",
    )
    # The original is what the topic would have carried: replaying it there works.
    assert decode(letter.original, PromptAssembled).trace_id == "refused"
    assert decode(replies.sent[0][1], RequestFailed).stage == "checking"


async def test_a_chained_stage_whose_delivery_fails_fails_the_first_batch():
    stage, _, out, _, _ = chained(check)

    async def refused(key: bytes, value: bytes):
        async def failed() -> None:
            raise KafkaDeliveryFailed("broker said no")

        return failed()

    stage = dataclasses.replace(stage, then=dataclasses.replace(stage.then, emit=refused))
    with pytest.raises(KafkaDeliveryFailed):
        await stage.process([message(query("t1"))])


class KafkaDeliveryFailed(Exception):
    pass


class Log:
    """Topics that write what they were sent, in order, to one log."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def topic(self, name: str):
        async def send(key: bytes, value: bytes):
            stage = decode(value, StageCompleted).stage if name == "telemetry" else ""
            self.entries.append((name, f"{key.decode()} {stage}".strip()))

            async def delivered() -> None:
                return None

            return delivered()

        return send


async def test_a_chain_sends_its_stages_reports_together_with_its_last_outputs():
    stage, *_ = chained(check)
    log = Log()
    then = dataclasses.replace(stage.then, emit=log.topic("out"), telemetry=log.topic("telemetry"))
    stage = dataclasses.replace(stage, then=then, telemetry=log.topic("telemetry"))
    await stage.process([message(query("t1")), message(query("bad", "bad"), offset=1)])
    # prompting's reports (its failure of "bad" too) go with the last stage's, before them.
    assert log.entries == [
        ("out", "t1"),
        ("telemetry", "t1 prompting"),
        ("telemetry", "bad prompting"),
        ("telemetry", "t1 checking"),
    ]


async def test_a_chain_whose_first_stage_passes_nothing_on_still_reports():
    stage, *_ = chained(check)
    log = Log()
    stage = dataclasses.replace(stage, telemetry=log.topic("telemetry"))
    await stage.process([message(query("bad", "bad"))])
    assert log.entries == [("telemetry", "bad prompting")]
