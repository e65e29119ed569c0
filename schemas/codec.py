"""Topics carry bytes; this codec turns them into events and back. Decoding happens in
our runtime (never in faust's codec) so one bad message cannot crash an agent."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from schemas.errors import InvalidEvent

M = TypeVar("M", bound=BaseModel)

# A reason travels in dead letters and error responses; keep it readable.
_MAX_REASON = 2_000


def encode(event: BaseModel) -> bytes:
    return event.model_dump_json().encode()


def decode(data: bytes | None, model: type[M]) -> M:
    """Parse and validate `data` as `model`, or raise InvalidEvent with a readable reason."""
    if data is None:
        raise InvalidEvent(f"empty message where a {model.__name__} was expected")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidEvent(describe(exc, model.__name__)) from exc


def decode_kind(data: bytes | None, kinds: Mapping[str, type[M]], what: str) -> M:
    """Decode a topic that carries several kinds of event as the kind its `event_type`
    names (alerts, index changes); anything else is InvalidEvent naming `what`."""
    try:
        kind = json.loads(data or b"").get("event_type")
    except (ValueError, UnicodeDecodeError, RecursionError, AttributeError) as exc:
        raise InvalidEvent(f"not {what}: {str(exc)[:200]}") from exc
    model = kinds.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidEvent(f"not {what}: event_type {kind!r} is not one of {sorted(kinds)}")
    return decode(data, model)


def describe(exc: ValidationError, name: str) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_url=False)[:10]
    )
    return f"not a valid {name}: {problems}"[:_MAX_REASON]
