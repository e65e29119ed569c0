"""The passage collection's shape: its fields, the BM25 function that fills the sparse
field from the analysed content, and the dense and sparse indexes (created by
MilvusStore.ensure_collection, the bootstrap step); and how its search results read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors.ports import Hit

TEXT_LIMIT = 65_535  # Milvus VARCHAR max_length


def passage_schema(client: Any, dim: int, cfg: Any) -> tuple[Any, Any]:
    """The schema and index parameters of a passage collection for `dim`-sized vectors;
    `cfg`: the MilvusSettings (not imported: connectors.milvus imports this module)."""
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field("tenant", DataType.VARCHAR, max_length=64)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=128)
    schema.add_field("chunk", DataType.INT64)
    schema.add_field("title", DataType.VARCHAR, max_length=1_000)
    schema.add_field("text", DataType.VARCHAR, max_length=TEXT_LIMIT)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(
        "content",
        DataType.VARCHAR,
        max_length=TEXT_LIMIT,
        enable_analyzer=True,
        analyzer_params=cfg.analyzer,
    )
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="content_bm25",
            function_type=FunctionType.BM25,
            input_field_names=["content"],
            output_field_names=["sparse"],
        )
    )
    index = client.prepare_index_params()
    params: dict[str, Any] = {}
    if cfg.index_type == "HNSW":
        params = {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction}
    elif cfg.index_type == "IVF_FLAT":
        params = {"nlist": cfg.ivf_nlist}
    # Nested for Milvus Lite, as for the sparse index below.
    index.add_index("vector", index_type=cfg.index_type, metric_type="IP", params={"params": params})
    index.add_index(
        "sparse",
        index_type="SPARSE_INVERTED_INDEX",
        metric_type="BM25",
        # Nested: pymilvus 3 sends flat keys as pairs of their own, which Milvus Lite
        # 3.2.2 ignores; it reads one JSON "params" pair, the form older SDKs send and
        # Milvus servers accept.
        params={"params": {"bm25_k1": cfg.bm25_k1, "bm25_b": cfg.bm25_b}},
    )
    return schema, index


def hit(pid: Any, entity: dict[str, Any], score: float) -> Hit:
    return Hit(
        id=str(pid),
        doc_id=entity["doc_id"],
        chunk=int(entity["chunk"]),
        title=entity["title"],
        text=entity["text"],
        score=score,
    )


def scores(rows: Sequence[dict[str, Any]], field_name: str) -> list[float]:
    # Milvus Lite reports BM25 relevance negated (as a distance); BM25 is never negative.
    if field_name == "sparse":
        return [abs(float(row["distance"])) for row in rows]
    return [float(row["distance"]) for row in rows]


def hits(rows: Sequence[dict[str, Any]], field_name: str) -> list[Hit]:
    found = scores(rows, field_name)
    return [hit(row["id"], row["entity"], score) for row, score in zip(rows, found, strict=True)]
