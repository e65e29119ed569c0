"""What a user thought of an answer. Published by clients on the feedback topic, keyed
by the trace id of the answer it rates."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from schemas.envelope import Event, Identifier

FeedbackType = Literal["BOOLEAN", "NUMERIC", "CATEGORICAL"]
Category = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class FeedbackReceived(Event):
    """`value` must suit `data_type`: a bool for BOOLEAN, a finite number for NUMERIC (its
    range is checked against settings by the feedback agent), a label for CATEGORICAL."""

    event_type: Literal["FeedbackReceived"] = "FeedbackReceived"
    name: Identifier = Field(default="user", description="What is rated: user, helpfulness, ...")
    data_type: FeedbackType
    value: bool | float | Category
    comment: str = Field(default="", max_length=8_000)
    user: Identifier | None = None

    @model_validator(mode="after")
    def _value_suits_type(self) -> FeedbackReceived:
        value, kind = self.value, self.data_type
        if kind == "BOOLEAN" and not isinstance(value, bool):
            raise ValueError(f"BOOLEAN feedback needs true or false, got {value!r}")
        if kind == "NUMERIC" and (isinstance(value, bool | str) or not math.isfinite(value)):
            raise ValueError(f"NUMERIC feedback needs a finite number, got {value!r}")
        if kind == "CATEGORICAL" and not isinstance(value, str):
            raise ValueError(f"CATEGORICAL feedback needs a label, got {value!r}")
        return self

    @property
    def score(self) -> float | None:
        """The number that averages: 1/0 for BOOLEAN, the value for NUMERIC."""
        if isinstance(self.value, str):
            return None
        return float(self.value)
