"""Feedback validation: the schema checks the value's type, the agent checks the range."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.feedback import FeedbackSettings, check
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
