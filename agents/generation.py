"""Generation: render the prompt with the retrieved passages and ask the LLM backend."""

from __future__ import annotations

from string import Template

from agents.deps import Dependencies
from connectors.ports import RenderedPrompt, Source
from schemas import ContextRetrieved, ResponseGenerated
from schemas.errors import PermanentError

STAGE = "generation"


def render(event: ContextRetrieved) -> RenderedPrompt:
    """Fill the template once, with the context; user text is a value, never a template."""
    spec, served = event.prompt, event.prompt.served
    sources = [Source(id=p.id, title=p.title, text=p.text) for p in event.passages]
    context = "\n\n".join(f"[{n}] {s.title}\n{s.text}" for n, s in enumerate(sources, start=1))
    try:
        user = Template(spec.template).substitute(spec.variables, context=context)
    except (KeyError, ValueError) as exc:
        raise PermanentError(f"template {served.prompt}@{served.version}: {exc!r}") from exc
    if served.temperature is None:  # optional in Served for old telemetry; a prompt always has one
        raise PermanentError(f"prompt {served.prompt}@{served.version} carries no temperature")
    return RenderedPrompt(
        system=spec.system,
        user=user,
        question=spec.variables.get("question", ""),
        sources=sources,
        temperature=served.temperature,
        max_tokens=spec.max_tokens,
        model=served.model,
        seed=served.seed,
    )


async def handle(event: ContextRetrieved, deps: Dependencies) -> ResponseGenerated:
    prompt = render(event)
    generation = await deps.llm.generate(prompt)
    return event.follow(
        ResponseGenerated,
        STAGE,
        question=prompt.question,
        answer=generation.text,
        citations=generation.citations,
        passages=event.passages,
        model=generation.model,
        served=event.prompt.served,
        # HyDE's tokens beside the answer's (telemetry counts them on the prompting stage).
        usage_details={
            **generation.usage_details,
            **{f"hyde_{k}": v for k, v in event.prompt.hyde_usage.items()},
        },
        latency_ms=event.latency_ms,
    )
