"""Intake: the checks a question passes before any work is spent on it."""

from __future__ import annotations

from dataclasses import dataclass

from agents.config import PipelineSettings
from schemas import QueryReceived
from schemas.errors import PermanentError


@dataclass(frozen=True)
class Admitted:
    question: str
    top_k: int


def admit(query: QueryReceived, settings: PipelineSettings, default_top_k: int) -> Admitted:
    question = " ".join(query.question.split())
    if not question:
        raise PermanentError("the question is blank")
    if len(question) > settings.max_question_chars:
        raise PermanentError(
            f"the question has {len(question)} characters; the limit is "
            f"{settings.max_question_chars} (pipeline.max_question_chars)"
        )
    return Admitted(question=question, top_k=query.top_k or default_top_k)
