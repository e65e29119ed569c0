"""The console's web views: the HTML shell and its static assets, a JSON API per page,
and the actions (replay, label move, experiment stop) that need the token. Registered on
the analytics app's web server beside the query service (`add_console`)."""

from __future__ import annotations

import asyncio
import difflib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View
from pydantic import ValidationError

from agents.routing import Registry, move_label
from connectors import deadletters, registry_log
from connectors.analytics import Analytics
from connectors.clickhouse import QueryFailed, StoreUnavailable
from schemas import DeadLetter, utc_now
from schemas.errors import PermanentError, TransientError
from schemas.prompts import Experiment
from topology.report import collect, parse_window
from topology.settings import Settings
from topology.topics import registry_topic

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# Every page is the one shell; console.js renders the page its path names.
PAGES = ("/", "/traces", "/trace", "/conversations", "/conversation", "/deadletters", "/prompts", "/alerts")
ASSETS = {
    "console.js": "application/javascript",
    "console.css": "text/css",
    "vendor/uPlot.iife.min.js": "application/javascript",
    "vendor/uPlot.min.css": "text/css",
}
# Scripts and styles from this origin only: data rendered as markup by mistake still
# cannot run (no inline script, no inline handler, nothing from elsewhere).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ACTIONS_OFF = (
    "actions are disabled: set LLMOPS_ANALYTICS__CONSOLE_TOKEN for the analytics process "
    "(`llmops dlq replay` works without it)"
)
LETTER_FIELDS = ("event_id", "trace_id", "tenant", "stage", "topic", "partition", "offset")


class Refused(Exception):
    """A request the console answers with an HTTP error and this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Console:
    """What the pages show, as JSON-ready values, read through the CLI's own code."""

    def __init__(self, settings: Settings, data: Analytics, is_open: Callable[[], bool]) -> None:
        self.settings = settings
        self.data = data
        self._store_open = is_open

    # --- reads ---------------------------------------------------------------------

    async def config(self, _: dict[str, str]) -> dict[str, Any]:
        token = self.settings.analytics.console_token
        return {
            "actions": token is not None,
            "actions_message": "" if token is not None else ACTIONS_OFF,
            "backend": self.data.store.backend,
            "serve_label": self.settings.pipeline.serve_label,
        }

    async def overview(self, q: dict[str, str]) -> dict[str, Any]:
        since, tenant = _window(q, "1h"), q.get("tenant", "")
        report, e2e = await asyncio.gather(
            collect(self.data, since, tenant), self.data.end_to_end(since, tenant)
        )
        return {
            "since": report.since,
            "generated_at": f"{report.generated_at:%Y-%m-%d %H:%M:%S}",
            "end_to_end": e2e.dicts()[0] if e2e.rows else {},
            "latency": report.latency.dicts(),
            "latency_series": report.latency_series.dicts(),
            "cost": report.cost.dicts(),
            "feedback": report.feedback.dicts(),
            "feedback_series": report.feedback_series.dicts(),
            "alerts": report.alerts.dicts(),
            "lag": report.lag.dicts() if report.lag is not None else [],
        }

    async def traces(self, q: dict[str, str]) -> dict[str, Any]:
        until, after = _moment(q.get("to", "")), _moment(q.get("from", ""))
        end = until if until is not None else utc_now()
        start = after if after is not None else end - _window(q, "24h")  # from/to win over the window
        began = time.perf_counter()
        found = await self.data.search_traces(
            start,
            end,
            tenant=q.get("tenant", ""),
            status=q.get("status", ""),
            prompt=q.get("prompt", ""),
            label=q.get("label", ""),
            mode=q.get("mode", ""),
            text=q.get("text", ""),
            conversation=q.get("conversation", ""),
            limit=min(_int(q, "limit", 100), 1000),
        )
        return {
            "traces": found.dicts(),
            "query_ms": round(1000 * (time.perf_counter() - began), 1),
            "from": f"{start:%Y-%m-%d %H:%M:%S}",
            "to": f"{end:%Y-%m-%d %H:%M:%S}",
        }

    async def trace(self, q: dict[str, str]) -> dict[str, Any]:
        trace_id = q.get("id", "")
        if not trace_id:
            raise Refused(400, "which trace? (?id=...)")
        (stages, feedback), letters = await asyncio.gather(
            self.data.trace_rows(trace_id), self._letters(None, timedelta(days=30), trace_id)
        )
        return {
            "trace_id": trace_id,
            "stages": stages.dicts(),
            "feedback": feedback.dicts(),
            "letters": letters,
        }

    async def conversations(self, q: dict[str, str]) -> dict[str, Any]:
        found = await self.data.conversations(_window(q, "24h"), q.get("tenant", ""), _int(q, "limit", 100))
        return {"conversations": found.dicts()}

    async def conversation(self, q: dict[str, str]) -> dict[str, Any]:
        """What `llmops conversation show` prints: the turns the memory keeps (read from
        the conversations table's changelog), with each turn's trace."""
        from connectors.conversations import latest_record
        from schemas.conversations import ConversationState, conversation_key
        from topology.topics import conversations_topic

        conversation_id, tenant = q.get("id", ""), q.get("tenant") or "default"
        if not conversation_id:
            raise Refused(400, "which conversation? (?id=...&tenant=...)")
        topic = conversations_topic(self.settings.worker.app_id)
        key = conversation_key(tenant, conversation_id)
        record = await asyncio.to_thread(latest_record, self.settings.kafka, topic, key)
        if record is None:
            raise Refused(404, f"no conversation {conversation_id!r} of tenant {tenant} (or it expired)")
        state = ConversationState.model_validate_json(record)
        traces = await self.data.search_traces(
            state.turns[0].at - timedelta(minutes=5) if state.turns else utc_now() - timedelta(days=30),
            utc_now() + timedelta(seconds=1),
            tenant=tenant,
            conversation=conversation_id,
            limit=1000,
        )
        return {"state": state.model_dump(mode="json"), "traces": traces.dicts()}

    async def deadletters(self, q: dict[str, str]) -> dict[str, Any]:
        letters = await self._letters(q.get("stage") or None, _window(q, "24h"), q.get("trace", ""))
        return {"letters": letters[-_int(q, "limit", 500) :]}

    async def prompts(self, _: dict[str, str]) -> dict[str, Any]:
        registry = await self._registry()
        on: dict[str, list[str]] = {}
        for pointer in registry.labels():
            on.setdefault(pointer.version, []).append(pointer.label)
        versions = [
            {**p.model_dump(mode="json"), "labels": sorted(on.get(p.version, []))}
            for p in sorted(registry.prompts(), key=lambda p: (p.name, p.version))
        ]
        experiments = [
            {**e.model_dump(mode="json"), "results": await self._arms(e) if self._store_open() else []}
            for e in registry.experiments()
        ]
        return {
            "versions": versions,
            "labels": [m.model_dump(mode="json") for m in sorted(registry.labels(), key=lambda m: m.label)],
            "experiments": experiments,
            "serve_label": self.settings.pipeline.serve_label,
            "builtin": self.settings.pipeline.prompt.version,
        }

    async def prompt_diff(self, q: dict[str, str]) -> dict[str, Any]:
        from topology.cli.prompts import as_text  # what `llmops prompts diff` compares

        registry = await self._registry()
        try:
            old, new = registry.resolve(q.get("a", ""))[0], registry.resolve(q.get("b", ""))[0]
        except PermanentError as exc:
            raise Refused(404, str(exc)) from exc
        lines = list(difflib.unified_diff(as_text(old), as_text(new), old.version, new.version, lineterm=""))
        return {"a": old.version, "b": new.version, "lines": lines}

    async def alerts(self, q: dict[str, str]) -> dict[str, Any]:
        since = _window(q, "7d")
        incidents, events = await asyncio.gather(self.data.alerts(since), self.data.alert_events(since))
        evidence: dict[str, list[dict[str, Any]]] = {}
        for e in events.dicts():
            evidence.setdefault(e["alert_id"], []).append(e)
        rows = [{**a, "events": evidence.get(a["alert_id"], [])} for a in incidents.dicts()]
        # Open incidents first, each group newest first (the query's order; the sort is stable).
        return {"alerts": sorted(rows, key=lambda a: bool(a["resolved"]))}

    # --- actions (token) -------------------------------------------------------------

    def check_token(self, given: Any) -> None:
        token = self.settings.analytics.console_token
        if token is None:
            raise Refused(403, ACTIONS_OFF)
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), token.get_secret_value().encode()
        ):
            raise Refused(403, "wrong token: the action was refused")

    async def replay(self, body: dict[str, Any]) -> dict[str, Any]:
        """What `llmops dlq replay --id ... [--dry-run]` does, for the letters named."""
        self.check_token(body.get("token"))
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise Refused(400, "choose the letters to replay (ids: a non-empty list)")
        since = parse_window(str(body.get("since", "30d")))
        letters = [d for d in await self._read_letters(None, since) if d.event_id in set(ids)]
        missing = sorted(set(ids) - {d.event_id for d in letters})
        if body.get("dry_run", True):
            return {
                "dry_run": True,
                "would_replay": [_letter(d, original=False) for d in letters],
                "missing": missing,
            }
        sent = await deadletters.replay(self.settings.kafka, letters)
        log.warning("console: replayed %d dead letter(s): %s", sent, ", ".join(d.event_id for d in letters))
        return {"dry_run": False, "replayed": sent, "missing": missing}

    async def move_label(self, body: dict[str, Any]) -> dict[str, Any]:
        """What `llmops prompts label NAME REF --reason ...` does; `dry_run` (the default)
        says where the label points now and would point, and writes nothing."""
        self.check_token(body.get("token"))
        label, ref, reason = (str(body.get(k, "")) for k in ("label", "ref", "reason"))
        if not label or not ref:
            raise Refused(400, "name the label and the version (or label) to point it at")
        registry = await self._registry()
        prompt = registry.resolve(ref)[0]  # PermanentError (400) when nothing matches
        current = registry.label(label)
        try:
            record = move_label(registry, label, prompt.version, by="console", reason=reason)
        except ValidationError as exc:
            raise Refused(400, f"label {label!r}: {exc.errors()[0]['msg']}") from exc
        moved = {"label": label, "version": prompt.version, "was": current.version if current else None}
        if body.get("dry_run", True):
            return {"dry_run": True, **moved}
        await registry_log.append(self.settings.kafka, registry_topic(self.settings.worker.app_id), [record])
        log.warning("console: label %s -> %s (was %s)", label, prompt.version, moved["was"])
        return {"dry_run": False, **moved}

    async def stop_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        """What `llmops experiments stop NAME --reason ...` does; `dry_run` (the default)
        says what would stop and writes nothing."""
        from topology.cli.experiments import stopped  # the CLI's own record of a stop

        self.check_token(body.get("token"))
        name, reason = str(body.get("name", "")), str(body.get("reason", ""))
        if not name:
            raise Refused(400, "name the experiment to stop")
        experiment = (await self._registry()).experiment(name)
        if experiment is None:
            raise Refused(404, f"no experiment {name!r}")
        if experiment.status != "running":
            raise Refused(409, f"experiment {name} is {experiment.status} already")
        plan = {"experiment": name, "control": experiment.control}
        if body.get("dry_run", True):
            return {"dry_run": True, **plan}
        record = stopped(experiment, reason)
        await registry_log.append(self.settings.kafka, registry_topic(self.settings.worker.app_id), [record])
        log.warning("console: experiment %s stopped (%s)", name, reason or "no reason given")
        return {"dry_run": False, **plan}

    # --- helpers ---------------------------------------------------------------------

    async def _read_letters(self, stage: str | None, since: timedelta) -> list[DeadLetter]:
        return await asyncio.to_thread(
            deadletters.read, self.settings.kafka, stage=stage, since=utc_now() - since
        )

    async def _letters(self, stage: str | None, since: timedelta, trace_id: str) -> list[dict[str, Any]]:
        letters = await self._read_letters(stage, since)
        return [_letter(d) for d in letters if not trace_id or d.trace_id == trace_id]

    async def _arms(self, experiment: Experiment) -> list[dict[str, Any]]:
        """Per arm, what `llmops experiments report` prints: queries, ratings, the mean
        rating with its 95% interval, p95 latency, cost per query, the verdict."""
        from agents.experiments import arm_stats, judge  # numpy: only when asked

        stats = {a.arm: a for a in await arm_stats(self.data, experiment)}
        verdicts = {v.arm: v for v in judge(experiment, list(stats.values()))}
        rows = []
        for arm in experiment.arms:
            st, verdict = stats.get(arm.label), verdicts[arm.label]
            low, high = st.interval() if st and st.ratings > 1 else (None, None)
            rows.append(
                {
                    "arm": arm.label,
                    "weight": arm.weight,
                    "queries": st.queries if st else 0,
                    "failed": st.failed if st else 0,
                    "ratings": st.ratings if st else 0,
                    "mean_rating": st.mean if st and st.ratings else None,
                    "ci95": [low, high],
                    "p95_ms": st.p95_ms if st and st.queries else None,
                    "cost_per_query_usd": st.cost_per_query if st and st.queries else None,
                    "verdict": verdict.state,
                    "detail": verdict.message,
                }
            )
        return rows

    async def _registry(self) -> Registry:
        topic = registry_topic(self.settings.worker.app_id)
        return Registry(await asyncio.to_thread(registry_log.read_all, self.settings.kafka, topic))


def _letter(letter: DeadLetter, original: bool = True) -> dict[str, Any]:
    shown = letter.model_dump(mode="json", exclude={"original", "key"})
    if original:
        try:
            shown["original_text"] = letter.original.decode()
        except UnicodeDecodeError:
            shown["original_base64"] = letter.model_dump(mode="json")["original"]
        shown["key"] = letter.key.decode(errors="replace") if letter.key is not None else None
    return shown


def _window(q: dict[str, str], default: str) -> timedelta:
    try:
        return parse_window(q.get("since") or default)
    except ValueError as exc:
        raise Refused(400, str(exc)) from exc


def _moment(text: str) -> datetime | None:
    """A time from the page's datetime-local inputs (UTC)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise Refused(400, f"time {text!r}: use YYYY-MM-DDTHH:MM") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _int(q: dict[str, str], name: str, default: int) -> int:
    try:
        return max(1, int(q.get(name) or default))
    except ValueError as exc:
        raise Refused(400, f"{name}: a whole number") from exc


async def _answer(view: View, call: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
    """The JSON of `call()`, or the error the CLI would print, with its status."""
    try:
        return view.json(await call(), headers=HEADERS)
    except Refused as exc:
        return view.json({"error": str(exc)}, status=exc.status, headers=HEADERS)
    except (QueryFailed, PermanentError) as exc:
        return view.json({"error": str(exc)}, status=400, headers=HEADERS)
    except (StoreUnavailable, TransientError) as exc:
        return view.json({"error": str(exc)}, status=503, headers=HEADERS)


def add_console(app: faust.App, settings: Settings, data: Analytics, is_open: Callable[[], bool]) -> None:
    """Serve the console on the app's web server. Reads of the store answer 503 until
    `is_open()`; the dead-letter and prompt pages read Kafka and work before it."""
    console = Console(settings, data, is_open)
    shell = (STATIC / "index.html").read_text()
    assets = {name: ((STATIC / name).read_bytes(), kind) for name, kind in ASSETS.items()}

    class Page(View):
        async def get(self, request: Request) -> Response:
            return self.html(shell, headers=HEADERS)

    for n, path in enumerate(PAGES):
        # The shell at "/" takes the place of faust's {"status": "OK"} index.
        app.page(path, name=f"console{path.replace('/', '_')}")(type(f"Page{n}", (Page,), {}))

    @app.page("/static/{name:.+}", name="console_static")
    class Static(View):
        async def get(self, request: Request, name: str) -> Response:
            if name not in assets:
                return self.json({"error": "not found"}, status=404)
            body, kind = assets[name]
            return self.bytes(body, content_type=kind, headers={"Cache-Control": "max-age=300"})

    store_reads: dict[str, Callable[[dict[str, str]], Awaitable[dict[str, Any]]]] = {
        "overview": console.overview,
        "traces": console.traces,
        "trace": console.trace,
        "conversations": console.conversations,
        "conversation": console.conversation,
        "alerts": console.alerts,
    }
    kafka_reads: dict[str, Callable[[dict[str, str]], Awaitable[dict[str, Any]]]] = {
        "config": console.config,
        "deadletters": console.deadletters,
        "prompts": console.prompts,
        "prompts/diff": console.prompt_diff,
    }

    def read_view(read: Callable[[dict[str, str]], Awaitable[dict[str, Any]]], needs_store: bool) -> type:
        class Read(View):
            async def get(self, request: Request) -> Response:
                if needs_store and not is_open():
                    return self.json({"error": "the analytics store is not open yet"}, status=503)
                query = dict(request.query)
                return await _answer(self, lambda: read(query))

        return Read

    for name, read in store_reads.items():
        app.page(f"/api/{name}", name=f"console_api_{name}")(read_view(read, True))
    for name, read in kafka_reads.items():
        app.page(f"/api/{name}", name=f"console_api_{name.replace('/', '_')}")(read_view(read, False))

    def action_view(act: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> type:
        class Action(View):
            async def post(self, request: Request) -> Response:
                try:
                    body = await request.json()
                except ValueError:
                    return self.json({"error": "expected a JSON body"}, status=400, headers=HEADERS)
                if not isinstance(body, dict):
                    return self.json({"error": "expected a JSON object"}, status=400, headers=HEADERS)
                return await _answer(self, lambda: act(body))

        return Action

    app.page("/api/deadletters/replay", name="console_api_replay")(action_view(console.replay))
    app.page("/api/prompts/label", name="console_api_label")(action_view(console.move_label))
    app.page("/api/experiments/stop", name="console_api_stop")(action_view(console.stop_experiment))
