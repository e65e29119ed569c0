"""Prompting: pick the prompt version that answers (the served label, split by its
experiment, or the one the query pinned) and fix its variables. The version, label and
arm travel with the request, so every answer says which prompt produced it. With HyDE
on, the LLM writes the hypothetical passage here and embedding searches with it. With
prompt artifacts on (`artifacts_k`), the artifacts of the pinned set most similar to the
question fill `$examples`, and their ids travel in `Served.artifact_ids`."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template

from agents import conversation, conversation_nodes, intake
from agents.deps import Dependencies
from agents.runtime import Result, per_event
from connectors.ports import ArtifactHit, Generation, RenderedPrompt
from schemas import ContextBudget, PromptAssembled, PromptSpec, QueryReceived, Served
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
    variables = conversation.template_variables(prompt, query)  # before any LM call is paid for
    summarized = await conversation_nodes.summarize(prompt, query, deps)
    condensed = await conversation_nodes.condense(
        prompt, query, admitted.question, deps, summarized.text, summarized.kept
    )
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
        artifact_set=prompt.artifact_set,
    )
    spec = PromptSpec(
        served=served,
        system=prompt.system,
        template=prompt.template,
        variables={**variables, "question": admitted.question},
        retrieval_text=condensed.text,
        top_k=admitted.top_k,
        max_tokens=prompt.max_tokens,
        conversation_id=query.conversation_id,
        history=summarized.kept,
        condense_model=condensed.model,
        condense_usage=condensed.usage or {},
        condense_ms=condensed.ms,
        summary=summarized.text,
        summarized=summarized.taken,
        summarize_model=summarized.model,
        summarize_usage=summarized.usage or {},
        summarize_ms=summarized.ms,
        artifacts_k=prompt.artifacts_k,
    )
    if prompt.hyde == "off":
        return query.follow(PromptAssembled, STAGE, prompt=spec)
    passage = await hypothetical_passage(prompt, condensed.text, deps)
    hyde = {"hyde_passage": passage.text, "hyde_model": passage.model, "hyde_usage": passage.usage_details}
    return query.follow(PromptAssembled, STAGE, prompt=spec.model_copy(update=hyde))


async def handle_batch(queries: Sequence[QueryReceived], deps: Dependencies) -> list[Result]:
    """Each query as `handle` does, concurrently; then the artifacts of the prompts that
    use them: one embedding call for those questions and one search per tenant, prompt
    and set (one per micro-batch while one prompt serves). An error there fails only the
    queries that wanted artifacts."""
    results = list(await _each(queries, deps))
    wanted: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, result in enumerate(results):
        if isinstance(result, PromptAssembled) and result.prompt.artifacts_k:
            served = result.prompt.served
            wanted[result.tenant, served.prompt, served.artifact_set].append(i)
    if not wanted:
        return results
    chosen = [i for group in wanted.values() for i in group]
    try:
        if deps.artifacts is None:
            raise PermanentError(
                "prompt artifacts are on in the prompt but this worker has no artifact store"
            )
        texts = [_assembled(results[i]).prompt.retrieval_text for i in chosen]
        vectors = dict(zip(chosen, await asyncio.to_thread(deps.embedder.embed, texts), strict=True))
    except Exception as exc:  # these queries fail (a transient error is retried); the rest go on
        return [exc if i in chosen else r for i, r in enumerate(results)]
    for (tenant, name, artifact_set), group in wanted.items():
        k = max(_assembled(results[i]).prompt.artifacts_k for i in group)
        try:
            found = await asyncio.to_thread(
                deps.artifacts.search_artifacts, [vectors[i] for i in group], tenant, name, artifact_set, k
            )
        except Exception as exc:  # as above, for this group's queries only
            for i in group:
                results[i] = exc
            continue
        for i, hits in zip(group, found, strict=True):
            results[i] = with_examples(_assembled(results[i]), hits)
    return results


_each = per_event(handle)


def _assembled(result: Result) -> PromptAssembled:
    assert isinstance(result, PromptAssembled)
    return result


def render_examples(hits: Sequence[ArtifactHit]) -> str:
    """The artifacts as `$examples` shows them, most similar first: each its text, then
    its input and output when it is an example."""
    blocks = []
    for n, hit in enumerate(hits, start=1):
        lines = [f"Example {n}:", hit.text]
        if hit.input or hit.output:
            lines += [f"Input: {hit.input}", f"Output: {hit.output}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def with_examples(event: PromptAssembled, hits: Sequence[ArtifactHit]) -> PromptAssembled:
    """The prompt with its `artifacts_k` nearest artifacts in `$examples` and their ids
    in what served it (so the response and telemetry carry them)."""
    spec = event.prompt
    used = list(hits)[: spec.artifacts_k]
    served = spec.served.model_copy(update={"artifact_ids": [h.id for h in used]})
    variables = {**spec.variables, "examples": render_examples(used)}
    return event.model_copy(
        update={"prompt": spec.model_copy(update={"served": served, "variables": variables})}
    )


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


# --- the prompt budget (applied by generation, once the passages are known) -------------

# A sentence ends at ., ! or ? before whitespace (the cut keeps the mark).
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


def passage_block(n: int, title: str, text: str) -> str:
    """Passage number `n` as the prompt's context shows it."""
    return f"[{n}] {title}\n{text}"


@dataclass(frozen=True)
class Fitted:
    texts: list[str]  # the passages' texts that go in, best first; the last may be truncated
    budget: ContextBudget


def fit_passages(
    blocks: Sequence[str], texts: Sequence[str], counts: Sequence[int], room: int, counted_by: str
) -> Fitted:
    """Fit passages, best first, into `room` tokens. `blocks` are the passages as the
    prompt shows them (passage_block), `counts` their tokens, `texts` their bare texts.
    Passages go in whole while they fit. The first that does not is truncated at its last
    sentence end within the room if at least half of it fits (a half passage still
    answers; less is mostly noise), else dropped; it and every passage after it count as
    cut, so the prompt keeps the retrieval's order with no gaps."""
    kept: list[str] = []
    used = cut = cut_tokens = 0
    for block, text, tokens in zip(blocks, texts, counts, strict=True):
        left = room - used
        if cut == 0 and tokens <= left:
            kept.append(text)
            used += tokens
            continue
        cut += 1
        if cut == 1 and tokens > 0 and 2 * left >= tokens:
            header = len(block) - len(text)
            # Tokens are taken as spread evenly over the characters.
            allowed = len(block) * left // tokens - header
            ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, max(allowed, 0))]
            if ends:
                part = text[: ends[-1]]
                sent = -(-tokens * (header + len(part)) // len(block))
                kept.append(part)
                used += sent
                cut_tokens += tokens - sent
                continue
        cut_tokens += tokens
    budget = ContextBudget(
        passages_sent=len(kept),
        passages_cut=cut,
        tokens_sent=used,
        tokens_cut=cut_tokens,
        counted_by=counted_by,
    )
    return Fitted(kept, budget)
