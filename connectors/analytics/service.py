"""The query service's client: reads through the process that owns the analytics store
(chDB opens its directory in one process only), and the read-only rule it enforces."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.clickhouse import QueryFailed, Rows, StoreUnavailable


class ServiceSettings(BaseModel):
    """The query service of the process that owns the analytics store."""

    model_config = ConfigDict(frozen=True)

    host: str = Field(default="127.0.0.1", description="Bind address; keep it local: it runs SQL.")
    port: int = Field(default=6066, ge=0, le=65535)
    timeout_s: float = Field(default=30.0, gt=0)
    console_token: SecretStr | None = Field(
        default=None, description="The web console's actions (replay) ask for it; unset: they are off."
    )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


_READ_ONLY = re.compile(r"^\s*(SELECT|WITH)\b", re.IGNORECASE)


def read_only(sql: str) -> str:
    """One SELECT statement, or QueryFailed. chDB runs `a; b` as two statements, so a
    `;` anywhere but the end is refused: pass values as parameters, not in the text."""
    statement = sql.strip().rstrip(";").strip()
    if not _READ_ONLY.match(statement) or ";" in statement:
        raise QueryFailed("only one SELECT (or WITH ... SELECT) statement; bind values as {name:Type}")
    return statement


class ServiceStore:
    """Reads through the owner's query service over HTTP (read-only)."""

    backend = "service"

    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health/", None)

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Rows:
        body = {"sql": sql, "parameters": dict(parameters or {})}
        return Rows.from_json(await self._call("POST", "/sql/", body))

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        raise QueryFailed("the query service is read-only")

    async def insert(self, table: str, rows: Any) -> None:
        raise QueryFailed("the query service is read-only")

    async def _call(self, method: str, path: str, body: Any) -> Any:
        await self.open()
        assert self._session is not None
        url = self._settings.url + path
        try:
            async with self._session.request(method, url, json=body) as response:
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise StoreUnavailable(f"analytics service at {self._settings.url}: {exc}") from exc
        if response.status >= 500:
            raise StoreUnavailable(f"analytics service: {payload.get('error', response.status)}")
        if response.status >= 400:
            raise QueryFailed(str(payload.get("error", response.status)))
        return payload
