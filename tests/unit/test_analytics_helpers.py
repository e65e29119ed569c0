"""Pure helpers of the analytics side: DDL files, read-only SQL, windows, tables, charts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from connectors.analytics import read_only
from connectors.clickhouse import ClickHouseSettings, QueryFailed, Rows, json_rows
from connectors.migrations import Migration, load
from schemas.errors import PermanentError
from topology import charts
from topology.report import describe_window, parse_window, text_table


def test_the_shipped_ddl_files_load_in_version_order():
    found = load(ClickHouseSettings().ddl_dir)
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].name == "001_telemetry.sql"
    assert all(m.statements() for m in found)


def test_statements_split_at_line_end_semicolons_and_drop_comments():
    m = Migration(1, "001_x.sql", "-- a; comment\nCREATE TABLE a (x String DEFAULT ';');\n\nSELECT 1;\n")
    assert m.statements() == ["CREATE TABLE a (x String DEFAULT ';')", "SELECT 1"]


def test_badly_named_or_duplicate_ddl_files_are_refused(tmp_path: Path):
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(PermanentError, match="NNN_name.sql"):
        load(tmp_path)
    (tmp_path / "1_x.sql").unlink()
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 2;")
    with pytest.raises(PermanentError, match="share a version"):
        load(tmp_path)


@pytest.mark.parametrize("sql", ["SELECT 1", " with x AS (SELECT 1) SELECT * FROM x ;", "select 2;"])
def test_one_select_is_read_only(sql):
    assert read_only(sql).lower().lstrip().startswith(("select", "with"))


@pytest.mark.parametrize(
    "sql", ["DROP TABLE telemetry", "SELECT 1; DROP TABLE telemetry", "INSERT INTO t SELECT 1", "  "]
)
def test_anything_else_is_refused(sql):
    with pytest.raises(QueryFailed):
        read_only(sql)


def test_rows_parse_clickhouse_json_compact_and_round_trip():
    rows = Rows.parse('{"meta": [{"name": "a", "type": "UInt8"}], "data": [[1], [2]], "rows": 2}')
    assert rows.dicts() == [{"a": 1}, {"a": 2}]
    assert Rows.from_json(rows.to_json()) == rows
    assert Rows.parse("").rows == []


def test_json_rows_write_datetimes_as_utc_text():
    from datetime import UTC, datetime

    body = json_rows([{"t": datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)}])
    assert body == b'{"t":"2026-01-02 03:04:05.678"}\n'


def test_json_rows_read_back_as_what_json_writes_for_every_value_we_store():
    import json

    rows = [
        {
            "vector": [0.1 * i - 3.3 for i in range(384)] + [1e-300, 12345678.9, float("inf")],
            "text": 'é, \u2028, "quoted", \\ and a\nnewline',
            "ids": ["a", "b"],
            "n": None,
            "ok": True,
            "big": 10**18,
        },
        {"text": "lone \udc80 surrogate"},  # pydantic_core refuses it: json escapes it
    ]
    lines = json_rows(rows).splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == json.loads(json.dumps(rows[0]))
    assert json.loads(lines[1]) == rows[1]
    assert json_rows([]) == b""


@pytest.mark.parametrize(("text", "expected"), [("90s", 90), ("15m", 900), ("24h", 86_400), ("7d", 604_800)])
def test_windows(text, expected):
    assert parse_window(text) == timedelta(seconds=expected)
    assert parse_window(describe_window(parse_window(text))) == parse_window(text)


@pytest.mark.parametrize("text", ["", "0h", "1w", "h", "-1d"])
def test_bad_windows_say_how_to_write_one(text):
    with pytest.raises(ValueError, match="like 15m or 24h"):
        parse_window(text)


def test_text_tables_align_columns():
    table = text_table(("a", "long header"), [["x", 1.5], ["yyyy", None]])
    lines = table.splitlines()
    column = lines[0].index("long header")
    assert lines[2][column:].startswith("1.5") and lines[3][column:].startswith("-")
    assert lines[3].startswith("yyyy")


def test_nice_ticks_cover_the_range_with_round_steps():
    assert charts.nice_ticks(0, 97) == [0, 25, 50, 75, 100]
    assert charts.nice_ticks(0, 0.3)[-1] >= 0.3


def test_a_line_chart_draws_one_path_per_series_and_dots_for_points():
    svg = charts.line_chart("c", "T", {"a": [(0, 1), (60, 2)], "b": [(30, 5)]}, "ms")
    assert svg.count('class="series"') == 2 and svg.count("<circle") == 3
    assert "no data" in charts.line_chart("c", "T", {}, "ms")


def test_labels_are_escaped():
    svg = charts.bar_chart("c", "T", [("<script>", 1.0)], "USD")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
