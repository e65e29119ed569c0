"""The prompt registry on real parts: the CLI writes the compacted registry topic, the
running worker follows it (a faust GlobalTable) and answers with the version a label
points at, on its next request, without a restart. Runs on Tansu and on Apache Kafka.
Each test works on labels of its own, so the stack's served label is never touched."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from connectors.client import Client, RequestError
from schemas.prompts import PromptVersion
from tests.integration.test_cli import llmops
from tests.integration.test_pipeline import docs, tenant
from topology.faults import members_with_queries
from topology.stack import LocalStack


def prompt_file(tmp_path: Path, **fields: object) -> tuple[Path, PromptVersion]:
    body = {
        "name": "registry-test",
        "system": "Answer from the passages.",
        "template": "Passages:\n$context\n\nQ: $question\nA:",
        "retrieval_mode": "dense",
        **fields,
    }
    path = tmp_path / f"prompt-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(body))
    return path, PromptVersion.model_validate(body)


def cli(stack: LocalStack, *args: str) -> str:
    result = llmops(*args, env=stack.env())
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


async def answered_by(client: Client, label: str, owner: str, version: str, timeout: float = 60) -> float:
    """Seconds until a question pinned to `label` is answered by `version`."""
    began = time.monotonic()
    while True:
        answer = await client.ask("What is a lambda expression?", tenant=owner, prompt=label)
        if answer.served.version == version:
            return time.monotonic() - began
        assert time.monotonic() - began < timeout, f"{label} still answers with {answer.served.version}"


async def test_a_label_moved_with_the_cli_answers_the_next_request(stack: LocalStack, tmp_path: Path):
    owner, label = tenant("registry"), f"t-{uuid.uuid4().hex[:8]}"
    first_file, first = prompt_file(tmp_path, top_k=2, seed=11, temperature=0.2)
    second_file, second = prompt_file(tmp_path, top_k=1, seed=12, temperature=0.2)

    assert first.version in cli(stack, "prompts", "push", str(first_file), "--label", label)
    assert second.version in cli(stack, "prompts", "push", str(second_file))
    assert "already registered" in cli(stack, "prompts", "push", str(second_file))

    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)
        await answered_by(client, label, owner, first.version)
        answer = await client.ask("What is a lambda expression?", tenant=owner, prompt=label)
        served = answer.served
        assert (served.prompt, served.label, served.seed, served.temperature) == (
            "registry-test",
            label,
            11,
            0.2,
        )
        assert len(answer.passages) == 2 and answer.passages[0].doc_id == "pydoc-lambda"

        cli(stack, "prompts", "label", label, second.version[:8])
        moved_in = await answered_by(client, label, owner, second.version)
        assert len((await client.ask("What is a lambda?", tenant=owner, prompt=label)).passages) == 1
        cli(stack, "prompts", "rollback", label)
        rolled_in = await answered_by(client, label, owner, first.version)
        print(f"label move seen after {moved_in:.2f}s, rollback after {rolled_in:.2f}s")

        pinned = await client.ask("What is a lambda?", tenant=owner, prompt=second.version)
        assert (pinned.served.version, pinned.served.label) == (second.version, "")
        with pytest.raises(RequestError, match="no prompt label or version"):
            await client.ask("What is a lambda?", tenant=owner, prompt="no-such-label")

    listed = cli(stack, "prompts", "list")
    assert first.version in listed and label in listed and second.version in listed
    diff = cli(stack, "prompts", "diff", first.version, second.version)
    assert "-top_k = 2" in diff and "+top_k = 1" in diff and "+seed = 12" in diff
    shown = cli(stack, "prompts", "show", label)
    assert f'version = "{first.version}"' in shown and label in shown
    refused = llmops("prompts", "rollback", f"never-{label}", env=stack.env())
    assert refused.returncode == 1 and "no label" in refused.stderr
    badly_named = llmops("prompts", "label", "no spaces!", first.version, env=stack.env())
    assert badly_named.returncode == 1 and "label 'no spaces!'" in badly_named.stderr
    assert "Traceback" not in badly_named.stderr


async def test_every_worker_of_the_group_follows_a_label_move(kafka_stack: LocalStack, tmp_path: Path):
    """Two workers share the queries topic's partitions; each holds the whole registry."""
    stack, owner, label = kafka_stack, tenant("two"), f"t-{uuid.uuid4().hex[:8]}"
    first_file, first = prompt_file(tmp_path, top_k=2)
    second_file, second = prompt_file(tmp_path, top_k=3)
    cli(stack, "prompts", "push", str(first_file), "--label", label)
    cli(stack, "prompts", "push", str(second_file))
    await asyncio.to_thread(stack.start_worker, "worker-2")
    try:
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(members_with_queries, stack) < 2:
            assert time.monotonic() < deadline, "the second worker never got a partition"
            await asyncio.sleep(1)
        async with Client(stack.settings) as client:
            await client.ingest(docs("lambda", "with"), tenant=owner)
            cli(stack, "prompts", "label", label, second.version)
            began = time.monotonic()
            while True:
                # 24 traces spread over every partition, so over both workers.
                answers = await asyncio.gather(
                    *(client.ask(f"What is a lambda? ({i})", tenant=owner, prompt=label) for i in range(24))
                )
                if {a.served.version for a in answers} == {second.version}:
                    break
                assert time.monotonic() - began < 60, "some worker still answers with the old version"
    finally:
        await asyncio.to_thread(stack.stop_process, "worker-2")


def test_evaluate_gates_a_worse_version_against_the_baseline(tansu_stack: LocalStack, tmp_path: Path):
    stack, owner, label = tansu_stack, tenant("gate"), f"base-{uuid.uuid4().hex[:6]}"
    golden = tmp_path / "golden"
    golden.mkdir()
    cases = [
        ("How do lambda expressions and the with statement work?", ["pydoc-lambda", "pydoc-with"]),
        ("What do the assert and try statements do?", ["pydoc-assert", "pydoc-try"]),
        ("How do while and for loops work?", ["pydoc-while", "pydoc-for"]),
        ("What is a lambda expression?", ["pydoc-lambda"]),
    ]
    (golden / "golden.jsonl").write_text(
        "".join(json.dumps({"question": q, "doc_ids": d}) + "\n" for q, d in cases)
    )
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps(d) + "\n" for d in docs("lambda", "with", "assert", "try", "while", "for"))
    )
    cli(stack, "ingest", str(corpus), "--tenant", owner)
    base_file, base = prompt_file(tmp_path, top_k=4)
    narrow_file, narrow = prompt_file(tmp_path, top_k=1)
    cli(stack, "prompts", "push", str(base_file), "--label", label)
    cli(stack, "prompts", "push", str(narrow_file))

    same = cli(
        stack,
        "prompts",
        "evaluate",
        base.version,
        "--dataset",
        str(golden),
        "--tenant",
        owner,
        "--against",
        label,
    )
    assert "PASS: ndcg_at_10 +0.0000" in same and "recall_at_10" in same

    worse = llmops(
        "prompts", "evaluate", narrow.version, "--dataset", str(golden), "--tenant", owner,
        "--against", label, "--json", env=stack.env(),
    )  # fmt: skip
    assert worse.returncode == 1, worse.stderr
    report = json.loads(worse.stdout)
    assert report["versions"] == {"candidate": narrow.version, "baseline": f"{label} ({base.version})"}
    assert report["baseline"]["scores"]["recall_at_10"] == 1.0
    assert report["candidate"]["scores"]["recall_at_10"] < 1.0 and report["verdict"]["passed"] is False
    assert report["candidate"]["failed"] == report["baseline"]["failed"] == 0


def test_evaluate_scores_answers_from_a_jsonl_file(tansu_stack: LocalStack, tmp_path: Path):
    """The answer metrics on a real run (extractive backend): the citations and passages
    of each response reach the scores, and a JSON Lines file is a dataset."""
    from agents.indexing import chunk_id, chunk_words
    from topology.samples import python_reference

    stack, owner = tansu_stack, tenant("answers")
    pipeline = stack.settings.pipeline
    texts = {d["doc_id"]: d["text"] for d in python_reference()}

    def passages(doc_id: str) -> list[str]:
        chunks = chunk_words(texts[doc_id], pipeline.chunk_words, pipeline.chunk_overlap)
        return [chunk_id(owner, doc_id, i) for i in range(len(chunks))]

    cases = [
        ("What can a function created with a lambda expression not contain?", "pydoc-lambda",
         ["statements", "annotations"]),
        ("What does the simple form of the assert statement raise when its expression is false?",
         "pydoc-assert", ["AssertionError"]),
    ]  # fmt: skip
    golden = tmp_path / "answers.jsonl"
    golden.write_text(
        "".join(
            json.dumps({"question": q, "doc_ids": [d], "passage_ids": [passages(d)], "key_phrases": k}) + "\n"
            for q, d, k in cases
        )
    )
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs("lambda", "with", "assert")))
    cli(stack, "ingest", str(corpus), "--tenant", owner)
    prompt, version = prompt_file(tmp_path, top_k=3)
    cli(stack, "prompts", "push", str(prompt))

    out = cli(
        stack, "prompts", "evaluate", version.version, "--dataset", str(golden), "--tenant", owner,
        "--against", version.version, "--metric", "citation_recall",
    )  # fmt: skip
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line and line[0].islower()}
    answer_metrics = (
        "citation_precision",
        "citation_recall",
        "context_recall",
        "key_phrase_recall",
        "groundedness",
    )
    candidate = {m: float(table[m][0]) for m in answer_metrics}
    assert all(0.0 <= v <= 1.0 for v in candidate.values()), candidate
    # Extractive answers quote the passages they cite: each cites an expected passage,
    # and every quoted sentence is grounded in the cited text.
    assert candidate["citation_precision"] > 0 and candidate["citation_recall"] > 0, out
    assert candidate["groundedness"] == 1.0, out
    assert candidate["context_recall"] == 1.0, out
    assert "PASS: citation_recall +0.0000" in out
