"""The web console in a real browser (Playwright driving Debian's Chromium, no browser
download) against the running stack with real traffic: every page loads without a
console error, a known question's trace shows its four stages, its cited passage, the
prompt as the model got it and the passages' texts, a word of its answer finds it, a
conversation shows its turns and its rolling summary, a dead letter replayed from the
page with the token is answered (as `llmops dlq replay` does, test_dlq.py), a label moved
from the page serves the next question pinned to it, an experiment stopped from the page
is stopped in the registry (as `llmops experiments stop`), a wrong token is refused, and
markup in a question, a passage, a feedback comment, a conversation id, a summary or an
alert's subject stays text; an incident shows open on the overview and with its evidence
on the alerts page."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from agents import telemetry
from agents.routing import Registry, move_label
from connectors import registry_log
from connectors.analytics import Analytics
from connectors.client import Client
from connectors.conversations import latest_record
from schemas import QueryReceived, encode, utc_now
from schemas.alerts import SloBreached
from schemas.conversations import ConversationState, conversation_key
from schemas.prompts import Arm, Experiment, PromptVersion
from tests.integration.analytics_fixtures import opened, stage_event, store_settings
from tests.integration.test_dlq import letter_for, publish
from tests.integration.test_report_html import chromium
from topology.console.views import ACTIONS_OFF, Console, Refused
from topology.samples import python_reference
from topology.settings import Settings
from topology.stack import LocalStack
from topology.topics import conversations_topic, registry_topic

TOKEN = "console-test-token"  # noqa: S105  (a test's own token)
STAGES = ("prompting", "embedding", "retrieval", "generation")
PAGES = ("/", "/traces", "/conversations", "/deadletters", "/prompts", "/alerts")
# A conversation id is any printable text a client chooses: markup too.
CONVERSATION = f'c-{uuid.uuid4().hex[:6]}"><img src=x onerror="window.__xss=3">'
XSS = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2;alert(1)">'
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# --- without a browser -----------------------------------------------------------------


def test_actions_are_off_without_a_token_and_refuse_a_wrong_one():
    off = Console(Settings(), Analytics(None), lambda: False)  # type: ignore[arg-type]  # no store is read
    with pytest.raises(Refused, match="LLMOPS_ANALYTICS__CONSOLE_TOKEN") as refused:
        off.check_token("anything")
    assert refused.value.status == 403 and str(refused.value) == ACTIONS_OFF
    settings = Settings().model_copy(
        update={"analytics": Settings().analytics.model_copy(update={"console_token": SecretStr(TOKEN)})}
    )
    on = Console(settings, Analytics(None), lambda: False)  # type: ignore[arg-type]
    for wrong in ("", "console-test-toke", None, 7):
        with pytest.raises(Refused, match="wrong token"):
            on.check_token(wrong)
    on.check_token(TOKEN)


async def test_search_finds_traces_by_words_of_the_question_or_the_answer(chdb_dir: Path):
    async for store in opened(store_settings("chdb", chdb_dir)):
        analytics = Analytics(store)
        events = []
        for n, (question, answer) in enumerate((("What is a lambda?", "Anonymous functions"), ("x", "y"))):
            for stage in STAGES:
                events.append(
                    stage_event(
                        f"t{n}",
                        stage,
                        10,
                        question=question if stage == "prompting" else "",
                        answer=answer if stage == "generation" else "",
                    )
                )
        await analytics.insert_new("telemetry", await telemetry.rows(events, store))
        end, start = utc_now() + timedelta(seconds=1), utc_now() - timedelta(hours=1)
        found = await analytics.search_traces(start, end, text="ANONYMOUS")
        assert [r["trace_id"] for r in found.dicts()] == ["t0"]

        async def search(text: str, data: Analytics = analytics) -> list[str]:
            found = await data.search_traces(utc_now() - timedelta(hours=1), utc_now(), text=text)
            return [r["trace_id"] for r in found.dicts()]

        # Whole words in any order, case aside, all in one text; no word: a substring.
        assert await search("lambda") == ["t0"] and await search("Lambda?") == ["t0"]
        assert await search("a LAMBDA is") == ["t0"] and await search("lambda functions") == []
        assert await search("lamb") == [] and await search("?") == ["t0"]
        # The search table of migration 012, filled by its view, answers through its indexes.
        plan = await store.query(
            "EXPLAIN indexes = 1 SELECT count() FROM trace_search "
            "WHERE hasAllTokens(lower(answer), 'anonymous')"
        )
        assert "answer_words" in "\n".join(str(r[0]) for r in plan.rows)
        assert {r["trace_id"] for r in (await analytics.search_traces(start, end)).dicts()} == {"t0", "t1"}
        assert not (await analytics.search_traces(start, end, status="error")).rows
        e2e = (await analytics.end_to_end(timedelta(hours=1))).dicts()[0]
        assert e2e["requests"] == 2 and e2e["errors"] == 0

        # An incident's events with their evidence, raised in the window or not.
        now = utc_now()
        alert = {"check_name": "latency", "subject": "generation", "threshold": 100.0, "p_value": None}
        span = {"window_start": now - timedelta(minutes=5), "window_end": now}
        await store.insert(
            "alerts",
            [
                {
                    **alert,
                    **span,
                    "event_id": "e1",
                    "alert_id": "a1",
                    "event_type": "SloBreached",
                    "value": 250.0,
                    "message": "p95 250 ms",
                    "occurred_at": now - timedelta(minutes=1),
                },
                {
                    **alert,
                    **span,
                    "event_id": "e2",
                    "alert_id": "a1",
                    "event_type": "AlertResolved",
                    "value": 80.0,
                    "message": "back under",
                    "occurred_at": now,
                },
                {
                    **alert,
                    **span,
                    "event_id": "e3",
                    "alert_id": "old",
                    "event_type": "SloBreached",
                    "value": 300.0,
                    "message": "old",
                    "occurred_at": now - timedelta(days=3),
                },
            ],
        )
        evidence = (await analytics.alert_events(timedelta(hours=1))).dicts()
        assert [(e["event_type"], e["value"], e["threshold"]) for e in evidence] == [
            ("SloBreached", 250.0, 100.0),
            ("AlertResolved", 80.0, 100.0),
        ]


# --- in the browser, against the stack ---------------------------------------------------


@pytest.fixture(scope="module")
def console(tansu_stack: LocalStack) -> Iterator[LocalStack]:
    """The stack's analytics process restarted with a console token (the processes
    the stack starts read the environment when they start)."""
    os.environ["LLMOPS_ANALYTICS__CONSOLE_TOKEN"] = TOKEN
    try:
        tansu_stack.start_analytics()
        yield tansu_stack
    finally:
        os.environ.pop("LLMOPS_ANALYTICS__CONSOLE_TOKEN", None)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    path = chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        if os.environ.get("LLMOPS_REQUIRE_CHROMIUM") == "1":
            pytest.fail("LLMOPS_REQUIRE_CHROMIUM=1 but playwright is not installed (pip install -e .[dev])")
        pytest.skip("console browser test skipped: no playwright (pip install -e .[dev])")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Watched:
    """A page whose console errors, uncaught exceptions and dialogs are recorded."""

    def __init__(self, page: Any, shots: list[Path]) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.shots = shots
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        async def dismiss(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", dismiss)

    async def open(self, url: str) -> float:
        began = time.perf_counter()
        await self.page.goto(url)
        await self.page.wait_for_selector("body[data-loaded='1']", timeout=30_000)
        return time.perf_counter() - began

    async def search(self, text: str) -> float:
        """Search the traces page for `text`: seconds from the click to the results."""
        await self.page.fill("#search-text", text)
        began = time.perf_counter()
        async with self.page.expect_navigation():
            await self.page.click("#search-button")
        await self.page.wait_for_selector("body[data-loaded='1'] #search-timing")
        return time.perf_counter() - began

    async def shot(self, name: str) -> None:
        for folder in self.shots:
            await self.page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def shot_folders(tmp_path: Path) -> list[Path]:
    folders = [tmp_path]
    if os.environ.get("LLMOPS_CONSOLE_SHOTS"):
        folders.append(Path(os.environ["LLMOPS_CONSOLE_SHOTS"]))
        folders[-1].mkdir(parents=True, exist_ok=True)
    return folders


async def wait_for_trace(base: str, trace_id: str, stages: int, timeout: float = 60) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + timeout
        while True:
            async with session.get(f"{base}/api/trace", params={"id": trace_id}) as response:
                found = await response.json()
            if response.status == 200 and len(found["stages"]) >= stages:
                return found
            assert time.monotonic() < deadline, f"trace {trace_id} not stored in {timeout}s: {found}"
            await asyncio.sleep(0.5)


async def test_the_console_in_chromium(console: LocalStack, browser: Any, tmp_path: Path):
    settings = console.settings
    base = settings.analytics.url
    tenant = f"console-{uuid.uuid4().hex[:8]}"
    lambda_doc = next(d for d in python_reference() if d["title"] == "lambda")
    async with Client(settings) as client:
        await client.ingest([lambda_doc], tenant=tenant)
        known = await client.ask("What is a lambda expression?", tenant=tenant, retrieval_mode="dense")
        # A passage with markup in its text, for the next question to retrieve.
        marked = {
            "doc_id": "xss-passage",
            "title": "lambda markup",
            "text": f"A lambda passage. {XSS}",
            "source": "test",
        }
        await client.ingest([marked], tenant=tenant)
        tricky = await client.ask(f"lambda {XSS}", tenant=tenant, retrieval_mode="dense")
        await client.feedback(tricky.trace_id, False, comment=XSS, tenant=tenant)
        for turn in ("What is a lambda expression?", "Can it hold statements?"):
            await client.ask(turn, tenant=tenant, conversation=CONVERSATION, retrieval_mode="dense")
    assert known.citations, "the extractive backend cited nothing"
    # Two versions of a prompt and a label moved between them, as `llmops prompts` writes
    # them (a label of this test's own: the served one stays as other tests expect).
    first = PromptVersion(
        name=f"console-{uuid.uuid4().hex[:6]}", system="Answer.", template="$question $context"
    )
    second = PromptVersion.model_validate({**first.model_dump(exclude={"version"}), "top_k": 3})
    label = f"console-{uuid.uuid4().hex[:6]}"
    topic = registry_topic(settings.worker.app_id)
    await registry_log.append(settings.kafka, topic, [first, second])
    registry = Registry(await asyncio.to_thread(registry_log.read_all, settings.kafka, topic))
    await registry_log.append(settings.kafka, topic, [move_label(registry, label, first.version, by="test")])
    registry = Registry(await asyncio.to_thread(registry_log.read_all, settings.kafka, topic))
    await registry_log.append(settings.kafka, topic, [move_label(registry, label, second.version, by="test")])
    # An experiment over two of the test's labels, stopped: it routes no request.
    trial = Experiment(
        name=f"trial-{uuid.uuid4().hex[:6]}",
        arms=[Arm(label=label, weight=1), Arm(label=f"{label}-b", weight=1)],
        status="stopped",
    )
    # And a running one, over labels no request asks for, to stop from the page.
    running = Experiment(
        name=f"run-{uuid.uuid4().hex[:6]}",
        arms=[Arm(label=f"{label}-x", weight=1), Arm(label=f"{label}-y", weight=1)],
    )
    await registry_log.append(settings.kafka, topic, [trial, running])
    # A question that failed after its retries ran out, dead-lettered as a stage does.
    failed = QueryReceived(trace_id=f"replay-{uuid.uuid4().hex}", producer="t", question="What is a lambda?")
    letter = letter_for(failed, settings.kafka.topics.queries)
    await publish(console, settings.kafka.topics.deadletter, letter.trace_id.encode(), encode(letter))
    # An incident as the monitor publishes one (a check of this test's own: other tests
    # count theirs on the same topic); the alerts sink stores it.
    now = utc_now()
    breach = SloBreached(
        alert_id=f"console-{uuid.uuid4().hex[:8]}",
        trace_id="console-alert",
        producer="test",
        check="console_check",
        subject=XSS,
        value=250.0,
        threshold=100.0,
        window_start=now - timedelta(minutes=5),
        window_end=now,
        message="p95 250 ms over 100 ms",
    )
    await publish(console, settings.kafka.topics.alerts, breach.alert_id.encode(), encode(breach))
    await wait_for_trace(base, known.trace_id, len(STAGES))
    await wait_for_trace(base, tricky.trace_id, len(STAGES))

    page = Watched(await browser.new_page(viewport={"width": 1400, "height": 1000}), shot_folders(tmp_path))
    timings: dict[str, float] = {}
    for path in PAGES:
        timings[path] = await page.open(base + path)
        await page.shot({"/": "overview"}.get(path, path.strip("/")))
        assert not page.errors, f"{path}: {page.errors}"

    # The incident: open on the overview, with its evidence on the alerts page.
    await page.open(f"{base}/alerts?since=1h")
    incident = page.page.locator(".incident", has_text=breach.alert_id)
    deadline = time.monotonic() + 30
    while not await incident.count() and time.monotonic() < deadline:
        await asyncio.sleep(1)  # the alerts sink stores it within about a second
        await page.open(f"{base}/alerts?since=1h")
    shown = await incident.inner_text()
    assert "OPEN" in shown and "console_check" in shown and "250" in shown and "100" in shown, shown
    assert XSS in shown
    await page.shot("alerts-open")
    await page.open(base + "/")
    assert breach.message in await page.page.locator("#open-alerts").inner_text()
    assert await page.page.evaluate("window.__xss") is None and not page.dialogs

    # The overview refreshes itself while open (every 10 s).
    await page.open(base + "/")
    before = await page.page.locator("#status").inner_text()
    deadline, now = time.monotonic() + 20, before
    while now == before and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await page.page.locator("#status").inner_text()
    if now == before:
        body = await page.page.locator("main").inner_text()
        pytest.fail(f"the overview did not refresh in 20 s: {before!r}; {page.errors}; {body[:500]}")

    # The known question's trace: its four stages, and the passage its answer cited.
    timings["trace"] = await page.open(f"{base}/trace?id={known.trace_id}")
    await page.shot("trace")
    for stage in STAGES:
        assert await page.page.locator(f"#waterfall .stage-{stage}").count() == 1, stage
    cited = page.page.locator("#passages tr", has=page.page.locator("td.cited"))
    assert await cited.count() >= 1
    assert known.citations[0] in await cited.first.inner_text()
    assert (await page.page.locator("#answer").inner_text()).strip() == known.answer.strip()
    # The prompt as the model got it, and each passage's text as it was sent.
    sent = await page.page.locator("#rendered-prompt").text_content() or ""
    assert sent.startswith("[system]") and "What is a lambda expression?" in sent
    texts = page.page.locator("#passages td.passage-text")
    assert await texts.count() >= 1
    await texts.first.locator("summary").click()
    passage = (await texts.first.locator("pre").inner_text()).strip()
    assert passage and passage[:60] in sent, (passage, sent)
    await page.shot("trace-prompt-and-passages")

    # Found by a word of its answer; a word of no answer finds nothing.
    word = next(w for w in known.answer.split() if len(w) > 6 and w.isalpha())
    await page.open(f"{base}/traces?tenant={tenant}")
    timings["search"] = await page.search(word)
    await page.shot("search")
    assert await page.page.locator(f"#trace-results a[href='/trace?id={known.trace_id}']").count() == 1
    await page.search("zyzzyva-" + uuid.uuid4().hex[:6])
    assert "No trace matches." in await page.page.locator("#trace-results").inner_text()

    # Versions, a label's history and a diff, from the registry the CLI writes.
    await page.open(f"{base}/prompts")
    labels = page.page.locator("#labels")
    assert label in await labels.inner_text() and first.version in await labels.inner_text()
    experiment = page.page.locator(".experiment", has_text=trial.name)
    assert "stopped" in await experiment.inner_text() and f"{label}-b" in await experiment.inner_text()
    await page.page.select_option("#diff-a", first.version)
    await page.page.select_option("#diff-b", second.version)
    await page.page.click("#diff-button")
    await page.page.locator("#diff .add").first.wait_for()
    assert "+top_k = 3" in await page.page.locator("#diff").inner_text()
    await page.shot("prompts-diff")

    # Move the label back from the page: a check, then the move, which the next question
    # pinned to the label is answered with.
    await page.page.fill("#move-label", label)
    await page.page.select_option("#move-to", first.version)
    await page.page.fill("#move-reason", "back from the console")
    await page.page.fill("#label-token", TOKEN)
    await page.page.click("#move-check")
    plan = await page.page.locator("#move-plan").inner_text()
    assert f"{second.version} → {first.version}" in plan, plan
    await page.page.click("#confirm-move")
    await page.page.wait_for_selector("#move-result")
    assert f"-> {first.version}" in await page.page.locator("#move-result").inner_text()
    async with Client(settings) as client:
        deadline, served = time.monotonic() + 30, ""
        while served != first.version and time.monotonic() < deadline:
            served = (await client.ask("What is a lambda?", tenant=tenant, prompt=label)).served.version
    assert served == first.version

    # Stop the running experiment from the page: refused with a wrong token, checked,
    # then stopped, as `llmops experiments stop NAME --reason ...` records it.
    await page.open(f"{base}/prompts")
    stopper = page.page.locator(f".experiment[data-experiment='{running.name}']")
    await stopper.locator(".stop-reason").fill("enough data")
    await stopper.locator(".stop-token").fill("wrong")
    await stopper.locator(".stop-check").click()
    assert "wrong token" in await stopper.locator(".stop-plan").inner_text()
    await stopper.locator(".stop-token").fill(TOKEN)
    await stopper.locator(".stop-check").click()
    await stopper.locator(".stop-plan", has_text="Stopping").wait_for()
    await stopper.locator(".stop-confirm").click()
    await stopper.locator(".stop-result").wait_for()
    assert f"experiment {running.name} stopped" in await stopper.locator(".stop-result").inner_text()
    await page.shot("prompts-experiment-stopped")
    registry = Registry(await asyncio.to_thread(registry_log.read_all, settings.kafka, topic))
    ended = registry.experiment(running.name)
    assert ended is not None and (ended.status, ended.reason) == ("stopped", "enough data")
    assert registry.experiment(trial.name) == trial  # the other one untouched

    # Markup in a question and in a feedback comment stays text, on the list and the trace.
    await page.open(f"{base}/traces?tenant={tenant}")
    await page.open(f"{base}/trace?id={tricky.trace_id}")
    feedback = page.page.locator("#feedback")
    await feedback.get_by_text("window.__xss=2", exact=False).wait_for(timeout=30_000)
    await page.shot("trace-xss")
    assert XSS in await page.page.locator("#question").inner_text()
    assert XSS in (await page.page.locator("#rendered-prompt").text_content() or "")
    markup = page.page.locator("#passages td.passage-text", has_text="window.__xss=2")
    assert await markup.count() >= 1, "the passage with markup was not retrieved"
    await markup.first.locator("summary").click()
    assert XSS in await markup.first.locator("pre").inner_text()
    await page.shot("trace-xss-passage")
    assert await page.page.evaluate("window.__xss") is None and not page.dialogs
    assert (
        await page.page.locator("main img").count() == 0
        and await page.page.locator("main script").count() == 0
    )

    # A conversation's turns from its memory, each with its trace; its id stays text.
    await page.open(f"{base}/conversations?tenant={tenant}")
    async with page.page.expect_navigation():
        await page.page.get_by_role("link", name=CONVERSATION).click()
    await page.page.wait_for_selector("body[data-loaded='1']")
    deadline = time.monotonic() + 30
    while await page.page.locator("#turns tbody tr").count() < 2 and time.monotonic() < deadline:
        await asyncio.sleep(1)  # the last turn's completion reaches the memory just after its answer
        await page.open(page.page.url)
    assert await page.page.locator("#turns tbody tr").count() == 2
    assert await page.page.locator("#conversation-id").inner_text() == CONVERSATION
    assert "No summary yet" in await page.page.locator("#conversation-summary").inner_text()
    await page.shot("conversation")
    assert await page.page.evaluate("window.__xss") is None and not page.dialogs

    # The rolling summary, as the summarize node keeps it in the memory (this stack's
    # extractive backend writes none): a copy of this conversation's memory with one,
    # under an id of its own, in the table's changelog that `llmops conversation show` reads.
    changelog = conversations_topic(settings.worker.app_id)
    record = await asyncio.to_thread(
        latest_record, settings.kafka, changelog, conversation_key(tenant, CONVERSATION)
    )
    assert record is not None
    state = ConversationState.model_validate_json(record)
    summarized = f"s-{uuid.uuid4().hex[:8]}"
    summary = f"The user asked what a lambda expression is. {XSS}"
    copy = state.model_copy(
        update={"conversation_id": summarized, "summary": summary, "unsummarized": state.turns[:1]}
    )
    await publish(
        console, changelog, conversation_key(tenant, summarized).encode(), copy.model_dump_json().encode()
    )
    await page.open(f"{base}/conversation?id={summarized}&tenant={tenant}")
    assert await page.page.locator("#conversation-summary").inner_text() == summary
    assert "1 turn(s) left the memory" in await page.page.locator("#summary").inner_text()
    await page.shot("conversation-summary")
    assert await page.page.evaluate("window.__xss") is None and not page.dialogs
    assert await page.page.locator("main img").count() == 0

    # Replay from the page: refused with a wrong token, dry run first, then answered.
    await page.open(f"{base}/deadletters?since=1h")
    box = page.page.locator(f"input.pick[value='{letter.event_id}']")
    await box.check()
    await page.page.fill("#token", "wrong")
    await page.page.click("#dry-run")
    assert "wrong token" in await page.page.locator("#dry-run-result").inner_text()
    await page.page.fill("#token", TOKEN)
    await page.page.click("#dry-run")
    assert "would replay 1" in await page.page.locator("#dry-run-result").inner_text()
    await page.shot("deadletters-dry-run")
    await page.page.click("#confirm-replay")
    await page.page.wait_for_selector("#replay-result")
    assert "replayed 1" in await page.page.locator("#replay-result").inner_text()
    replayed = await wait_for_trace(base, failed.trace_id, len(STAGES))  # answered this time
    assert [r["answer"] for r in replayed["stages"] if r["stage"] == "generation"][0]
    assert [e for e in page.errors if "403" not in e] == []  # the refused token's response only

    # Refused without the page as well.
    async with aiohttp.ClientSession() as session:
        body = {"token": "wrong", "ids": [letter.event_id], "dry_run": False}
        async with session.post(f"{base}/api/deadletters/replay", json=body) as response:
            assert response.status == 403 and "wrong token" in (await response.json())["error"]
    print(json.dumps({"seconds": {k: round(v, 3) for k, v in timings.items()}}))
