"""What flows between the stages: the envelope, the events, the codec and the errors."""

from schemas.codec import decode, encode
from schemas.deadletter import DeadLetter
from schemas.documents import DocumentIndexed, DocumentSubmitted
from schemas.envelope import Event, new_id, utc_now
from schemas.errors import InvalidEvent, LLMOpsError, PermanentError, TransientError
from schemas.feedback import FeedbackReceived
from schemas.queries import (
    ContextBudget,
    ContextRetrieved,
    Passage,
    PromptAssembled,
    PromptSpec,
    QueryEmbedded,
    QueryReceived,
    RequestFailed,
    ResponseDelta,
    ResponseGenerated,
    RetrievalMode,
    Served,
)
from schemas.telemetry import StageCompleted

__all__ = [
    "ContextBudget",
    "ContextRetrieved",
    "DeadLetter",
    "DocumentIndexed",
    "DocumentSubmitted",
    "Event",
    "FeedbackReceived",
    "InvalidEvent",
    "LLMOpsError",
    "Passage",
    "PermanentError",
    "PromptAssembled",
    "PromptSpec",
    "QueryEmbedded",
    "RequestFailed",
    "QueryReceived",
    "ResponseDelta",
    "ResponseGenerated",
    "RetrievalMode",
    "Served",
    "StageCompleted",
    "TransientError",
    "decode",
    "encode",
    "new_id",
    "utc_now",
]
