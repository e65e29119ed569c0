"""`llmops artifacts`: prompt artifacts (few-shot examples, metadata snippets) stored for a
prompt. `push` and `rm` go through the artifacts topic to the pipeline's artifacts stage;
`list` and `show` read the artifacts' Milvus collection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from schemas.artifacts import MAX_ARTIFACTS, ArtifactContent, artifact_set_version
from topology.cli.common import pass_settings, run_command

if TYPE_CHECKING:
    from topology.settings import Settings


def read_artifacts(path: Path) -> list[ArtifactContent]:
    """The file's artifacts, or one error naming every bad line (nothing is sent then)."""
    found, problems = [], []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("expected a JSON object")
                found.append(ArtifactContent(**row))
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON: {exc}")
            except ValidationError as exc:
                error = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in error["loc"])
                problems.append(f"{path}:{number}: {where + ': ' if where else ''}{error['msg']}")
            except (ValueError, TypeError) as exc:
                problems.append(f"{path}:{number}: {exc}")
    if problems:
        raise click.ClickException("nothing was sent; fix these lines:\n" + "\n".join(problems[:20]))
    if not found:
        raise click.ClickException(f"{path}: no artifacts in it")
    if len(found) > MAX_ARTIFACTS:
        raise click.ClickException(f"{path}: {len(found)} artifacts; a set holds at most {MAX_ARTIFACTS}")
    return found


@click.group()
def artifacts() -> None:
    """Prompt artifacts: examples and snippets the prompting stage puts into a prompt.

    A prompt version uses them with `artifacts_k` (how many, most similar to the question
    first) and `artifact_set` (the version `push` prints) and renders them where its
    template says $examples. See docs/prompts-and-experiments.md."""


@artifacts.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prompt", required=True, help="The prompt's name (a prompt version's `name`).")
@click.option("--tenant", default="default", show_default=True, help="Owner of these artifacts.")
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait.")
@pass_settings
def push(settings: Settings, file: Path, prompt: str, tenant: str, timeout: float) -> None:
    """Store the artifacts in FILE for PROMPT, as one set. Pushing the same file again
    changes nothing.

    FILE is JSON Lines, one artifact a line: `text` (what a question is compared with, and
    what the prompt shows first), optionally an `input` and `output` pair (a few-shot
    example) and `tags` (a list of strings)."""
    from connectors.client import Client

    contents = read_artifacts(file)

    async def go() -> None:
        async with Client(settings, producer_name="cli") as client:
            stored = await client.push_artifacts(prompt, contents, tenant=tenant, timeout=timeout)
        click.echo(
            f"{len(stored.ids)} artifacts stored for prompt {prompt} of tenant {tenant}, "
            f"set {stored.artifact_set}\n"
            f'use them in a prompt version with artifact_set = "{stored.artifact_set}", '
            "artifacts_k = N and $examples in its template"
        )

    run_command(go())


@artifacts.command(name="hash")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prompt", required=True, help="The prompt's name.")
def hash_command(file: Path, prompt: str) -> None:
    """Print the set version FILE would have for PROMPT (no stack needed)."""
    click.echo(artifact_set_version(prompt, read_artifacts(file)))


def _open(settings: Settings) -> Any:
    from connectors.milvus_artifacts import MilvusArtifacts

    store = MilvusArtifacts(settings.milvus)
    store.open()
    return store


@artifacts.command(name="list")
@click.option("--prompt", default="", help="Only this prompt's artifacts.")
@click.option("--tenant", default="default", show_default=True, help="Whose artifacts.")
@pass_settings
def list_command(settings: Settings, prompt: str, tenant: str) -> None:
    """List the tenant's artifacts: id, prompt, set, tags and the start of the text."""
    from schemas.errors import LLMOpsError

    store = _open(settings)
    try:
        rows = store.listed(tenant, prompt)
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    if not rows:
        click.echo(f"no artifacts for tenant {tenant}" + (f" and prompt {prompt}" if prompt else ""))
        return
    for row in rows:
        text = " ".join(row["text"].split())
        tags = f" [{', '.join(row['tags'])}]" if row["tags"] else ""
        click.echo(f"{row['id']}  {row['prompt']}  set {row['artifact_set']}{tags}  {text[:60]}")


@artifacts.command()
@click.argument("artifact_id")
@click.option("--tenant", default="default", show_default=True, help="Whose artifact.")
@pass_settings
def show(settings: Settings, artifact_id: str, tenant: str) -> None:
    """Print one artifact of the tenant whole."""
    from schemas.errors import LLMOpsError

    store = _open(settings)
    try:
        rows = store.listed(tenant, ids=[artifact_id])
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    if not rows:
        raise click.ClickException(f"no artifact {artifact_id} for tenant {tenant}")
    row = rows[0]
    click.echo(f"artifact {row['id']}\nprompt {row['prompt']}, set {row['artifact_set']}, tenant {tenant}")
    if row["tags"]:
        click.echo(f"tags: {', '.join(row['tags'])}")
    click.echo(f"text:\n{row['text']}")
    if row["input"] or row["output"]:
        click.echo(f"input:\n{row['input']}\noutput:\n{row['output']}")


@artifacts.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--prompt", required=True, help="The prompt whose artifacts to remove.")
@click.option("--set", "artifact_set", default="", help="Remove this set (its version).")
@click.option("--all", "everything", is_flag=True, help="Remove every artifact of the prompt.")
@click.option("--tenant", default="default", show_default=True, help="Whose artifacts.")
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait.")
@pass_settings
def rm(
    settings: Settings,
    ids: tuple[str, ...],
    prompt: str,
    artifact_set: str,
    everything: bool,
    tenant: str,
    timeout: float,
) -> None:
    """Remove artifacts of PROMPT from the tenant: the ones named by ID, or a whole --set,
    or --all of them."""
    from connectors.client import Client

    if everything == bool(ids or artifact_set):
        raise click.UsageError("name the artifacts to remove: ID..., --set VERSION, or --all")

    async def go() -> None:
        async with Client(settings, producer_name="cli") as client:
            done = await client.remove_artifacts(
                prompt, tenant=tenant, artifact_set=artifact_set, ids=ids, timeout=timeout
            )
        click.echo(f"{done.removed} artifacts removed from prompt {prompt} of tenant {tenant}")

    run_command(go())
