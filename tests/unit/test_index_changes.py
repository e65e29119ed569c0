"""The pure parts of the index lifecycle: the gate's rule, the default target name, and an
index-change event through the topic's bytes into its analytics row."""

from __future__ import annotations

import pytest

from agents.index_changes import change_row, decode_change
from schemas import encode
from schemas.errors import InvalidEvent
from schemas.indexes import KINDS, GateJudged, IndexSwitched
from topology.reindex import target_name
from topology.reindex_gate import passes


def test_the_gate_allows_a_drop_up_to_the_margin_and_no_more():
    assert passes(0.70, 0.70, 0.01) and passes(0.70, 0.691, 0.01) and passes(0.70, 0.75, 0.0)
    assert not passes(0.70, 0.689, 0.01) and not passes(0.70, 0.6999, 0.0)


def test_the_default_target_is_the_same_for_a_rerun_and_a_valid_collection_name():
    name = target_name("passages", "bge-small-en-v1.5", "0123456789abcdef")
    assert name == target_name("passages", "bge-small-en-v1.5", "0123456789abcdef")
    assert name == "passages_bge_small_en_v1_5_01234567"
    assert name != target_name("passages", "bge-small-en-v1.5", "fedcba9876543210")


def change(kind: type, **fields: object):
    common = {
        "trace_id": "c1",
        "producer": "reindex",
        "change_id": "c1",
        "alias": "passages",
        "source": "passages_v1",
        "target": "passages_e5",
        "encoder": "e5-small-v2",
        "source_encoder": "all-MiniLM-L6-v2",
        "actor": "ops@host",
    }
    return kind(**common, **fields)


def test_each_kind_decodes_as_itself_and_becomes_one_row():
    verdict = change(
        GateJudged,
        metric="ndcg_at_10",
        source_score=0.7,
        target_score=0.65,
        margin=0.01,
        queries=300,
        passed=False,
    )
    decoded = decode_change(encode(verdict))
    assert decoded == verdict and type(decoded) is GateJudged
    row = change_row(decoded)
    assert row["event_type"] == "GateJudged" and row["passed"] is False and row["target_score"] == 0.65
    assert row["rows_done"] is None and row["switch_ms"] is None and row["actor"] == "ops@host"
    switched = change_row(change(IndexSwitched, switch_ms=1.5))
    assert switched["switch_ms"] == 1.5 and switched["passed"] is None and switched["metric"] == ""
    assert set(KINDS) >= {"ReindexStarted", "ReindexCompleted", "IndexRolledBack"}


def test_an_unknown_kind_is_refused_as_invalid():
    with pytest.raises(InvalidEvent, match="not an index change"):
        decode_change(b'{"event_type": "Alert"}')
    with pytest.raises(InvalidEvent):
        decode_change(b"not json")
