"""Prompt artifacts on the embedded stack (Tansu, Milvus Lite, ONNX, extractive backend):
a file pushed twice is stored once, a prompt version that pins its set gets the nearest
artifacts into its prompt and the ids into the response and telemetry, tenants and
prompt names never reach each other's artifacts whatever the name, and `rm` removes.
The extractive backend ignores the rendered prompt, so the answer itself can't show them:
the ids recorded are what this checks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from connectors.analytics import Analytics
from connectors.client import Client
from connectors.milvus_artifacts import MilvusArtifacts
from tests.integration.test_cli import llmops
from tests.integration.test_pipeline import docs, tenant
from tests.integration.test_prompt_registry import cli, prompt_file
from topology.stack import LocalStack

QUESTION = "What is a lambda expression?"
LINES = [
    {"text": "What does a lambda expression create?", "input": "[1] lambda", "output": "A function [1]."},
    {"text": "How is a while loop ended?", "input": "[1] while", "output": "With break [1]."},
    {"text": "Cite every claim with its passage number.", "tags": ["style"]},
]


def artifacts_file(tmp_path: Path) -> Path:
    path = tmp_path / f"artifacts-{uuid.uuid4().hex[:6]}.jsonl"
    # A line twice: one set, one copy.
    path.write_text("\n".join(json.dumps(line) for line in [*LINES, LINES[0]]) + "\n")
    return path


def stored(stack: LocalStack, owner: str, prompt: str = "") -> list[dict]:
    store = MilvusArtifacts(stack.settings.milvus)
    store.open()
    try:
        return store.listed(owner, prompt)
    finally:
        store.close()


async def telemetry_rows(stack: LocalStack, trace_id: str, stages: int = 4) -> list[dict]:
    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        deadline = time.monotonic() + 60
        while True:
            rows, _ = await analytics.trace(trace_id)
            if len(rows.rows) >= stages or time.monotonic() > deadline:
                return rows.dicts()
            await asyncio.sleep(0.5)
    finally:
        await analytics.close()


async def test_pushed_artifacts_shape_the_prompt_and_are_recorded(tansu_stack: LocalStack, tmp_path: Path):
    owner, other, empty = tenant("art"), tenant("art-other"), tenant("art-none")
    name = f"art-{uuid.uuid4().hex[:6]}"
    # A prompt name that would widen a filter built by pasting it in.
    sly = f'{name}" or tenant != "nobody'
    path = artifacts_file(tmp_path)

    first = cli(tansu_stack, "artifacts", "push", str(path), "--prompt", name, "--tenant", owner)
    second = cli(tansu_stack, "artifacts", "push", str(path), "--prompt", name, "--tenant", owner)
    set_version = cli(tansu_stack, "artifacts", "hash", str(path), "--prompt", name).strip()
    assert f"3 artifacts stored for prompt {name} of tenant {owner}, set {set_version}" in first
    assert first == second
    rows = stored(tansu_stack, owner, name)
    assert len(rows) == 3 and {r["artifact_set"] for r in rows} == {set_version}
    cli(tansu_stack, "artifacts", "push", str(path), "--prompt", name, "--tenant", other)
    cli(tansu_stack, "artifacts", "push", str(path), "--prompt", sly, "--tenant", other)
    assert len(stored(tansu_stack, other)) == 6 and len(stored(tansu_stack, owner)) == 3

    template = "Examples:\n$examples\n\nPassages:\n$context\n\nQ: $question\nA:"
    spec = {"template": template, "artifacts_k": 2, "artifact_set": set_version}
    file, version = prompt_file(tmp_path, name=name, **spec)
    sly_set = cli(tansu_stack, "artifacts", "hash", str(path), "--prompt", sly).strip()
    sly_file, sly_version = prompt_file(tmp_path, name=sly, **{**spec, "artifact_set": sly_set})
    cli(tansu_stack, "prompts", "push", str(file))
    cli(tansu_stack, "prompts", "push", str(sly_file))

    async with Client(tansu_stack.settings) as client:
        await client.ingest(docs("lambda", "while"), tenant=owner)
        answer = await asked(client, QUESTION, owner, version.version)
        ids = answer.served.artifact_ids
        by_text = {r["text"]: r["id"] for r in rows}
        # The nearest two of the owner's set, the lambda example first.
        assert answer.served.artifact_set == set_version and len(ids) == 2
        assert ids[0] == by_text[LINES[0]["text"]] and set(ids) <= {r["id"] for r in rows}
        # Another tenant gets its own copies; a tenant with none gets none, never another's.
        theirs = await asked(client, QUESTION, other, version.version)
        assert theirs.served.artifact_ids and set(theirs.served.artifact_ids).isdisjoint(ids)
        assert (await asked(client, QUESTION, empty, version.version)).served.artifact_ids == []
        # The owner has no artifacts under the sly name: its quote does not reach the others.
        assert (await asked(client, QUESTION, owner, sly_version.version)).served.artifact_ids == []
        assert len((await asked(client, QUESTION, other, sly_version.version)).served.artifact_ids) == 2

        telemetry = await telemetry_rows(tansu_stack, answer.trace_id)
        assert {r["stage"]: r["artifact_ids"] for r in telemetry} == {
            "prompting": ids,
            "embedding": ids,
            "retrieval": ids,
            "generation": ids,
        }
        assert all(r["artifact_set"] == set_version for r in telemetry)
        traced = cli(tansu_stack, "trace", answer.trace_id)
        assert f"artifacts (set {set_version}): {', '.join(ids)}" in traced

        listed = cli(tansu_stack, "artifacts", "list", "--prompt", name, "--tenant", owner)
        assert all(r["id"] in listed for r in rows) and "[style]" in listed
        shown = cli(tansu_stack, "artifacts", "show", ids[0], "--tenant", owner)
        assert LINES[0]["output"] in shown and f"set {set_version}" in shown
        missing = llmops("artifacts", "show", ids[0], "--tenant", other, env=tansu_stack.env())
        assert missing.returncode == 1 and "no artifact" in missing.stderr

        removed = cli(
            tansu_stack, "artifacts", "rm", "--prompt", name, "--set", set_version, "--tenant", owner
        )
        assert f"3 artifacts removed from prompt {name} of tenant {owner}" in removed
        assert stored(tansu_stack, owner) == [] and len(stored(tansu_stack, other)) == 6
        after = await client.ask(QUESTION, tenant=owner, prompt=version.version)
        assert after.served.artifact_ids == [] and after.served.artifact_set == set_version
    refused = llmops("artifacts", "rm", "--prompt", name, env=tansu_stack.env())
    assert refused.returncode == 2 and "name the artifacts" in refused.stderr


async def asked(client: Client, question: str, owner: str, version: str, timeout: float = 60):
    """Ask pinned to `version` once the workers know it (they follow the registry topic)."""
    from connectors.client import RequestError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.ask(question, tenant=owner, prompt=version)
        except RequestError as exc:
            if "no prompt label or version" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def test_a_bad_artifacts_file_is_refused_and_nothing_is_sent(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "half", "input": "a question"}\nnot json\n')
    result = llmops("artifacts", "hash", str(path), "--prompt", "p")
    assert result.returncode == 1 and "nothing was sent" in result.stderr
    assert f"{path}:2:" in result.stderr and f"{path}:3: not JSON" in result.stderr
    assert "Traceback" not in result.stderr
