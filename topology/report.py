"""What `llmops report` and `llmops trace` print, and the HTML page: named queries from
`Analytics`, rendered as text tables or as a self-contained page with SVG charts."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from connectors.analytics import Analytics
from connectors.clickhouse import Rows
from schemas import utc_now
from topology import charts

_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_window(text: str) -> timedelta:
    """'90s', '15m', '24h', '7d' -> timedelta."""
    match = _WINDOW.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"window {text!r}: use a number and s, m, h or d, like 15m or 24h")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class ReportData:
    since: str
    tenant: str
    backend: str
    generated_at: datetime
    latency: Rows
    cost: Rows
    feedback: Rows
    slowest: Rows
    latency_series: Rows
    feedback_series: Rows
    alerts: Rows
    lag: Rows | None = None  # per stage, from the last consumer lag sample in the window
    speed: Rows | None = None  # per model: time to first token and tokens/s of streamed answers
    conversations: Rows | None = None  # per number of turns: conversations, turns that used memory


def describe_window(window: timedelta) -> str:
    """timedelta -> '24h', '15m', '7d', '90s' (the form --since takes)."""
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def collect(
    analytics: Analytics, since: timedelta, tenant: str = "", probes: bool = False
) -> ReportData:
    """Everything the report shows. Chart buckets fit the data's own time span (about 60
    points), not the window's: a 24 h window holding 3 minutes of data still draws lines.
    The local stack's readiness probes are left out unless `probes` (or their tenant is
    asked for)."""
    extent = await analytics.extent(since, tenant, probes)
    span = 60.0
    if extent is not None:
        span = max(60.0, _epoch(extent[1]) - _epoch(extent[0]) + 60)
    bucket = max(1, int(span // 60))
    if bucket >= 60:
        bucket = bucket // 60 * 60
    latency, cost, feedback, slowest, latency_series, feedback_series, alerts = await asyncio.gather(
        analytics.latency(since, tenant, probes),
        analytics.cost(since, tenant, probes),
        analytics.feedback(since, tenant, probes),
        analytics.slowest(since, 5, tenant, probes),
        analytics.latency_over_time(since, bucket, tenant, probes),
        analytics.feedback_over_time(since, bucket * 3, tenant, probes),  # ratings are sparser
        analytics.alerts(since),
    )
    speed = await analytics.generation_speed(since, tenant, probes)
    conversations = await analytics.turns_per_conversation(since, tenant, probes)
    lag = await analytics.lag(since)
    return ReportData(
        describe_window(since),
        tenant,
        analytics.store.backend,
        utc_now(),
        latency,
        cost,
        feedback,
        slowest,
        latency_series,
        feedback_series,
        alerts,
        lag,
        speed=speed,
        conversations=conversations,
    )


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def _latency_rows(data: ReportData) -> list[list[Any]]:
    return [
        [r["stage"], r["events"], r["errors"], f"{100 * (r['error_rate'] or 0):.1f}%", *r["q"]]
        for r in data.latency.dicts()
    ]


def _feedback_rows(data: ReportData) -> list[list[Any]]:
    return [
        [
            f"{r['template_id']}@{r['template_version']}" if r["template_version"] else r["template_id"],
            r["name"],
            r["data_type"],
            r["category"] or "",
            r["events"],
            r["mean_score"],
        ]
        for r in data.feedback.dicts()
    ]


LATENCY_HEADERS = ("stage", "events", "errors", "error %", "p50 ms", "p95 ms", "p99 ms")
COST_HEADERS = ("tenant", "model", "events", "tokens in", "tokens out", "cost USD", "unpriced")
SPEED_HEADERS = ("model", "answers", "first token p50 ms", "p95 ms", "tokens/s p50", "p95")


def _speed_rows(data: ReportData) -> list[list[Any]]:
    rows = data.speed.dicts() if data.speed is not None else []
    return [[r["model"], r["answers"], *r["ttft"], *r["tokens_per_s"]] for r in rows]


FEEDBACK_HEADERS = ("prompt version", "name", "type", "label", "ratings", "mean score")
CONVERSATION_HEADERS = ("turns", "conversations", "turns in them", "turns with memory")
# Turns per conversation beyond 5 are grouped: the shape matters there, not each count.
_TURN_BUCKETS = ((6, "6-10"), (11, "11-20"), (21, "21+"))


def _turns_label(turns: int) -> str:
    label = str(turns)
    for low, name in _TURN_BUCKETS:
        if turns >= low:
            label = name
    return label


def _conversation_rows(data: ReportData) -> list[list[Any]]:
    """Per number of turns (grouped past 5): conversations, their turns, and how many of
    those used memory."""
    buckets: dict[str, list[int]] = {}
    for r in data.conversations.dicts() if data.conversations is not None else []:
        turns, conversations = int(r["turns"]), int(r["conversations"])
        bucket = buckets.setdefault(_turns_label(turns), [0, 0, 0])
        bucket[0] += conversations
        bucket[1] += turns * conversations
        bucket[2] += int(r["turns_with_memory"])
    return [[label, *counts] for label, counts in buckets.items()]


def conversation_summary(data: ReportData) -> str | None:
    """One line: conversations, turns per conversation, and the share of turns that used
    memory; None when the window holds no conversation."""
    rows = _conversation_rows(data)
    if not rows:
        return None
    conversations, turns, memory = (sum(r[i] for r in rows) for i in (1, 2, 3))
    return (
        f"{conversations} conversation(s), {turns} turns ({turns / conversations:.1f} per conversation); "
        f"{memory} of {turns} turns ({100 * memory / turns:.0f}%) used memory"
    )


LAG_HEADERS = ("stage", "partitions", "total lag", "max lag", "peak total", "sampled at")


def _lag_rows(data: ReportData) -> list[list[Any]]:
    rows = data.lag.dicts() if data.lag is not None else []
    return [
        [r["stage"], r["partitions"], r["total_lag"], r["max_lag"], r["peak_lag"], r["last_sample"][:19]]
        for r in rows
    ]


def text(data: ReportData) -> str:
    scope = f" for tenant {data.tenant}" if data.tenant else ""
    out = [f"llmops report: the last {data.since}{scope} (analytics: {data.backend})", ""]
    if not data.latency.rows:
        out.append("No telemetry in this window yet. Ask something (`llmops ask ...`) and retry.")
        return "\n".join(out) + "\n"
    out += ["Latency, requests and errors per stage", text_table(LATENCY_HEADERS, _latency_rows(data)), ""]
    out.append("Consumer lag per stage (messages; the last sample, and the largest total in the window)")
    out += [text_table(LAG_HEADERS, _lag_rows(data)) if _lag_rows(data) else "(no samples)", ""]
    out += ["Tokens and cost per tenant and model", text_table(COST_HEADERS, data.cost.rows), ""]
    if _speed_rows(data):
        out.append("Generation speed per model (streamed answers)")
        out += [text_table(SPEED_HEADERS, _speed_rows(data)), ""]
    summary = conversation_summary(data)
    if summary is not None:
        out += [
            "Conversations: turns per conversation, and turns whose prompts showed earlier turns",
            summary,
        ]
        out += [text_table(CONVERSATION_HEADERS, _conversation_rows(data)), ""]
    out.append("Feedback per prompt version")
    out.append(text_table(FEEDBACK_HEADERS, _feedback_rows(data)) if data.feedback.rows else "(none yet)")
    out += ["", "Alerts (llmops alerts lists them)"]
    out.append(alerts_table(data.alerts) if data.alerts.rows else "(none)")
    out += ["", "Slowest traces (llmops trace ID shows one)"]
    out.append(
        text_table(
            ("trace", "tenant", "total ms", "errors"),
            [[r["trace_id"], r["tenant"], r["total_ms"], r["errors"]] for r in data.slowest.dicts()],
        )
    )
    return "\n".join(out) + "\n"


ALERT_HEADERS = ("raised", "alert", "check", "subject", "state", "message")


def _alert_rows(alerts: Rows) -> list[list[Any]]:
    return [
        [
            r["raised_at"][:19],
            r["kind"],
            r["check_name"],
            r["subject"],
            "resolved" if r["resolved"] else "OPEN",
            r["message"],
        ]
        for r in alerts.dicts()
    ]


def alerts_table(alerts: Rows) -> str:
    return text_table(ALERT_HEADERS, _alert_rows(alerts))


def _epoch(value: str) -> float:
    """ClickHouse's text for a UTC DateTime -> UNIX seconds."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


def html(data: ReportData) -> str:
    latency: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in data.latency_series.dicts():
        latency[f"{r['stage']} p95"].append((_epoch(r["t"]), r["q"][1]))
    feedback: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in data.feedback_series.dicts():
        feedback[r["version"]].append((_epoch(r["t"]), r["mean_score"]))
    cost: dict[str, float] = defaultdict(float)
    tokens: dict[str, float] = defaultdict(float)
    for r in data.cost.dicts():
        cost[r["tenant"]] += r["cost_usd"]
        tokens[r["tenant"]] += r["input_tokens"] + r["output_tokens"]
    figures = [
        charts.line_chart("latency", "p95 latency per query stage over time", latency, "ms"),
        charts.bar_chart("cost", "Cost per tenant", sorted(cost.items()), "USD"),
        charts.bar_chart("tokens", "Tokens per tenant", sorted(tokens.items()), "tokens"),
        charts.line_chart("feedback", "Mean feedback score per prompt version over time", feedback, "score"),
    ]
    conversation_rows = _conversation_rows(data)
    if conversation_rows:
        bars = [(f"{r[0]} turns", float(r[1])) for r in conversation_rows]
        figures.append(charts.bar_chart("turns", "Conversations by number of turns", bars, "conversations"))
    tables = [
        _html_table("Latency, requests and errors per stage", LATENCY_HEADERS, _latency_rows(data)),
        _html_table("Consumer lag per stage (messages)", LAG_HEADERS, _lag_rows(data)),
        _html_table("Tokens and cost per tenant and model", COST_HEADERS, data.cost.rows),
        _html_table("Generation speed per model (streamed answers)", SPEED_HEADERS, _speed_rows(data)),
        _html_table(
            f"Conversations: {conversation_summary(data) or 'none in this window'}",
            CONVERSATION_HEADERS,
            conversation_rows,
        ),
        _html_table("Feedback per prompt version", FEEDBACK_HEADERS, _feedback_rows(data)),
        _html_table("Alerts", ALERT_HEADERS, _alert_rows(data.alerts)),
    ]
    scope = f", tenant {escape(data.tenant)}" if data.tenant else ""
    return PAGE.format(
        title="llmops-stream report",
        subtitle=escape(
            f"the last {data.since}{scope}; generated {data.generated_at:%Y-%m-%d %H:%M} UTC "
            f"from {data.backend}"
        ),
        figures="\n".join(figures),
        tables="\n".join(tables),
    )


def _html_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<section><h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table></section>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1600px; color: #222; }}
h1 {{ margin-bottom: 0 }} .sub {{ color: #666; margin-top: 4px }}
.grid2 {{ display: flex; flex-wrap: wrap; gap: 16px }}
figure.chart {{ margin: 0; padding: 8px; border: 1px solid #ddd; border-radius: 6px; background: #fff }}
figcaption {{ font-weight: 600; margin-bottom: 4px }}
svg .grid {{ stroke: #eee }} svg .tick, svg .legend, svg .axis {{ font-size: 11px; fill: #555 }}
p.none {{ color: #888; width: 740px }}
table {{ border-collapse: collapse; margin-bottom: 16px }}
th, td {{ border-bottom: 1px solid #eee; padding: 3px 10px; text-align: left }}
</style></head>
<body><h1>{title}</h1><p class="sub">{subtitle}</p>
<div class="grid2">
{figures}
</div>
{tables}
</body></html>
"""


def trace_text(trace_id: str, stages: Rows, feedback: Rows) -> str:
    if not stages.rows and not feedback.rows:
        return f"no telemetry or feedback for trace {trace_id} (yet: the sink writes about once a second)\n"
    out = [f"trace {trace_id}"]
    rows = stages.dicts()
    if rows:
        first = rows[0]
        out.append(f"tenant {first['tenant']}  prompt {first['template_id']}@{first['template_version']}")
        if any(r["question"] for r in rows):
            out.append(f"question: {next(r['question'] for r in rows if r['question'])}")
        out.append("")
        table = [
            [
                r["stage"],
                r["started_at"][11:23],
                r["latency_ms"],
                r["status"] + (f" ({r['error_class']})" if r["error_class"] else ""),
                r["model"],
                r["input_tokens"],
                r["output_tokens"],
                f"{r['cost_usd']:.6f}",
            ]
            for r in rows
        ]
        out.append(text_table(("stage", "started", "ms", "status", "model", "in", "out", "cost USD"), table))
        for r in rows:
            if r["passage_ids"]:
                scored = ", ".join(
                    f"{p} ({s:.3f})" for p, s in zip(r["passage_ids"], r["passage_scores"], strict=True)
                )
                out += ["", f"retrieved ({r['retrieval_mode'] or 'dense'}): {scored}"]
            if r["answer"]:
                out += ["", f"answer: {r['answer']}", f"citations: {', '.join(r['citations']) or '-'}"]
        # The prompt artifacts prompting put into the prompt (the same on every later row).
        used = next((r for r in rows if r.get("artifact_ids")), None)
        if used is not None:
            out += ["", f"artifacts (set {used['artifact_set']}): {', '.join(used['artifact_ids'])}"]
    out += ["", "feedback:"]
    if feedback.rows:
        out.append(
            text_table(
                ("at", "name", "type", "score", "label", "user", "comment", "linked"),
                [
                    [
                        f["occurred_at"][:19],
                        f["name"],
                        f["data_type"],
                        f["score"],
                        f["category"],
                        f["user"],
                        f["comment"],
                        f["trace_seen"],
                    ]
                    for f in feedback.dicts()
                ],
            )
        )
    else:
        out.append("(none)")
    return "\n".join(out) + "\n"
