"""Artifacts: store the prompt artifacts pushed for a prompt (embed their texts in one call
per micro-batch, upsert under content-hash ids, so pushing the same file twice changes
nothing) and remove withdrawn ones. Prompting reads them (agents/prompting.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agents.deps import Dependencies
from connectors.ports import Artifact, ArtifactStore
from schemas.artifacts import ArtifactsIndexed, ArtifactsSubmitted, ArtifactsWithdrawn, distinct
from schemas.errors import PermanentError

STAGE = "artifacts"
NO_STORE = "this worker has no artifact store (Dependencies.artifacts): prompt artifacts are off"


def store_of(deps: Dependencies) -> ArtifactStore:
    if deps.artifacts is None:
        raise PermanentError(NO_STORE)
    return deps.artifacts


async def handle_batch(
    events: Sequence[ArtifactsSubmitted | ArtifactsWithdrawn], deps: Dependencies
) -> list[ArtifactsIndexed]:
    """Requests are handled in order (a prompt's share a partition): the pushes of a run
    of pushes are embedded together and upserted in one call, before the withdrawal that
    follows them, if any."""
    store = store_of(deps)
    replies: list[ArtifactsIndexed] = []
    run: list[ArtifactsSubmitted] = []
    for event in [*events, None]:
        if isinstance(event, ArtifactsSubmitted):
            run.append(event)
            continue
        if run:
            replies += await _store(run, store, deps)
            run = []
        if isinstance(event, ArtifactsWithdrawn):
            removed = await asyncio.to_thread(
                store.delete_artifacts, event.tenant, event.prompt, event.artifact_set, event.ids
            )
            replies.append(
                event.follow(
                    ArtifactsIndexed,
                    STAGE,
                    prompt=event.prompt,
                    artifact_set=event.artifact_set,
                    removed=removed,
                )
            )
    return replies


async def _store(
    events: Sequence[ArtifactsSubmitted], store: ArtifactStore, deps: Dependencies
) -> list[ArtifactsIndexed]:
    contents = [distinct(e.artifacts) for e in events]
    # The question's encoder for both sides: prompting compares questions with these texts.
    vectors = await asyncio.to_thread(deps.embedder.embed, [a.text for c in contents for a in c])
    rows, at = [], 0
    for event, content in zip(events, contents, strict=True):
        for artifact_id, a in zip(event.ids(), content, strict=True):
            rows.append(
                Artifact(
                    id=artifact_id,
                    tenant=event.tenant,
                    prompt=event.prompt,
                    artifact_set=event.artifact_set,
                    text=a.text,
                    input=a.input,
                    output=a.output,
                    tags=list(a.tags),
                    vector=vectors[at].tolist(),
                )
            )
            at += 1
    await asyncio.to_thread(store.upsert_artifacts, rows)
    return [
        e.follow(ArtifactsIndexed, STAGE, prompt=e.prompt, artifact_set=e.artifact_set, ids=e.ids())
        for e in events
    ]
