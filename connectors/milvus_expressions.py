"""What Milvus is asked, as text: the content BM25 indexes, filter expressions that no
tenant name or document id can change the meaning of, and the fusion of ranked legs."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence

from schemas.envelope import TENANT_PATTERN
from schemas.errors import PermanentError

_TENANT = re.compile(TENANT_PATTERN)


def content(title: str, text: str) -> str:
    """What BM25 indexes: the same title-and-text the passage embedding is made from."""
    return f"{title}\n{text}" if title else text


def fuse_rrf(legs: Sequence[Sequence[str]], k: int, limit: int) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: each id scores the sum of 1 / (k + rank) over the rankings
    it is in (rank from 1). Best first; ties broken by id so the result is stable."""
    scores: dict[str, float] = defaultdict(float)
    for ranking in legs:
        for rank, pid in enumerate(ranking, start=1):
            scores[pid] += 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:limit]


def string_literal(value: str) -> str:
    """`value` as a Milvus filter string literal. Milvus Lite has no filter templating
    (filter_params), so values are escaped: backslash and quote, and newlines, tabs and
    the like as escapes its parser reads back; other control characters are refused."""
    escaped = json.dumps(value, ensure_ascii=False)
    if "\\u" in escaped.replace("\\\\", ""):
        raise PermanentError(f"{value!r} has control characters a Milvus filter cannot carry")
    return escaped


def tenant_filter(tenant: str) -> str:
    """A filter expression that matches exactly one tenant. Tenants are restricted to a
    closed alphabet (checked again here), so no tenant string can change its meaning."""
    if not _TENANT.fullmatch(tenant):
        raise PermanentError(f"tenant {tenant!r} is not a valid tenant name")
    return f'tenant == "{tenant}"'
