"""The analytics store for real: DDL versioning, idempotent writes and rollups, feedback
linking, the named queries and bound parameters. On chDB always; on a ClickHouse server
too when LLMOPS_CLICKHOUSE__URL is set (skipped, saying so, otherwise)."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest

from agents import feedback, telemetry
from agents.feedback import FeedbackSettings
from connectors.analytics import PROBE_TENANT, Analytics
from connectors.clickhouse import AnalyticsStore, QueryFailed
from connectors.migrations import apply
from connectors.ports import Rows, Window
from schemas import FeedbackReceived, Served, utc_now
from schemas.errors import PermanentError
from tests.integration.analytics_fixtures import stage_event

DAY = timedelta(days=1)
START = utc_now() - timedelta(minutes=5)


async def count(store: AnalyticsStore, sql: str) -> int:
    return int((await store.query(sql)).rows[0][0] or 0)


def trace(n: int, tenant: str = "acme") -> list:
    """One question's four stages, with tokens and cost on generation. They start
    together, so the trace's total is its slowest stage's latency, exactly."""
    at = {"tenant": tenant, "started": START}
    return [
        stage_event(f"t{n}", "prompting", 1 + n, **at, served=Served(prompt="rag", version="2")),
        stage_event(f"t{n}", "embedding", 10 + n, **at, model="minilm", input_tokens=5),
        stage_event(f"t{n}", "retrieval", 20 + n, **at, passage_ids=["a", "b"], passage_scores=[0.9, 0.5]),
        stage_event(
            f"t{n}",
            "generation",
            100 + n,
            **at,
            model="gpt",
            input_tokens=100,
            output_tokens=10,
            cost_usd=0.001,
            served=Served(prompt="rag", version="2"),
            answer=f"answer {n}",
        ),
    ]


async def write(store: AnalyticsStore, events: list) -> int:
    return len(await Analytics(store).insert_new("telemetry", await telemetry.rows(events, store)))


async def test_ddl_is_applied_once_checked_and_extended_by_new_files(store, clickhouse_settings, tmp_path):
    assert await apply(store, clickhouse_settings.ddl_dir) == []
    assert await count(store, "SELECT count() FROM schema_migrations") == len(
        list(clickhouse_settings.ddl_dir.glob("*.sql"))
    )
    ddl = tmp_path / "ddl"
    shutil.copytree(clickhouse_settings.ddl_dir, ddl)
    (ddl / "099_extra.sql").write_text(
        "CREATE TABLE IF NOT EXISTS extra (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
    )
    assert await apply(store, ddl) == ["099_extra.sql"]
    (ddl / "001_telemetry.sql").write_text((ddl / "001_telemetry.sql").read_text() + "\n-- edited\n")
    with pytest.raises(PermanentError, match="changed after it was applied"):
        await apply(store, ddl)


async def test_a_redelivered_batch_changes_no_count_raw_or_rolled_up(store):
    batch = [e for n in range(5) for e in trace(n)]
    assert await write(store, batch) == 20
    assert await write(store, batch) == 0  # the same batch again
    assert await write(store, batch[5:12] + [batch[3], batch[3]]) == 0  # overlapping, with a repeat
    assert await count(store, "SELECT count() FROM telemetry") == 20  # no FINAL: no duplicate stored
    assert await count(store, "SELECT sum(events) FROM stage_minutes") == 20
    assert await count(store, "SELECT sum(events) FROM cost_days WHERE model = 'gpt'") == 5
    more = trace(9)
    assert await write(store, batch[:4] + more) == 4  # only the new trace lands


async def test_named_queries_answer_from_the_rollups_and_the_raw_table(store):
    await write(store, [e for n in range(10) for e in trace(n)] + trace(0, tenant="beta")[:1])
    analytics = Analytics(store)
    latency = {r["stage"]: r for r in (await analytics.latency(DAY, "acme")).dicts()}
    assert set(latency) == {"prompting", "embedding", "retrieval", "generation"}
    assert latency["generation"]["events"] == 10 and latency["generation"]["errors"] == 0
    p50, p95, p99 = latency["generation"]["q"]
    assert 103 <= p50 <= 106 and p50 <= p95 <= p99 <= 109
    cost = {(r["tenant"], r["model"]): r for r in (await analytics.cost(DAY)).dicts()}
    assert cost[("acme", "gpt")]["cost_usd"] == pytest.approx(0.01)
    assert cost[("acme", "gpt")]["input_tokens"] == 1_000 and cost[("acme", "minilm")]["input_tokens"] == 50
    slowest = (await analytics.slowest(DAY, 3, "acme")).dicts()
    assert [r["trace_id"] for r in slowest] == ["t9", "t8", "t7"]
    stages, rated = await analytics.trace("t3")
    rows = stages.dicts()
    assert [r["stage"] for r in rows] == ["prompting", "embedding", "retrieval", "generation"]
    assert rows[2]["passage_ids"] == ["a", "b"] and rows[3]["answer"] == "answer 3"
    assert rated.rows == []
    assert (await analytics.latency(DAY, "nobody")).rows == []


async def test_probe_traffic_is_stored_but_left_out_unless_asked_for(store):
    await write(store, trace(1) + trace(2, tenant=PROBE_TENANT))
    analytics = Analytics(store)
    assert await count(store, "SELECT count() FROM telemetry") == 8  # stored, like any traffic

    def tenants(rows: Rows) -> set[str]:
        return {r["tenant"] for r in rows.dicts()}

    assert tenants(await analytics.cost(DAY)) == {"acme"}
    assert tenants(await analytics.cost(DAY, probes=True)) == {"acme", PROBE_TENANT}
    assert tenants(await analytics.cost(DAY, PROBE_TENANT)) == {PROBE_TENANT}
    assert {r["events"] for r in (await analytics.latency(DAY)).dicts()} == {1}
    assert {r["events"] for r in (await analytics.latency(DAY, probes=True)).dicts()} == {2}
    assert [r["trace_id"] for r in (await analytics.slowest(DAY)).dicts()] == ["t1"]
    # The monitor's windows never see probes.
    window = Window(START - timedelta(minutes=1), START + timedelta(minutes=1))
    assert {(load.stage, load.events) for load in await analytics.stage_loads(window)} == {
        ("prompting", 1),
        ("embedding", 1),
        ("retrieval", 1),
        ("generation", 1),
    }
    assert await analytics.spend_by_tenant(START) == {"acme": pytest.approx(0.001)}


async def test_values_are_bound_never_spliced_and_raw_queries_are_read_only(store):
    await write(store, trace(1))
    analytics = Analytics(store)
    hostile = "acme' OR '1'='1"
    assert (await analytics.latency(DAY, hostile)).rows == []
    found = await analytics.query(
        "SELECT count() AS n FROM telemetry WHERE tenant = {t:String}", {"t": hostile}
    )
    assert found.rows == [[0]]
    for sql in ("DROP TABLE telemetry", "SELECT 1; DROP TABLE telemetry"):
        with pytest.raises(QueryFailed):
            await analytics.query(sql)
    assert await count(store, "SELECT count() FROM telemetry") == 4
    with pytest.raises(QueryFailed):
        await analytics.query("SELECT no_such_column FROM telemetry")


async def test_text_vectors_and_quotes_are_stored_as_they_were_sent(store):
    """Rows go to chDB as UTF-8 JSON inside the INSERT statement."""
    answer = "Ünïcødé 日本語, \"quoted\", back\\slash, a\nnewline, \u2028 and 'single'"
    vector = [0.1 * i - 3.3 for i in range(384)]
    events = [
        stage_event("utf", "generation", 5, tenant="acme", started=START, answer=answer),
        stage_event("utf", "embedding", 5, tenant="acme", started=START, query_vector=vector),
    ]
    assert await write(store, events) == 2
    stored = await store.query("SELECT answer FROM telemetry WHERE trace_id = 'utf' AND stage = 'generation'")
    assert stored.rows == [[answer]]
    stored = await store.query(
        "SELECT query_vector FROM telemetry WHERE trace_id = 'utf' AND stage = 'embedding'"
    )
    assert stored.rows[0][0] == pytest.approx(vector)


def rating(
    trace_id: str, value: object, data_type: str = "BOOLEAN", tenant: str = "acme"
) -> FeedbackReceived:
    return FeedbackReceived(
        trace_id=trace_id, tenant=tenant, producer="test", data_type=data_type, value=value
    )


async def store_feedback(store: AnalyticsStore, events: list[FeedbackReceived], linker=None) -> list:
    built = await feedback.rows(events, Analytics(store), FeedbackSettings())
    rows = [r for r in built if isinstance(r, dict)]
    await Analytics(store).insert_new("feedback", rows)
    if linker is not None:
        await linker.feedback_stored(rows)
    return built


async def test_feedback_is_stored_with_its_traces_prompt_version_and_model(store):
    await write(store, trace(1))
    built = await store_feedback(store, [rating("t1", True), rating("t1", 9, "NUMERIC")])
    assert isinstance(built[1], PermanentError)  # out of range: dead-lettered by the agent
    row = (await store.query("SELECT * FROM feedback FINAL")).dicts()
    assert len(row) == 1 and row[0]["trace_seen"] is True
    assert (row[0]["template_version"], row[0]["model"], row[0]["score"]) == ("2", "gpt", 1)
    by_version = (await Analytics(store).feedback(DAY)).dicts()
    assert [(r["template_id"], r["template_version"], r["events"], r["mean_score"]) for r in by_version] == [
        ("rag", "2", 1, 1)
    ]


async def linked_rows(store: AnalyticsStore) -> list:
    sql = "SELECT tenant, trace_seen, template_version FROM feedback FINAL ORDER BY tenant, trace_seen"
    return (await store.query(sql)).rows


async def test_feedback_before_its_trace_is_marked_then_linked_when_it_lands_and_counted_once(store):
    linker = feedback.Linker(Analytics(store))
    early = [rating("t5", False), rating("t5", 4, "NUMERIC"), rating("t5", True, tenant="other")]
    await store_feedback(store, early, linker)
    assert await count(store, "SELECT countIf(NOT trace_seen) FROM feedback FINAL") == 3
    assert linker.pending == {"t5"}
    await store_feedback(store, early, linker)  # redelivered: no change
    rows = await telemetry.rows(trace(5), store)
    await Analytics(store).insert_new("telemetry", rows)
    await linker.telemetry_stored(rows)
    assert linker.pending == set()
    await linker.link(["t5"])  # linking again changes nothing
    await linker.link(sweep=True)
    # The other tenant's rating of the same trace id is never linked to acme's trace.
    assert await linked_rows(store) == [["acme", True, "2"], ["acme", True, "2"], ["other", False, ""]]
    assert await count(store, "SELECT sum(events) FROM feedback_days") == 2
    unlinked = [r for r in (await Analytics(store).feedback(DAY)).dicts() if r["template_id"] == "(unlinked)"]
    assert [r["events"] for r in unlinked] == [1]


async def test_the_sweep_links_what_no_process_remembers_once_it_has_settled(store):
    await store_feedback(store, [rating("t6", True)])  # stored by a process that then restarted
    await write(store, trace(6))
    await feedback.Linker(Analytics(store), settle_s=3600).link(sweep=True)
    assert await linked_rows(store) == [["acme", False, ""]]  # too fresh for the sweep
    await feedback.Linker(Analytics(store), settle_s=0).link(sweep=True)
    assert await linked_rows(store) == [["acme", True, "2"]]
    assert await count(store, "SELECT sum(events) FROM feedback_days") == 1
