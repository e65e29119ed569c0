"""An event that a stage could not process, with everything needed to inspect and replay it."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from schemas.envelope import Event, Identifier


class DeadLetter(Event):
    # Original bytes travel as base64 in JSON and are raw bytes in Python.
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    event_type: Literal["DeadLetter"] = "DeadLetter"
    stage: Identifier
    topic: Identifier
    partition: int
    offset: int
    key: bytes | None = None
    original: bytes
    error_type: Identifier
    reason: str
    attempts: int = Field(ge=1)
    permanent: bool
