import json
from datetime import datetime

import pytest
from pydantic import ValidationError

from schemas import DeadLetter, InvalidEvent, QueryReceived, decode, encode
from schemas.export import EVENTS, SCHEMA_DIR, render


def query(**fields):
    return QueryReceived(trace_id="t-1", producer="test", question="What is a lambda?", **fields)


def test_round_trip_keeps_every_field():
    event = query(tenant="acme", top_k=3, user="u1")
    assert decode(encode(event), QueryReceived) == event


def test_events_are_frozen():
    with pytest.raises(ValidationError):
        query().question = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "not a valid QueryReceived"),
        (b'{"trace_id": "t", "producer": "p"}', "question: Field required"),
        (b'{"trace_id": "t", "producer": "p", "question": "q", "surprise": 1}', "surprise"),
        (b'{"trace_id": "t", "producer": "p", "question": "q", "top_k": "many"}', "top_k"),
    ],
)
def test_bad_bytes_raise_invalid_event_with_reason(payload, fragment):
    with pytest.raises(InvalidEvent) as caught:
        decode(payload, QueryReceived)
    assert fragment in str(caught.value)


def test_empty_message_is_invalid():
    with pytest.raises(InvalidEvent, match="empty message"):
        decode(None, QueryReceived)


def test_naive_timestamps_are_rejected():
    with pytest.raises(ValidationError):
        query(occurred_at=datetime(2026, 1, 1))  # noqa: DTZ001


@pytest.mark.parametrize("tenant", ["", "a b", 'x" or tenant != "', "ü", "a" * 65, "-lead"])
def test_tenant_alphabet_is_closed(tenant):
    with pytest.raises(ValidationError):
        query(tenant=tenant)


def test_dead_letter_carries_original_bytes_through_json():
    original = b"\x00\xff not json"
    letter = DeadLetter(
        trace_id="t",
        producer="p",
        stage="s",
        topic="q",
        partition=1,
        offset=7,
        original=original,
        error_type="InvalidEvent",
        reason="r",
        attempts=1,
        permanent=True,
    )
    assert json.loads(encode(letter))["original"] != original.decode("latin-1")
    assert decode(encode(letter), DeadLetter).original == original


@pytest.mark.parametrize("model", EVENTS, ids=lambda m: m.__name__)
def test_checked_in_json_schema_matches_model(model):
    path = SCHEMA_DIR / f"{model.__name__}.json"
    assert path.is_file(), f"missing {path}: run `python -m schemas.export`"
    assert path.read_text() == render(model), f"{path} is stale: run `python -m schemas.export`"


def test_no_stale_schema_files():
    names = {f"{m.__name__}.json" for m in EVENTS}
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == names
