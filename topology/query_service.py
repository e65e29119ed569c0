"""The query service: how other processes read the analytics store while this process
owns it (a chDB directory opens in one process only). Two faust web views: `/health/`
and `/sql/` (one read-only SELECT with bound parameters; `connectors.analytics.ServiceStore`
is its client)."""

from __future__ import annotations

from collections.abc import Callable

import faust
from faust.web import Request, Response, View

from connectors.analytics import read_only
from connectors.clickhouse import QueryFailed, StoreUnavailable
from connectors.ports import AnalyticsStore


def add_query_service(app: faust.App, store: AnalyticsStore, is_open: Callable[[], bool]) -> None:
    """Serve `store` on the app's web server; 503 until `is_open()`."""

    @app.page("/health/")
    class Health(View):
        async def get(self, request: Request) -> Response:
            if not is_open():
                return self.error(503, "the analytics store is not open yet")
            return self.json({"ok": True, "backend": store.backend})

    @app.page("/sql/")
    class Sql(View):
        async def post(self, request: Request) -> Response:
            if not is_open():
                return self.error(503, "the analytics store is not open yet")
            try:
                body = await request.json()
                sql, parameters = body["sql"], body.get("parameters") or {}
                rows = await store.query(read_only(sql), parameters)
            except (KeyError, TypeError, ValueError) as exc:
                return self.error(400, f"expected JSON {{'sql': ..., 'parameters': {{...}}}}: {exc}")
            except QueryFailed as exc:
                return self.error(400, str(exc))
            except StoreUnavailable as exc:
                return self.error(503, str(exc))
            return self.json(rows.to_json())
