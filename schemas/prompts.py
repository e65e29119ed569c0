"""The prompt registry's records: immutable prompt versions (named by a hash of their
content), labels that point at versions, and experiments that split traffic between
labels. They live in one compacted topic, keyed by `record_key`, so the latest record
per key is the registry's state."""

from __future__ import annotations

import hashlib
import json
import re
from string import Template
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator
from pydantic.fields import FieldInfo

from schemas.artifacts import SET_CHARS
from schemas.conversations import RESERVED_VARIABLES, VariableName
from schemas.envelope import Frozen, Identifier, utc_now
from schemas.queries import HydeMode, RetrievalMode

# Labels and experiment names become Kafka keys and ClickHouse values: keep them plain.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
# Gao et al. 2022 (HyDE), the instruction of their web-search task; `$question` is filled in.
DEFAULT_HYDE_INSTRUCTION = "Please write a passage to answer the question.\nQuestion: $question\nPassage:"
# The condense node's instruction; `$history` (the earlier turns) and `$question` are filled in.
DEFAULT_CONDENSE_INSTRUCTION = (
    "Rewrite the follow-up question as one standalone question that can be understood "
    "without the conversation. Reply with the question only.\n\nConversation:\n$history\n\n"
    "Follow-up question: $question\nStandalone question:"
)
# The summarize node's instruction; `$summary` (so far) and `$turns` (to add) are filled in.
DEFAULT_SUMMARIZE_INSTRUCTION = (
    "Update the summary of a conversation with the turns below. Keep the topics, names and "
    "facts a later question may refer to; at most five sentences.\n\nSummary so far:\n$summary\n\n"
    "Turns to add:\n$turns\n\nUpdated summary:"
)
VERSION_CHARS = 12


class VariableSpec(Frozen):
    """A user variable a template declares: whether a query must give it and how long its
    value may be. A missing or over-long value fails the query at prompting."""

    required: bool = Field(default=True, description="False: an absent value renders as empty.")
    max_chars: int = Field(default=200, ge=1, le=1_000)


class PromptVersion(Frozen):
    """One prompt version: the template and every setting that shapes its answer. The
    `version` is derived from the rest, so equal content is the same version everywhere."""

    kind: Literal["prompt"] = Field(default="prompt", description="The registry record's kind.")
    name: Identifier = Field(description="What the prompt is for, e.g. rag-answer.")
    description: str = ""
    system: str
    template: str = Field(description="string.Template with $question and $context.")
    model: str | None = Field(default=None, description="None: the worker's LLMOPS_LLM__MODEL.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, description="Sent to the LLM for repeatable sampling.")
    max_tokens: int = Field(default=512, ge=1)
    top_k: int = Field(default=4, ge=1, le=100, description="Passages retrieved per question.")
    retrieval_mode: RetrievalMode = "hybrid"
    hyde: HydeMode = "off"
    hyde_instruction: str = DEFAULT_HYDE_INSTRUCTION
    hyde_max_tokens: int = Field(default=256, ge=1)
    # The condense node (conversation turns with memory): an LM call of its own settings;
    # with the extractive backend the previous question is prepended instead.
    condense: bool = Field(default=True, description="Rewrite a follow-up into a standalone question.")
    condense_instruction: str = DEFAULT_CONDENSE_INSTRUCTION
    condense_model: str | None = Field(default=None, description="None: the prompt's model.")
    condense_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    condense_seed: int | None = None
    condense_max_tokens: int = Field(default=96, ge=1)
    # The summarize node: folds the turns that leave a conversation's memory into its
    # rolling summary (an LM call; with the extractive backend they are dropped).
    summarize: bool = Field(default=True, description="Keep a rolling summary of older turns.")
    summarize_instruction: str = DEFAULT_SUMMARIZE_INSTRUCTION
    summarize_model: str | None = Field(default=None, description="None: the prompt's model.")
    summarize_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    summarize_seed: int | None = None
    summarize_max_tokens: int = Field(default=160, ge=1)
    variables: dict[VariableName, VariableSpec] = Field(
        default_factory=dict, description="The user variables the template renders, with their limits."
    )
    # Prompt artifacts (schemas/artifacts.py): the `artifacts_k` of the pinned set most
    # similar to the question are rendered into the template's $examples.
    artifacts_k: int = Field(default=0, ge=0, le=20, description="Artifacts put into $examples; 0: off.")
    artifact_set: str = Field(
        default="", description="The version of the artifact set it uses (`llmops artifacts push` prints it)."
    )
    version: str = Field(default="", description="Derived: the hash of the rest; any other value is refused.")

    @model_validator(mode="after")
    def _version_is_the_content_hash(self) -> PromptVersion:
        # Hashed after validation: 0 and 0.0, or a default spelled out, are one version.
        digest = content_hash(self)
        if self.version and self.version != digest:
            raise ValueError(
                f"version {self.version!r} is not the hash of this content ({digest}): edits are new versions"
            )
        object.__setattr__(self, "version", digest)  # frozen: set once, here, before anyone sees it
        return self

    @model_validator(mode="after")
    def _artifacts_are_pinned(self) -> PromptVersion:
        uses = "examples" in Template(self.template).get_identifiers()
        if self.artifacts_k and not re.fullmatch(rf"[0-9a-f]{{{SET_CHARS}}}", self.artifact_set):
            raise ValueError(
                "artifacts_k needs artifact_set: the version of the set this prompt is evaluated with "
                "(`llmops artifacts push` prints it)"
            )
        if self.artifact_set and not self.artifacts_k:
            raise ValueError("artifact_set is set but artifacts_k is 0: say how many artifacts to use")
        if self.artifacts_k and not uses:
            raise ValueError("artifacts_k is set but the template has no $examples to render them into")
        if uses and not self.artifacts_k:
            raise ValueError("the template uses $examples but artifacts_k is 0: no artifacts would fill it")
        return self

    @model_validator(mode="after")
    def _no_reserved_variables(self) -> PromptVersion:
        reserved = sorted(set(self.variables) & RESERVED_VARIABLES)
        if reserved:
            raise ValueError(f"variables {reserved} are filled by the pipeline; declare other names")
        return self


# Fields added after versions were first published: hashed only when they differ from
# their defaults, so every version published before them keeps its hash.
_HASHED_WHEN_SET = frozenset(
    {
        "condense",
        "condense_instruction",
        "condense_model",
        "condense_temperature",
        "condense_seed",
        "condense_max_tokens",
        "summarize",
        "summarize_instruction",
        "summarize_model",
        "summarize_temperature",
        "summarize_seed",
        "summarize_max_tokens",
        "variables",
        "artifacts_k",
        "artifact_set",
    }
)


def _default(info: FieldInfo) -> object:
    return info.get_default(call_default_factory=True)


def content_hash(prompt: PromptVersion) -> str:
    """SHA-256 of the canonical JSON of every field but the version (defaults included,
    so a file that spells a default out and one that leaves it are the same version)."""
    fields: dict[str, object] = {
        name: getattr(prompt, name)
        for name, info in PromptVersion.model_fields.items()
        if name != "version" and not (name in _HASHED_WHEN_SET and getattr(prompt, name) == _default(info))
    }
    if "variables" in fields:
        fields["variables"] = {name: spec.model_dump() for name, spec in prompt.variables.items()}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:VERSION_CHARS]


class LabelMoved(Frozen):
    """Where a label points now, and where it pointed before (newest last), so a
    rollback needs no other record even after compaction."""

    kind: Literal["label"] = "label"
    label: Name
    version: str
    history: list[str] = Field(default_factory=list)
    moved_at: AwareDatetime = Field(default_factory=utc_now)
    moved_by: str = "cli"
    reason: str = ""


class Arm(Frozen):
    label: Name
    weight: float = Field(gt=0)


class Experiment(Frozen):
    """A traffic split between labels; the first arm is the control. Requests that would
    be served the control label are split, sticky per user. The monitor rolls the
    challenger back when it is worse than the control by more than `margin` in mean user
    feedback, with `min_samples` ratings per arm, by a one-sided Welch test at `alpha`."""

    kind: Literal["experiment"] = "experiment"
    name: Name
    arms: list[Arm] = Field(min_length=2)
    status: Literal["running", "stopped", "rolled_back"] = "running"
    margin: float = Field(default=0.05, ge=0, description="Worse by more than this (score units) fails.")
    min_samples: int = Field(default=100, ge=2, description="Ratings per arm before any verdict.")
    alpha: float = Field(default=0.05, gt=0, lt=1)
    auto_rollback: bool = True
    started_at: AwareDatetime = Field(default_factory=utc_now)
    ended_at: AwareDatetime | None = None
    reason: str = ""

    @model_validator(mode="after")
    def _arms_differ(self) -> Experiment:
        labels = [a.label for a in self.arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"each arm needs its own label, got {labels}")
        return self

    @property
    def control(self) -> str:
        return self.arms[0].label


RegistryRecord = Annotated[PromptVersion | LabelMoved | Experiment, Field(discriminator="kind")]


def record_key(record: PromptVersion | LabelMoved | Experiment) -> str:
    match record:
        case PromptVersion():
            return f"prompt/{record.version}"
        case LabelMoved():
            return f"label/{record.label}"
        case Experiment():
            return f"experiment/{record.name}"
    raise TypeError(type(record))
