"""What the monitor found. One incident is one alert event when it opens and one
AlertResolved when its check passes again; `alert_id` (also the trace id and the Kafka
key) ties the two together."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from schemas.envelope import Event, Identifier


class Alert(Event):
    alert_id: Identifier
    check: Identifier = Field(description="embedding_drift, retrieval_drift, latency_slo, budget, ...")
    subject: str = Field(description="What it is about: a stage, a tenant, a prompt version, 'queries'.")
    value: float = Field(description="What the window measured.")
    threshold: float = Field(description="The objective or the reference it was compared with.")
    p_value: float | None = None
    window_start: AwareDatetime
    window_end: AwareDatetime
    message: str


class DriftDetected(Alert):
    """A distribution moved: query embeddings, retrieval scores, answers or feedback."""

    event_type: Literal["DriftDetected"] = "DriftDetected"


class SloBreached(Alert):
    """A stage missed its latency objective or error-rate limit."""

    event_type: Literal["SloBreached"] = "SloBreached"


class BudgetExceeded(Alert):
    """A tenant's spend today passed its daily budget."""

    event_type: Literal["BudgetExceeded"] = "BudgetExceeded"


class AlertResolved(Alert):
    """The check that raised `alert_id` passes again."""

    event_type: Literal["AlertResolved"] = "AlertResolved"


class ExperimentRolledBack(Alert):
    """The guard moved an experiment arm's label back to the control's version because
    users rated it worse beyond the experiment's margin. `value`: the control's mean
    rating minus the arm's; `threshold`: the margin; `p_value`: the one-sided test's."""

    event_type: Literal["ExperimentRolledBack"] = "ExperimentRolledBack"


class LagBreached(Alert):
    """A stage's consumers fall behind: its consumer lag (end offset minus committed
    offset, summed over the partitions) grew in each of the last N samples, or exceeds
    a threshold in seconds of its recent input rate (the message says which, and how
    many seconds behind). `subject`: the stage; `value`: its lag in messages;
    `threshold`: the seconds-behind limit."""

    event_type: Literal["LagBreached"] = "LagBreached"
