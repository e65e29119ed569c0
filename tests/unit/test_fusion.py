"""Reciprocal rank fusion and the passage text BM25 indexes (pure logic)."""

from __future__ import annotations

import pytest

from connectors.milvus import content, fuse_rrf


def test_rrf_sums_one_over_k_plus_rank_across_legs():
    fused = dict(fuse_rrf([["a", "b", "c"], ["c", "a"]], k=10, limit=10))
    assert fused["a"] == pytest.approx(1 / 11 + 1 / 12)
    assert fused["c"] == pytest.approx(1 / 13 + 1 / 11)
    assert fused["b"] == pytest.approx(1 / 12)


def test_rrf_ranks_agreement_above_one_leg_and_cuts_at_limit():
    fused = fuse_rrf([["x", "a", "b"], ["y", "a", "b"]], k=10, limit=2)
    assert [pid for pid, _ in fused] == ["a", "b"]  # second in both beats first in one


def test_rrf_ties_are_broken_by_id_so_the_order_is_stable():
    assert [pid for pid, _ in fuse_rrf([["b"], ["a"]], k=60, limit=5)] == ["a", "b"]


def test_a_smaller_k_rewards_the_top_of_each_ranking_more():
    legs = [["top", "m1", "m2", "m3", "both"], ["n1", "n2", "n3", "n4", "both"]]
    assert fuse_rrf(legs, k=1, limit=1)[0][0] == "n1"  # a first place beats two fifth places
    assert fuse_rrf(legs, k=60, limit=1)[0][0] == "both"


def test_bm25_indexes_title_and_text_like_the_embedding():
    assert content("Title", "body") == "Title\nbody"
    assert content("", "body") == "body"
