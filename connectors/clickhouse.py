"""The analytics store behind one small async interface, with two backends that run the
same DDL and SQL: chDB (the ClickHouse engine in this process, data in a directory) and
a ClickHouse server through clickhouse-connect. Parameters are always bound by the
engine (`{name:Type}` placeholders); no value is ever formatted into SQL text."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.binding import format_bind_value
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_core import PydanticSerializationError, to_json

from connectors.ports import AnalyticsStore, Rows
from schemas.errors import PermanentError, TransientError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JSON_SETTINGS = {"output_format_json_quote_64bit_integers": 0, "output_format_json_quote_denormals": 0}


class ClickHouseSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str | None = Field(
        default=None,
        description="http(s)://host:8123 of a ClickHouse server; unset: chDB in `path`.",
    )
    path: Path = Field(default=Path(".llmops/analytics"), description="chDB data directory.")
    ddl_dir: Path = Field(
        # Shipped inside the package (package data), so an installed wheel has it too.
        default=Path(str(files("connectors") / "ddl")),
        description="Versioned DDL files (NNN_name.sql) that `llmops bootstrap` applies.",
    )
    database: str = Field(default="llmops", pattern=NAME.pattern)
    username: str = "default"
    password: SecretStr | None = None
    query_timeout_s: float = Field(default=30.0, gt=0)


class StoreUnavailable(TransientError):
    """The store did not answer or refused a write; retrying later may work."""


class QueryFailed(PermanentError):
    """ClickHouse rejected the query itself (syntax, unknown column, bad parameter)."""


def json_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """JSONEachRow body (UTF-8); datetimes as UTC text ClickHouse parses without settings.
    Encoded by pydantic_core: json.dumps of the rows that carry a query vector was the
    analytics process's largest cost after chDB itself (docs/scaling.md)."""
    lines = []
    for row in rows:
        plain = {k: _utc_text(v) if isinstance(v, datetime) else v for k, v in row.items()}
        try:
            lines.append(to_json(plain) + b"\n")
        except PydanticSerializationError:  # a lone surrogate, say: json escapes it
            lines.append(json.dumps(plain).encode() + b"\n")
    return b"".join(lines)


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def checked_table(table: str) -> str:
    if not NAME.match(table):
        raise ValueError(f"not a table name: {table!r}")
    return table


class ChdbStore:
    """chDB: one directory, one process (a second process fails on the directory lock),
    one session per process. Calls run on one thread so the event loop stays free."""

    backend = "chdb"

    def __init__(self, settings: ClickHouseSettings) -> None:
        self._settings = settings
        self._session: Any = None
        self._thread: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._session is not None:
            return
        self._thread = self._thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        path = self._settings.path.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        database = self._settings.database

        def connect() -> Any:
            from chdb import session

            try:
                s = session.Session(str(path))
            except Exception as exc:
                raise StoreUnavailable(
                    f"cannot open the chDB directory {path}: {exc}. Only one process can open it; "
                    "while the stack runs, ask its analytics service instead"
                ) from exc
            s.query(f"CREATE DATABASE IF NOT EXISTS {database}")
            s.query(f"USE {database}")
            for name, value in JSON_SETTINGS.items():
                s.query(f"SET {name} = {value}")
            return s

        try:
            self._session = await self._run(connect)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await self._run(session.close)
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.shutdown(wait=True)

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Rows:
        raw = await self._execute(sql, parameters, fmt="JSONCompact")
        return Rows.parse(raw)

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        await self._execute(sql, parameters, fmt="CSV")

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            body = json_rows(rows).decode()
            await self._execute(f"INSERT INTO {checked_table(table)} FORMAT JSONEachRow\n{body}", None, "CSV")

    async def _execute(self, sql: str, parameters: Mapping[str, Any] | None, fmt: str) -> str:
        if self._session is None:
            raise StoreUnavailable("the chDB store is not open")
        session = self._session
        params = {k: format_bind_value(v) for k, v in (parameters or {}).items()} or None

        def call() -> str:
            try:
                result = session.query(sql, fmt, params=params)
            except Exception as exc:
                raise _classify(exc) from exc
            return str(result.data())

        return await self._run(call)

    async def _run(self, fn: Any) -> Any:
        if self._thread is None:
            raise StoreUnavailable("the chDB store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)


class ServerStore:
    """A ClickHouse server over HTTP(S) through clickhouse-connect's async client."""

    backend = "server"

    def __init__(self, settings: ClickHouseSettings) -> None:
        self._settings = settings
        self._client: Any = None

    async def open(self) -> None:
        if self._client is not None:
            return
        import clickhouse_connect

        s = self._settings
        password = s.password.get_secret_value() if s.password else ""
        try:
            admin = await clickhouse_connect.get_async_client(
                dsn=s.url, username=s.username, password=password
            )
            await admin.command(f"CREATE DATABASE IF NOT EXISTS {s.database}")
            await admin.close()
            self._client = await clickhouse_connect.get_async_client(
                dsn=s.url,
                username=s.username,
                password=password,
                database=s.database,
                send_receive_timeout=s.query_timeout_s,
            )
        except Exception as exc:
            raise StoreUnavailable(f"ClickHouse at {s.url}: {exc}") from exc

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Rows:
        client = self._require()
        try:
            raw = await client.raw_query(
                sql, parameters=dict(parameters or {}), settings=JSON_SETTINGS, fmt="JSONCompact"
            )
        except Exception as exc:
            raise _classify(exc) from exc
        return Rows.parse(raw)

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        client = self._require()
        try:
            await client.command(sql, parameters=dict(parameters or {}))
        except Exception as exc:
            raise _classify(exc) from exc

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        client = self._require()
        try:
            await client.raw_insert(checked_table(table), insert_block=json_rows(rows), fmt="JSONEachRow")
        except Exception as exc:
            raise _classify(exc) from exc

    def _require(self) -> Any:
        if self._client is None:
            raise StoreUnavailable("the ClickHouse client is not open")
        return self._client


# ClickHouse error codes that name a fault in the query, not in the store's health.
_QUERY_ERRORS = re.compile(
    r"\((SYNTAX_ERROR|UNKNOWN_IDENTIFIER|UNKNOWN_FUNCTION|ILLEGAL_TYPE_OF_ARGUMENT|TYPE_MISMATCH|"
    r"CANNOT_PARSE_\w+|BAD_ARGUMENTS|UNKNOWN_QUERY_PARAMETER|NUMBER_OF_ARGUMENTS_DOESNT_MATCH|"
    r"READONLY|ACCESS_DENIED|NOT_AN_AGGREGATE|ILLEGAL_AGGREGATION)\)"
)


def _classify(exc: Exception) -> Exception:
    if isinstance(exc, TransientError | PermanentError):
        return exc
    message = str(exc)
    if _QUERY_ERRORS.search(message):
        return QueryFailed(message[:2_000])
    return StoreUnavailable(message[:2_000])


def open_store(settings: ClickHouseSettings) -> AnalyticsStore:
    """The backend these settings name (not yet opened)."""
    return ServerStore(settings) if settings.url else ChdbStore(settings)
