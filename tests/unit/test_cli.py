"""The CLI's plumbing without any I/O: settings are read once per invocation and only
when a command needs them; errors we raise on purpose become one line, not a traceback."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from schemas.errors import PermanentError
from topology.cli import Llmops, main
from topology.cli import common as cli_common
from topology.cli.common import Invocation, current_settings, pass_settings, run_command


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts how often the settings tree is read from the environment."""
    calls: list[int] = []
    real = cli_common.load_settings

    def counted():  # type: ignore[no-untyped-def]
        calls.append(1)
        return real()

    monkeypatch.setattr(cli_common, "load_settings", counted)
    return calls


def test_settings_are_read_once_per_invocation(reads: list[int]):
    seen = []

    @click.group(cls=Llmops)
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.obj = Invocation()

    @group.command()
    @pass_settings
    def twice(settings) -> None:  # type: ignore[no-untyped-def]
        seen.extend([settings, current_settings()])

    result = CliRunner().invoke(group, ["twice"])
    assert result.exit_code == 0, result.output
    assert len(reads) == 1 and seen[0] is seen[1]
    assert CliRunner().invoke(main, ["topology"]).exit_code == 0
    assert len(reads) == 2  # a new invocation reads them again


def test_help_and_bad_arguments_need_no_settings(reads: list[int], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMOPS_WORKER__REBALANCE_TIMEOUT_S", "not a number")
    runner = CliRunner()
    assert runner.invoke(main, ["ask", "--help"]).exit_code == 0
    assert runner.invoke(main, ["feedback", "some-trace", "maybe"]).exit_code == 2
    assert reads == []
    broken = runner.invoke(main, ["topology"])
    assert broken.exit_code == 1 and "invalid LLMOPS_* configuration" in broken.output


def test_our_errors_are_one_line_at_the_group_and_in_coroutines():
    @click.group(cls=Llmops)
    def group() -> None:
        pass

    @group.command()
    def sync() -> None:
        raise PermanentError("the target collection exists already: choose a new name")

    async def late() -> None:
        raise TimeoutError

    @group.command("async")
    def in_coroutine() -> None:
        run_command(late())

    for name, message in [
        ("sync", "Error: the target collection exists already: choose a new name\n"),
        ("async", "Error: no reply in time: is a worker running (`llmops up`)? Its log says more.\n"),
    ]:
        result = CliRunner().invoke(group, [name])
        assert result.exit_code == 1 and result.output == message, result.output
