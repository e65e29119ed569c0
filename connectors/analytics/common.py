"""What every analytics query shares: how times are bound, which tenant is hidden."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from connectors.ports import Window
from schemas import utc_now

# The local stack's readiness probes ask as this tenant (topology/stack.py). Its traffic
# is stored like any other but left out of reports, cost and the monitor's windows unless
# asked for (`probes=True`, or naming the tenant).
PROBE_TENANT = "llmops-probe"


def when(value: datetime) -> str:
    """A UTC time as a DateTime64 parameter value (bound by the engine, not spliced)."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def report_window(since: timedelta, tenant: str, probes: bool = False) -> dict[str, Any]:
    """A report's parameters: since, tenant, and the tenant to hide."""
    # Naming the probe tenant shows it, as asking for probes does.
    hide = "" if probes or tenant == PROBE_TENANT else PROBE_TENANT
    return {"since": when(utc_now() - since), "tenant": tenant, "hide": hide}


def number(value: Any) -> float:
    """A moment ClickHouse left undefined (no rows: null) as 0; callers skip thin sides."""
    return 0.0 if value is None else float(value)


def span(window: Window, prefix: str = "") -> dict[str, str]:
    return {f"{prefix}start": when(window.start), f"{prefix}end": when(window.end)}
