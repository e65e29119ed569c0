"""What every command group shares: this invocation's settings, read once and passed
through click's context object; running a coroutine; turning our errors into one
readable line; the --since option; opening the analytics store.

Imports that are expensive (the settings tree pulls in every section's module, the
analytics store pulls in chDB and clickhouse-connect) happen on first use, so that
`llmops --help` and argument errors answer at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import update_wrapper
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click
from pydantic import ValidationError

from schemas.errors import LLMOpsError

if TYPE_CHECKING:
    from connectors.analytics import Analytics
    from topology.settings import Settings

T = TypeVar("T")
P = ParamSpec("P")
CONFIG_HELP = (
    "Configuration comes from LLMOPS_* environment variables, nested with '__', for example "
    "LLMOPS_KAFKA__BOOTSTRAP_SERVERS=broker:9092 or LLMOPS_LLM__BACKEND=openai."
)


def load_settings() -> Settings:
    from topology.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid LLMOPS_* configuration:\n{exc}") from exc


class Invocation:
    """One `llmops` run, kept as click's `ctx.obj`. The settings are read on first use,
    not by the group, so that `--help` and bad arguments work with a broken environment
    and commands that need no settings (sample-corpus) never read them."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings


def current_settings() -> Settings:
    """The settings of the running invocation (read now if no command read them yet)."""
    return click.get_current_context().ensure_object(Invocation).settings


def pass_settings(command: Callable[Concatenate[Settings, P], T]) -> Callable[P, T]:
    """Call the command with this invocation's settings as its first argument."""

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return command(current_settings(), *args, **kwargs)

    return update_wrapper(run, command)


@contextmanager
def readable_errors() -> Iterator[None]:
    """Errors we raise on purpose become one line on stderr and exit code 1."""
    try:
        yield
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc


def run_command(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; our errors become one readable line and exit code 1."""
    try:
        with readable_errors():
            return asyncio.run(coro)
    except TimeoutError as exc:
        raise click.ClickException(
            "no reply in time: is a worker running (`llmops up`)? Its log says more."
        ) from exc


def parse_since(_: click.Context, param: click.Parameter, value: str) -> timedelta:
    from topology.report import parse_window

    try:
        return parse_window(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from exc


def window_option(f: Any) -> Any:
    return click.option(
        "--since",
        default="24h",
        show_default=True,
        callback=parse_since,
        help="How far back: 90s, 15m, 24h, 7d.",
    )(f)


def with_analytics(settings: Settings, use: Callable[[Analytics], Awaitable[T]]) -> T:
    """Run `use(analytics)` with the configured analytics (the running stack's service,
    a ClickHouse server, or the chDB directory) and close it after."""
    from connectors.analytics import Analytics

    async def go() -> T:
        analytics = await Analytics.connect(settings.clickhouse, settings.analytics)
        try:
            return await use(analytics)
        finally:
            await analytics.close()

    return run_command(go())
