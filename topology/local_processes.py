"""What the starters of local processes share (the stack in topology/stack.py, Apache
Kafka in topology/apache_kafka.py, which the stack starts): a free port and the error."""

from __future__ import annotations

import socket

from schemas.errors import LLMOpsError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StackError(LLMOpsError):
    pass
