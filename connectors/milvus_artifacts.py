"""Prompt artifacts in Milvus: a collection beside the passages (`<collection>_artifacts`)
with the tenant, prompt name, artifact set and the embedding of each artifact's text.
Every search and delete is filtered on the tenant and the prompt (values escaped by
milvus_expressions), and many questions go into one search call.

It is a MilvusStore on that collection, for the store's connection, error mapping,
reload-after-restart and encoder checks (the collection records the encoder that filled
it, and a search with another is refused); its passage methods do not apply here. Like
the passages' name, `<collection>_artifacts` becomes an alias over versioned collections
when `llmops reindex --model` re-embeds the artifacts with the new encoder."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from connectors.encoders import EncoderRecord
from connectors.milvus import MilvusSettings, MilvusStore, Tower
from connectors.milvus_aliases import ENCODER_PROPERTY
from connectors.milvus_expressions import string_literal, tenant_filter
from connectors.ports import Artifact, ArtifactHit
from schemas.errors import PermanentError

log = logging.getLogger(__name__)
_OUTPUT = ["text", "input", "output"]
_LISTED = ["id", "tenant", "prompt", "artifact_set", "text", "input", "output", "tags"]


def artifacts_collection(settings: MilvusSettings) -> str:
    """The artifacts' collection: named after the passages' one, so a test's or a
    deployment's own passage collection brings its own artifacts."""
    return f"{settings.collection}_artifacts"


def artifact_filter(tenant: str, prompt: str, artifact_set: str = "", ids: Sequence[str] = ()) -> str:
    """One tenant's artifacts of a prompt (and of a set, and/or with these ids)."""
    expr = f"{tenant_filter(tenant)} and prompt == {string_literal(prompt)}"
    if artifact_set:
        expr += f" and artifact_set == {string_literal(artifact_set)}"
    if ids:
        expr += f" and id in [{', '.join(string_literal(i) for i in ids)}]"
    return expr


class MilvusArtifacts(MilvusStore):
    """Open with `open()`; the constructor does no I/O. `encoder`: the one tower that
    embeds both the artifacts and the questions compared with them. `collection`: one
    version by its own name (`llmops reindex`) instead of the artifacts' name."""

    def __init__(
        self, settings: MilvusSettings, *, encoder: Tower | None = None, collection: str | None = None
    ) -> None:
        own = settings.model_copy(update={"collection": collection or artifacts_collection(settings)})
        super().__init__(own, reader=encoder, writer=encoder)

    def ensure_collection(self, dim: int, filled_by: EncoderRecord | None = None) -> bool:
        """Create the collection for `dim`-sized vectors if missing (bootstrap); True when
        created. Exact search (FLAT): a prompt's artifacts are few."""
        from pymilvus import DataType

        name = self.collection
        if self._call("has_collection", collection_name=name):
            return False
        client = self._client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("tenant", DataType.VARCHAR, max_length=64)
        schema.add_field("prompt", DataType.VARCHAR, max_length=128)
        schema.add_field("artifact_set", DataType.VARCHAR, max_length=32)
        schema.add_field("text", DataType.VARCHAR, max_length=8_000)
        schema.add_field("input", DataType.VARCHAR, max_length=16_000)
        schema.add_field("output", DataType.VARCHAR, max_length=8_000)
        schema.add_field("tags", DataType.VARCHAR, max_length=4_000)  # a JSON list
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="IP", params={"params": {}})
        if filled_by is None and self._writer is not None:
            filled_by = self._writer.record()
        properties = {ENCODER_PROPERTY: filled_by.to_json()} if filled_by else {}
        self._call(
            "create_collection",
            collection_name=name,
            schema=schema,
            index_params=index,
            properties=properties,
        )
        self._filled_by = filled_by
        return True

    def upsert_artifacts(self, artifacts: Sequence[Artifact]) -> None:
        if not artifacts:
            return
        # Into the collection the check was made against (an alias may move meanwhile).
        target = self._writable()
        rows = [
            {
                "id": a.id,
                "tenant": a.tenant,
                "prompt": a.prompt,
                "artifact_set": a.artifact_set,
                "text": a.text,
                "input": a.input,
                "output": a.output,
                "tags": json.dumps(a.tags, ensure_ascii=False),
                "vector": list(a.vector),
            }
            for a in artifacts
        ]
        self._call("upsert", collection_name=target, data=rows)
        if self._settings.seal_after_upsert:
            self._call("flush", collection_name=target)

    def delete_artifacts(
        self, tenant: str, prompt: str, artifact_set: str = "", ids: Sequence[str] = ()
    ) -> int:
        expr = artifact_filter(tenant, prompt, artifact_set, ids)
        # Counted first: Milvus Lite answers a delete with the ids, a server with a count
        # that includes ids it did not hold.
        held = self._call("query", collection_name=self.collection, filter=expr, output_fields=["id"])
        if not held:
            return 0
        for collection in self.deletable():  # also the one a re-index fills, and the kept one
            try:
                self._call("delete", collection_name=collection, filter=expr)
            except PermanentError as exc:
                if collection == self.collection:
                    raise
                log.warning("deletion not applied to %s: %s", collection, exc)  # reconciled later
                continue
            if self._settings.seal_after_upsert:
                self._call("flush", collection_name=collection)
        return len(held)

    def search_artifacts(
        self, vectors: Sequence[Sequence[float]], tenant: str, prompt: str, artifact_set: str, k: int
    ) -> list[list[ArtifactHit]]:
        """One search call for many questions of one tenant's prompt and set."""
        if not vectors or k < 1:
            return [[] for _ in vectors]
        # The collection the questions' encoder belongs with: the one the name points at,
        # or the one it replaced while the passages' alias has not moved yet.
        collection = self._readable(None)
        found = self._call(
            "search",
            collection_name=collection,
            data=[list(v) for v in vectors],
            anns_field="vector",
            filter=artifact_filter(tenant, prompt, artifact_set),
            limit=k,
            output_fields=_OUTPUT,  # never empty: Milvus reads none as all, vectors included
            search_params={"metric_type": "IP"},
        )
        return [
            [
                ArtifactHit(
                    id=str(row["id"]),
                    text=row["entity"]["text"],
                    input=row["entity"]["input"],
                    output=row["entity"]["output"],
                    score=float(row["distance"]),
                )
                for row in rows
            ]
            for rows in found
        ]

    def listed(
        self, tenant: str, prompt: str = "", ids: Sequence[str] = (), limit: int = 1_000
    ) -> list[dict[str, Any]]:
        """The tenant's artifacts (of a prompt, or these ids) without their vectors, for
        `llmops artifacts list` and `show`."""
        expr = artifact_filter(tenant, prompt, ids=ids) if prompt else tenant_filter(tenant)
        if ids and not prompt:
            expr += f" and id in [{', '.join(string_literal(i) for i in ids)}]"
        rows = self._call(
            "query", collection_name=self.collection, filter=expr, output_fields=_LISTED, limit=limit
        )
        listed = [{**row, "tags": json.loads(row["tags"] or "[]")} for row in rows]
        return sorted(listed, key=lambda r: (r["prompt"], r["artifact_set"], r["id"]))

    def artifact_rows(self, batch: int = 1_000) -> Iterator[Artifact]:
        """Every artifact of the collection with its vector (`llmops reindex`)."""
        iterator = self._call(
            "query_iterator",
            collection_name=self.collection,
            batch_size=batch,
            output_fields=[*_LISTED, "vector"],
        )
        try:
            while page := iterator.next():
                for row in page:
                    yield Artifact(
                        id=str(row["id"]),
                        tenant=row["tenant"],
                        prompt=row["prompt"],
                        artifact_set=row["artifact_set"],
                        text=row["text"],
                        input=row["input"],
                        output=row["output"],
                        tags=json.loads(row["tags"] or "[]"),
                        vector=row["vector"],
                    )
        finally:
            iterator.close()
