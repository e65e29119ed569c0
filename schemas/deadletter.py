"""An event that a stage could not process, with everything needed to inspect and replay it."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from schemas.envelope import Event, Identifier

# 512 KiB: base64 makes it 683 KiB, under Kafka's default 1 MiB message limit.
ORIGINAL_KEPT = 512 * 1024


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
    # Originals over ORIGINAL_KEPT bytes keep only their start (the dead letter must fit
    # the broker's message size): such a letter can be shown but not replayed.
    original_size: int = Field(default=0, ge=0)
    truncated: bool = False
    error_type: Identifier
    reason: str
    attempts: int = Field(ge=1)
    permanent: bool
