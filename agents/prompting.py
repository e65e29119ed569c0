"""Prompting: pick the prompt version that answers (the served label, split by its
experiment, or the one the query pinned) and fix its variables. The version, label and
arm travel with the request, so every answer says which prompt produced it. With HyDE
on, the LLM writes the hypothetical passage here and embedding searches with it."""

from __future__ import annotations

from string import Template

from agents import intake
from agents.deps import Dependencies
from connectors.ports import Generation, RenderedPrompt
from schemas import PromptAssembled, PromptSpec, QueryReceived, Served
from schemas.errors import PermanentError
from schemas.prompts import PromptVersion

STAGE = "prompting"
HYDE_NEEDS_AN_LLM = (
    "prompt {version} asks for HyDE, which needs an LLM to write the hypothetical passage: the "
    "extractive backend cannot. Set LLMOPS_LLM__BACKEND=openai (and LLMOPS_LLM__BASE_URL), or push "
    'the prompt with hyde = "off".'
)


async def handle(query: QueryReceived, deps: Dependencies) -> PromptAssembled:
    pipeline = deps.pipeline
    routed = deps.registry.route(
        pipeline.serve_label, query.user or query.trace_id, query.prompt_ref, pipeline.prompt
    )
    prompt = routed.prompt
    admitted = intake.admit(query, pipeline, prompt.top_k)
    served = Served(
        prompt=prompt.name,
        version=prompt.version,
        label=routed.label,
        experiment=routed.experiment,
        arm=routed.arm,
        model=prompt.model,
        temperature=prompt.temperature,
        seed=prompt.seed,
        retrieval_mode=query.retrieval_mode or prompt.retrieval_mode,
        hyde=prompt.hyde,
    )
    spec = PromptSpec(
        served=served,
        system=prompt.system,
        template=prompt.template,
        variables={"question": admitted.question},
        retrieval_text=admitted.question,
        top_k=admitted.top_k,
        max_tokens=prompt.max_tokens,
    )
    if prompt.hyde == "off":
        return query.follow(PromptAssembled, STAGE, prompt=spec)
    passage = await hypothetical_passage(prompt, admitted.question, deps)
    hyde = {"hyde_passage": passage.text, "hyde_model": passage.model, "hyde_usage": passage.usage_details}
    return query.follow(PromptAssembled, STAGE, prompt=spec.model_copy(update=hyde))


async def hypothetical_passage(prompt: PromptVersion, question: str, deps: Dependencies) -> Generation:
    if deps.llm.name == "extractive":
        raise PermanentError(HYDE_NEEDS_AN_LLM.format(version=prompt.version))
    try:
        instruction = Template(prompt.hyde_instruction).substitute(question=question)
    except (KeyError, ValueError) as exc:
        raise PermanentError(f"prompt {prompt.version}: HyDE instruction: {exc!r}") from exc
    return await deps.llm.generate(
        RenderedPrompt(
            system="",
            user=instruction,
            question=question,
            sources=[],
            temperature=prompt.temperature,
            max_tokens=prompt.hyde_max_tokens,
            model=prompt.model,
            seed=prompt.seed,
        )
    )
