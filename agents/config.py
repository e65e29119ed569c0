"""Settings the stages read: limits, defaults, chunking and the built-in prompt template."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.queries import RetrievalMode


class PromptTemplate(BaseModel):
    """The built-in prompt, served while the registry has no version under the served
    label. A template rendered once with `$question` and `$context` (string.Template
    syntax); its version is the hash of its content, as for registry versions."""

    model_config = ConfigDict(frozen=True)

    id: str = "rag-answer"
    system: str = (
        "You answer questions using only the numbered passages provided. Cite every claim "
        "with the passage number in brackets, like [1]. If the passages do not contain the "
        "answer, say so."
    )
    template: str = "Passages:\n$context\n\nQuestion: $question\nAnswer:"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1)
    # Hybrid measured best on SciFact through the pipeline (README, "Retrieval quality").
    retrieval_mode: RetrievalMode = "hybrid"


class PipelineSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    default_top_k: int = Field(default=4, ge=1, le=100, description="Passages per answer.")
    max_question_chars: int = Field(default=4_000, ge=1)
    chunk_words: int = Field(default=160, ge=8, description="Words per indexed chunk.")
    chunk_overlap: int = Field(default=32, ge=0, description="Words shared by adjacent chunks.")
    prompt: PromptTemplate = PromptTemplate()
    serve_label: str = Field(
        default="production",
        description="The registry label that answers queries (split by its running experiment, if any).",
    )
