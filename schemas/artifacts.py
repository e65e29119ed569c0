"""Prompt artifacts: few-shot examples and metadata snippets stored for a prompt, of which
the prompting stage puts the ones most similar to the question into the prompt.

A file of artifacts pushed for a prompt is one *artifact set*, named by a hash of its
content (`artifact_set_version`), as a prompt version is: the same file is the same set
in every tenant, in any line order, duplicates counted once. A prompt version pins the set
it was evaluated with (`PromptVersion.artifact_set`), so moving a label to another
version changes the prompt and its examples together. An artifact's id hashes its
tenant, prompt, set and content, so pushing the same file twice stores nothing new."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from schemas.codec import decode
from schemas.envelope import Event, Frozen, Identifier

SET_CHARS = 12
ID_CHARS = 32
# One set travels as one event: these keep it well under the runtime's 1 MB guard.
MAX_ARTIFACTS = 100
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# The set version: what a prompt version's `artifact_set` names.
SetVersion = Annotated[str, StringConstraints(pattern=rf"^[0-9a-f]{{{SET_CHARS}}}$")]


class ArtifactContent(Frozen):
    """One artifact as a file line gives it. `text` is what a question is compared with
    (its embedding) and the first thing the prompt shows of it; `input` and `output`, a
    pair or neither, follow it (a few-shot example: what was asked, what was answered)."""

    text: str = Field(min_length=1, max_length=2_000)
    input: str = Field(default="", max_length=4_000)
    output: str = Field(default="", max_length=2_000)
    tags: list[Tag] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _a_pair_or_neither(self) -> ArtifactContent:
        if bool(self.input) != bool(self.output):
            raise ValueError("give `input` and `output` together (an example), or neither")
        return self

    def canonical(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def artifact_set_version(prompt: str, artifacts: list[ArtifactContent]) -> str:
    """The set's version: a hash of the prompt name and the distinct artifacts, whatever
    their order. No tenant: the same file is the same set everywhere."""
    contents = sorted({a.canonical() for a in artifacts})
    return _digest(prompt, *contents)[:SET_CHARS]


def artifact_id(tenant: str, prompt: str, artifact_set: str, content: ArtifactContent) -> str:
    return _digest(tenant, prompt, artifact_set, content.canonical())[:ID_CHARS]


def distinct(artifacts: list[ArtifactContent]) -> list[ArtifactContent]:
    """The artifacts with duplicates left out, in their first order."""
    return list({a.canonical(): a for a in artifacts}.values())  # a dict keeps first positions


class ArtifactsSubmitted(Event):
    """A set of artifacts for a prompt of the tenant: stored (embedded and upserted) by
    the artifacts stage, which replies with ArtifactsIndexed on the indexed topic. Keyed
    by `artifacts_key`, so a prompt's pushes and removals are handled in order."""

    event_type: Literal["ArtifactsSubmitted"] = "ArtifactsSubmitted"
    prompt: Identifier = Field(description="The prompt's name (PromptVersion.name) they are for.")
    artifacts: list[ArtifactContent] = Field(min_length=1, max_length=MAX_ARTIFACTS)
    artifact_set: str = Field(
        default="", description="Derived: the set's version; any other value is refused."
    )

    @model_validator(mode="after")
    def _set_is_the_content_hash(self) -> ArtifactsSubmitted:
        digest = artifact_set_version(self.prompt, self.artifacts)
        if self.artifact_set and self.artifact_set != digest:
            raise ValueError(
                f"artifact_set {self.artifact_set!r} is not the hash of these artifacts ({digest})"
            )
        object.__setattr__(self, "artifact_set", digest)  # frozen: set once, before anyone sees it
        return self

    def ids(self) -> list[str]:
        """The ids of the distinct artifacts, in file order."""
        return [artifact_id(self.tenant, self.prompt, self.artifact_set, a) for a in distinct(self.artifacts)]


class ArtifactsWithdrawn(Event):
    """Remove artifacts of a prompt of the tenant: those of `artifact_set` and/or with
    these `ids`; with neither, every artifact of the prompt."""

    event_type: Literal["ArtifactsWithdrawn"] = "ArtifactsWithdrawn"
    prompt: Identifier
    artifact_set: SetVersion | Literal[""] = ""
    ids: list[Identifier] = Field(default_factory=list, max_length=1_000)


class ArtifactsIndexed(Event):
    """The reply to either: the set and the ids stored, or how many were removed."""

    event_type: Literal["ArtifactsIndexed"] = "ArtifactsIndexed"
    prompt: Identifier
    artifact_set: str = ""
    ids: list[str] = Field(default_factory=list, description="The artifacts stored (a push).")
    removed: int = Field(default=0, ge=0, description="The artifacts removed (a withdrawal).")
    latency_ms: dict[str, float] = Field(default_factory=dict)


ArtifactRequest = ArtifactsSubmitted | ArtifactsWithdrawn
_REQUESTS: dict[str, type[ArtifactsSubmitted] | type[ArtifactsWithdrawn]] = {
    "ArtifactsSubmitted": ArtifactsSubmitted,
    "ArtifactsWithdrawn": ArtifactsWithdrawn,
}


def artifacts_key(tenant: str, prompt: str) -> str:
    """The Kafka key of a prompt's artifact requests (tenants hold no NUL)."""
    return f"{tenant}\x00{prompt}"


def decode_artifact_request(data: bytes | None) -> ArtifactRequest:
    """An artifacts-topic event as its own kind (its `event_type` says which)."""
    try:
        raw: Any = json.loads(data or b"")
        kind = raw.get("event_type") if isinstance(raw, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        kind = None  # let the codec say what is wrong with it
    return decode(
        data, _REQUESTS.get(kind, ArtifactsSubmitted) if isinstance(kind, str) else ArtifactsSubmitted
    )
