"""Prompting: choose the template and fix its variables. The template id and version
travel with the request so every answer says which prompt produced it."""

from __future__ import annotations

from agents import intake
from agents.deps import Dependencies
from schemas import PromptAssembled, PromptSpec, QueryReceived

STAGE = "prompting"


async def handle(query: QueryReceived, deps: Dependencies) -> PromptAssembled:
    admitted = intake.admit(query, deps.pipeline)
    template = deps.pipeline.prompt
    spec = PromptSpec(
        template_id=template.id,
        template_version=template.version,
        system=template.system,
        template=template.template,
        variables={"question": admitted.question},
        retrieval_text=admitted.question,
        top_k=admitted.top_k,
        retrieval_mode=query.retrieval_mode or template.retrieval_mode,
        temperature=template.temperature,
        max_tokens=template.max_tokens,
    )
    return query.follow(PromptAssembled, STAGE, prompt=spec)
