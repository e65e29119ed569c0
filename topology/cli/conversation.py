"""Conversations from the command line: `chat`, an interactive loop of turns, and
`conversation show`, a conversation's remembered turns with each turn's trace."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from schemas import new_id
from topology.cli.common import pass_settings, run_command

if TYPE_CHECKING:
    from schemas.conversations import ConversationState
    from topology.settings import Settings


def parse_variables(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--var name=value`, repeated."""
    variables = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--var")
        variables[name] = value
    return variables


VAR_OPTION = click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="NAME=VALUE",
    help="A variable the prompt's template renders (repeat for more).",
)


@click.command()
@click.option("--tenant", default="default", show_default=True, help="Whose documents and conversation.")
@click.option("--conversation", "conversation_id", help="Continue this conversation (default: a new one).")
@click.option("--timeout", type=float, help="Seconds to wait for each answer.")
@VAR_OPTION
@pass_settings
def chat(
    settings: Settings,
    tenant: str,
    conversation_id: str | None,
    timeout: float | None,
    variables: tuple[str, ...],
) -> None:
    """Talk with the pipeline: each line you type is a turn of one conversation, answered
    in the context of the earlier turns (end with an empty line, Ctrl-D or /quit). Reads
    standard input, so questions can be piped in too."""
    from connectors.client import Client

    conversation = conversation_id or f"chat-{new_id()[:12]}"
    values = parse_variables(variables)

    async def go() -> None:
        async with Client(settings, producer_name="cli") as client:
            click.echo(f"conversation {conversation} (tenant {tenant}); an empty line ends it", err=True)
            while True:
                line = await asyncio.to_thread(sys.stdin.readline)
                question = line.strip()
                if not question or question == "/quit":
                    break
                started = time.perf_counter()
                response = await client.ask(
                    question, tenant=tenant, conversation=conversation, variables=values, timeout=timeout
                )
                elapsed = (time.perf_counter() - started) * 1000
                click.echo(f"> {question}\n{response.answer}")
                cited = ", ".join(response.citations) or "-"
                click.echo(f"  [cited {cited} | trace {response.trace_id} | {elapsed:.0f} ms]\n")

    run_command(go())


@click.group()
def conversation() -> None:
    """Conversations the pipeline remembers."""


@conversation.command("show")
@click.argument("conversation_id")
@click.option("--tenant", default="default", show_default=True, help="Whose conversation.")
@click.option("--no-traces", is_flag=True, help="Only the turns (no analytics store needed).")
@pass_settings
def show(settings: Settings, conversation_id: str, tenant: str, no_traces: bool) -> None:
    """The turns CONVERSATION_ID remembers (read from the conversations table's
    changelog, what the owning worker recovers from), each with its trace: the stages'
    latencies, tokens and the passages cited."""
    from connectors.conversations import latest_record
    from schemas.conversations import ConversationState, conversation_key
    from topology.topics import conversations_topic

    topic = conversations_topic(settings.worker.app_id)
    key = conversation_key(tenant, conversation_id)
    record = run_command(asyncio.to_thread(latest_record, settings.kafka, topic, key))
    if record is None:
        raise click.ClickException(f"no conversation {conversation_id!r} of tenant {tenant} (or it expired)")
    state = ConversationState.model_validate_json(record)
    traces: dict[str, list[dict[str, Any]]] = {}
    if not no_traces and state.turns:
        traces = _traces(settings, [t.trace_id for t in state.turns])
    click.echo(conversation_text(state, traces), nl=False)


def _traces(settings: Settings, trace_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    from topology.cli.common import with_analytics

    async def read(analytics: Any) -> dict[str, list[dict[str, Any]]]:
        found = {}
        for trace_id in trace_ids:
            stages, _feedback = await analytics.trace(trace_id)
            found[trace_id] = stages.dicts()
        return found

    return with_analytics(settings, read)


def conversation_text(state: ConversationState, traces: dict[str, list[dict[str, Any]]]) -> str:
    out = [
        f"conversation {state.conversation_id}  tenant {state.tenant}  turns answered {state.turn_count} "
        f"(remembered: the last {len(state.turns)})  last active {state.updated_at:%Y-%m-%d %H:%M:%S} UTC"
    ]
    if state.summary:
        out.append(f"summary of the turns before these: {state.summary}")
    if state.unsummarized:
        out.append(f"not summarized yet: {len(state.unsummarized)} older turn(s)")
    if state.in_flight:
        out.append(f"being answered: trace {state.in_flight}; waiting: {len(state.pending)}")
    first = state.turn_count - len(state.turns) + 1
    for number, turn in enumerate(state.turns, start=first):
        out += ["", f"turn {number}  trace {turn.trace_id}  {turn.at:%H:%M:%S}", f"  Q: {turn.question}"]
        if turn.standalone and turn.standalone != turn.question:
            out.append(f"  searched as: {turn.standalone}")
        out.append(f"  A: {turn.answer}")
        out.append(f"  cited: {', '.join(turn.citations) or '-'}")
        rows = traces.get(turn.trace_id)
        if rows:
            stages = " | ".join(
                f"{r['stage']} {float(r['latency_ms']):.1f} ms"
                + (
                    f" ({r['input_tokens']}+{r['output_tokens']} tok)"
                    if r["input_tokens"] or r["output_tokens"]
                    else ""
                )
                for r in rows
            )
            out.append(f"  trace: {stages}")
        elif turn.trace_id in traces:
            out.append("  trace: not in the analytics store (yet)")
    return "\n".join(out) + "\n"
