"""Documents that change, through the real pipeline and Milvus Lite: re-ingesting a
shorter version removes the old tail; withdrawing a document (`client.delete`,
`llmops ingest --delete`) removes all its chunks from its tenant only, whatever its id
says (quotes and filter syntax in doc ids must not change what is deleted)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from connectors.client import Client
from connectors.milvus import MilvusStore
from tests.integration.test_cli import llmops
from topology.stack import LocalStack

ADVERSARIAL = [
    'x" or tenant != "',
    "x' or 1 == 1 or doc_id == '",
    'b\\" or "1"=="1',
    "back\\slash",
    "new\nline",
    'q") or (chunk >= 0',
    "plain",
]


def tenant(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def text(words: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(words))


def chunks_of(stack: LocalStack, owner: str) -> dict[str, list[int]]:
    store = MilvusStore(stack.settings.milvus)
    store.open()
    try:
        rows = store._call(
            "query",
            collection_name=stack.settings.milvus.collection,
            filter=f'tenant == "{owner}"',
            output_fields=["doc_id", "chunk"],
        )
    finally:
        store.close()
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(row["doc_id"], []).append(int(row["chunk"]))
    return {d: sorted(c) for d, c in found.items()}


async def test_a_shorter_version_leaves_no_old_tail(tansu_stack: LocalStack):
    owner = tenant("tail")
    async with Client(tansu_stack.settings) as client:
        [long] = await client.ingest([{"doc_id": "doc", "text": text(900, "old")}], tenant=owner)
        [other] = await client.ingest([{"doc_id": "other", "text": text(900, "keep")}], tenant=owner)
        assert chunks_of(tansu_stack, owner)["doc"] == list(range(long.chunks))
        [short] = await client.ingest([{"doc_id": "doc", "text": text(120, "new")}], tenant=owner)
        assert 1 <= short.chunks < long.chunks
        found = chunks_of(tansu_stack, owner)
        assert found == {"doc": list(range(short.chunks)), "other": list(range(other.chunks))}
        answer = await client.ask("old850 old851 old852", tenant=owner, retrieval_mode="bm25")
    assert all("old" not in p.text for p in answer.passages)


@pytest.mark.parametrize("doc_id", ADVERSARIAL)
async def test_delete_removes_one_documents_chunks_from_one_tenant(tansu_stack: LocalStack, doc_id: str):
    owner, neighbour = tenant("owner"), tenant("neighbour")
    docs = [{"doc_id": doc_id, "text": text(500, "a")}, {"doc_id": "x", "text": text(300, "b")}]
    async with Client(tansu_stack.settings) as client:
        await client.ingest(docs, tenant=owner)
        await client.ingest(docs, tenant=neighbour)
        before = chunks_of(tansu_stack, owner)
        reply = await client.delete(doc_id, tenant=owner)
    assert reply.doc_id == doc_id and reply.chunks == 0
    assert chunks_of(tansu_stack, owner) == {"x": before["x"]}
    assert chunks_of(tansu_stack, neighbour) == before


async def test_requests_sent_back_to_back_are_handled_in_order(tansu_stack: LocalStack):
    """Not waiting for replies in between: one partition per document keeps its
    submissions and withdrawals in the order they were sent."""
    owner = tenant("order")
    async with Client(tansu_stack.settings) as client:
        await client.ingest([{"doc_id": f"d{i}", "text": text(300, "w")} for i in range(3)], tenant=owner)
        # gather starts each request in turn: each is published before the next one.
        replies = await asyncio.gather(
            client.ingest([{"doc_id": "d0", "text": text(600, "v")}], tenant=owner),
            client.delete("d0", tenant=owner),
            client.delete("d1", tenant=owner),
            client.ingest([{"doc_id": "d1", "text": text(50, "z")}], tenant=owner),
        )
    [bigger], gone0, gone1, [smaller] = replies
    assert bigger.chunks > 1 and gone0.chunks == gone1.chunks == 0 and smaller.chunks == 1
    found = chunks_of(tansu_stack, owner)
    assert set(found) == {"d1", "d2"} and found["d1"] == [0]


async def test_the_cli_withdraws_a_document(tansu_stack: LocalStack, tmp_path: Path):
    owner = tenant("cli")
    async with Client(tansu_stack.settings) as client:
        await client.ingest(
            [{"doc_id": 'say "hi"', "text": text(300, "a")}, {"doc_id": "b", "text": "b"}], tenant=owner
        )
    env = tansu_stack.env()
    done = await asyncio.to_thread(llmops, "ingest", "--delete", 'say "hi"', "--tenant", owner, env=env)
    assert done.returncode == 0, done.stderr
    assert 'say "hi": every chunk deleted for tenant' in done.stdout
    assert set(chunks_of(tansu_stack, owner)) == {"b"}
    neither = await asyncio.to_thread(llmops, "ingest", env=env)
    assert neither.returncode == 2 and "missing FILE (or --delete ID)" in neither.stderr
    (tmp_path / "docs.jsonl").write_text('{"doc_id": "b", "text": "b"}\n')
    both = await asyncio.to_thread(llmops, "ingest", str(tmp_path / "docs.jsonl"), "--delete", "b", env=env)
    assert both.returncode == 2 and "not both" in both.stderr
