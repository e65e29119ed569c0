"""How `with LocalStack(...)` treats the stop signals, with start and stop replaced (no
process starts): a stop signal unwinds the block, stop() runs once, the handlers are put
back, and a handler the caller chose (`llmops up`) is left alone.
tests/integration/test_stack_signals.py ends a real stack with SIGTERM."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from topology.settings import Settings
from topology.stack import STOP_SIGNALS, LocalStack, StopRequested


class Recorded(LocalStack):
    """A stack whose start and stop only count."""

    def __init__(self, tmp_path: Path) -> None:
        stack = Settings().stack.model_copy(update={"data_dir": tmp_path})
        super().__init__(Settings().model_copy(update={"stack": stack}), broker=False, worker=False)
        self.stops = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._stopping.set()
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal while stopping must not cut it short
        self.stops += 1


@pytest.fixture
def default_handlers():
    before = {sig: signal.signal(sig, signal.SIG_DFL) for sig in STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_a_stop_signal_unwinds_the_block_and_stops_the_stack_once(default_handlers, tmp_path, sig):
    stack = Recorded(tmp_path)
    with pytest.raises(StopRequested, match=signal.Signals(sig).name), stack:
        assert signal.getsignal(sig) is not signal.SIG_DFL
        os.kill(os.getpid(), sig)
        pytest.fail("the signal did not interrupt the block")
    assert stack.stops == 1
    assert all(signal.getsignal(s) is signal.SIG_DFL for s in STOP_SIGNALS)


def test_a_handler_the_caller_chose_is_kept(default_handlers, tmp_path):
    received = []
    signal.signal(signal.SIGTERM, lambda *_: received.append("caller"))
    with Recorded(tmp_path) as stack:
        os.kill(os.getpid(), signal.SIGTERM)
    assert received == ["caller", "caller"] and stack.stops == 1  # the block's and stop()'s
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
