"""JSON Schema files for producers in other languages. `python -m schemas.export` rewrites
schemas/jsonschema/; a test fails when a model and its file drift apart."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.artifacts import ArtifactsIndexed, ArtifactsSubmitted, ArtifactsWithdrawn
from schemas.deadletter import DeadLetter
from schemas.documents import DocumentIndexed, DocumentSubmitted, DocumentWithdrawn
from schemas.feedback import FeedbackReceived
from schemas.prompts import Experiment, LabelMoved, PromptVersion
from schemas.queries import (
    ContextRetrieved,
    PromptAssembled,
    QueryEmbedded,
    QueryReceived,
    RequestFailed,
    ResponseDelta,
    ResponseGenerated,
)
from schemas.telemetry import StageCompleted

EVENTS: tuple[type[BaseModel], ...] = (
    QueryReceived,
    PromptAssembled,
    QueryEmbedded,
    ContextRetrieved,
    ResponseDelta,
    ResponseGenerated,
    RequestFailed,
    DocumentSubmitted,
    DocumentWithdrawn,
    DocumentIndexed,
    ArtifactsSubmitted,
    ArtifactsWithdrawn,
    ArtifactsIndexed,
    StageCompleted,
    FeedbackReceived,
    DeadLetter,
    PromptVersion,
    LabelMoved,
    Experiment,
)

SCHEMA_DIR = Path(__file__).parent / "jsonschema"


def render(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(mode="validation"), indent=2, sort_keys=True) + "\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in EVENTS:
        path = directory / f"{model.__name__}.json"
        path.write_text(render(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path)
