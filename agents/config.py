"""Settings the stages read: limits, defaults, chunking and the built-in prompt."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.prompts import PromptVersion

DEFAULT_TOP_K = 4
# The built-in prompt, served while the registry has no version under the served label.
# Each field can be set as LLMOPS_PIPELINE__PROMPT__<FIELD>; its version is the hash of
# its content, as for registry versions, so an edit is a new version.
BUILTIN_PROMPT: dict[str, Any] = {
    "name": "rag-answer",
    "description": "built in (LLMOPS_PIPELINE__PROMPT__*)",
    "system": (
        "You answer questions using only the numbered passages provided. Cite every claim "
        "with the passage number in brackets, like [1]. If the passages do not contain the "
        "answer, say so."
    ),
    "template": "Passages:\n$context\n\nQuestion: $question\nAnswer:",
    # Hybrid measured best on SciFact through the pipeline (docs/retrieval.md).
    "retrieval_mode": "hybrid",
    # Small local models run on to the cap; answers that cite passages are short
    # (docs/prompts-and-experiments.md, "The built-in prompt").
    "max_tokens": 256,
}


class PipelineSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    default_top_k: int = Field(
        default=DEFAULT_TOP_K, ge=1, le=100, description="Passages per answer (the built-in prompt's top_k)."
    )
    max_question_chars: int = Field(default=4_000, ge=1)
    chunk_words: int = Field(default=160, ge=8, description="Words per indexed chunk.")
    chunk_overlap: int = Field(default=32, ge=0, description="Words shared by adjacent chunks.")
    prompt: PromptVersion = Field(
        default_factory=lambda: PromptVersion(**BUILTIN_PROMPT, top_k=DEFAULT_TOP_K),
        description="The built-in prompt, served while the registry has no version under the served label.",
    )
    serve_label: str = Field(
        default="production",
        description="The registry label that answers queries (split by its running experiment, if any).",
    )

    @model_validator(mode="before")
    @classmethod
    def _complete_the_builtin_prompt(cls, data: Any) -> Any:
        """Fields of the prompt that are not set (LLMOPS_PIPELINE__PROMPT__*) are the
        built-in prompt's; it retrieves `default_top_k` passages."""
        if not isinstance(data, dict) or not isinstance(data.get("prompt", {}), dict):
            return data
        top_k = data.get("default_top_k", DEFAULT_TOP_K)
        return {**data, "prompt": {**BUILTIN_PROMPT, "top_k": top_k, **data.get("prompt", {})}}

    @model_validator(mode="after")
    def _one_top_k(self) -> PipelineSettings:
        if self.prompt.top_k != self.default_top_k:
            raise ValueError(
                f"pipeline.prompt.top_k ({self.prompt.top_k}) differs from pipeline.default_top_k "
                f"({self.default_top_k}): set LLMOPS_PIPELINE__DEFAULT_TOP_K only"
            )
        return self
