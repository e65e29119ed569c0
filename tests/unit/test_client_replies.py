"""How the client matches the replies it reads to its waiting asks (no broker: the
reader thread hands `_settle` what one fetch brought)."""

from __future__ import annotations

import asyncio

from connectors.client import Client
from schemas import RequestFailed, encode, new_id
from topology.settings import Settings


def failed(trace_id: str) -> RequestFailed:
    return RequestFailed(
        trace_id=trace_id,
        tenant="default",
        producer="generation",
        stage="generation",
        error_type="PermanentError",
        reason="test",
    )


async def test_a_reply_is_matched_by_its_key_and_other_requests_replies_are_skipped() -> None:
    client = Client(Settings())
    mine = new_id()
    waiting: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    client._pending[mine] = waiting
    # Keyed by a trace nobody here waits for: skipped before it is decoded, even though
    # its body names a waiting trace (the pipeline never sends such a reply).
    client._settle([(new_id().encode(), encode(failed(mine))), (b"x", b"not json")])
    assert not waiting.done()
    client._settle([(mine.encode(), encode(failed(mine)))])
    assert isinstance(waiting.result(), RequestFailed)
    assert waiting.result().trace_id == mine  # type: ignore[attr-defined]


async def test_a_reply_without_a_key_is_decoded_and_matched_by_its_trace_id() -> None:
    client = Client(Settings())
    mine = new_id()
    waiting: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    client._pending[mine] = waiting
    client._settle([(None, encode(failed(mine)))])
    assert waiting.result().trace_id == mine  # type: ignore[attr-defined]
