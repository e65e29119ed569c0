"""The alerts sink's rows. The monitor and the experiment guard only publish alert
events; the one alerts consumer (in the analytics process) stores each as a row of the
alerts table and then delivers what is new (the webhook), so redelivery stores and
announces nothing twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.alerts import (
    Alert,
    AlertResolved,
    BudgetExceeded,
    DriftDetected,
    ExperimentRolledBack,
    LagBreached,
    SloBreached,
)
from schemas.codec import decode_kind

STAGE = "alerts-sink"
KINDS: dict[str, type[Alert]] = {
    kind.__name__: kind
    for kind in (DriftDetected, SloBreached, BudgetExceeded, AlertResolved, ExperimentRolledBack, LagBreached)
}


def decode_alert(data: bytes | None) -> Alert:
    """An alert event as its own kind (its `event_type` says which)."""
    return decode_kind(data, KINDS, "an alert event")


def alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "event_id": alert.event_id,
        "alert_id": alert.alert_id,
        "event_type": type(alert).__name__,
        "check_name": alert.check,
        "subject": alert.subject,
        "value": alert.value,
        "threshold": alert.threshold,
        "p_value": alert.p_value,
        "window_start": alert.window_start,
        "window_end": alert.window_end,
        "message": alert.message,
        "occurred_at": alert.occurred_at,
    }


async def rows(events: Sequence[Alert], data: object) -> list[dict[str, Any]]:
    """The sink's RowBuilder: one row per alert event."""
    return [alert_row(a) for a in events]
