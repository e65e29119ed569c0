"""`llmops dlq`: the dead-letter topic, read to its end and replayed."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from connectors import deadletters
from schemas import DeadLetter, utc_now
from topology.cli.common import parse_since, pass_settings, run_command, window_option

if TYPE_CHECKING:
    from topology.settings import Settings


@click.group()
def dlq() -> None:
    """The dead-letter topic: list, show and replay what failed, with the original bytes."""


def stage_option(f: Any) -> Any:
    return click.option("--stage", help="Only letters of this stage (prompting, feedback, ...).")(f)


def read_letters(settings: Settings, stage: str | None, since: timedelta) -> list[DeadLetter]:
    return deadletters.read(settings.kafka, stage=stage, since=utc_now() - since)


@dlq.command("list")
@stage_option
@window_option
@click.option("--limit", type=int, default=50, show_default=True, help="Newest N.")
@pass_settings
def dlq_list(settings: Settings, stage: str | None, since: timedelta, limit: int) -> None:
    """Dead letters, newest last: when, stage, where they came from, why."""
    from topology.report import describe_window, text_table

    letters = read_letters(settings, stage, since)[-limit:]
    if not letters:
        click.echo(f"no dead letters in the last {describe_window(since)}")
        return
    rows = [
        [
            f"{d.occurred_at:%Y-%m-%d %H:%M:%S}",
            d.event_id,
            d.stage,
            f"{d.topic}@{d.partition}:{d.offset}",
            d.error_type,
            d.reason[:70],
            d.attempts,
        ]
        for d in letters
    ]
    click.echo(text_table(("at", "id", "stage", "from", "error", "reason", "tries"), rows))


@dlq.command("show")
@click.argument("letter_id")
@click.option("--since", default="30d", show_default=True, callback=parse_since, help="How far back to look.")
@pass_settings
def dlq_show(settings: Settings, letter_id: str, since: timedelta) -> None:
    """One dead letter in full, with its original bytes (as text when they are UTF-8)."""
    from topology.report import describe_window

    found = [d for d in read_letters(settings, None, since) if d.event_id == letter_id]
    if not found:
        raise click.ClickException(f"no dead letter {letter_id} in the last {describe_window(since)}")
    letter = found[0]
    shown = letter.model_dump(mode="json", exclude={"original", "key"})
    try:
        shown["original"] = letter.original.decode()
        shown["key"] = letter.key.decode() if letter.key is not None else None
    except UnicodeDecodeError:
        shown["original_base64"] = letter.model_dump(mode="json")["original"]
    click.echo(json.dumps(shown, indent=2, ensure_ascii=False))


@dlq.command("replay")
@stage_option
@window_option
@click.option("--id", "ids", multiple=True, help="Only these letters (repeatable).")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed, send nothing.")
@pass_settings
def dlq_replay(
    settings: Settings, stage: str | None, since: timedelta, ids: tuple[str, ...], dry_run: bool
) -> None:
    """Send dead letters' original bytes back to the topics they failed on, for example
    after the dependency that failed is back. Safe to repeat: what stages write is
    idempotent (chunk ids, event ids); a replayed question is answered again."""
    letters = [d for d in read_letters(settings, stage, since) if not ids or d.event_id in ids]
    if dry_run or not letters:
        click.echo(f"{'would replay' if dry_run else 'nothing to replay:'} {len(letters)} dead letter(s)")
        return
    sent = run_command(deadletters.replay(settings.kafka, letters))
    click.echo(f"replayed {sent} dead letter(s)")
