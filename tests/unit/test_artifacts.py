"""Prompt artifacts without I/O: content-hash ids and set versions, a prompt version's
pinning of its set, and how artifacts render into `$examples`."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agents.config import PipelineSettings
from agents.prompting import render_examples
from connectors.milvus_artifacts import artifact_filter
from connectors.ports import ArtifactHit
from schemas import decode, encode
from schemas.artifacts import (
    ArtifactContent,
    ArtifactsSubmitted,
    ArtifactsWithdrawn,
    artifact_id,
    artifact_set_version,
    decode_artifact_request,
)
from schemas.errors import PermanentError
from schemas.prompts import PromptVersion

A = ArtifactContent(
    text="What does assert do?", input="[1] assert tests a condition.", output="It tests it [1]."
)
B = ArtifactContent(text="Answer in one sentence.", tags=["style"])
TEMPLATE = "Examples:\n$examples\n\nPassages:\n$context\n\nQuestion: $question\nAnswer:"


def pushed(tenant: str, artifacts: list[ArtifactContent], prompt: str = "rag-answer") -> ArtifactsSubmitted:
    return ArtifactsSubmitted(trace_id="t", producer="p", tenant=tenant, prompt=prompt, artifacts=artifacts)


def test_a_set_is_named_by_its_distinct_content_whatever_the_order_or_tenant():
    one = pushed("acme", [A, B])
    assert one.artifact_set == pushed("acme", [B, A, B]).artifact_set == pushed("other", [A, B]).artifact_set
    assert one.artifact_set == artifact_set_version("rag-answer", [A, B])
    assert len(one.artifact_set) == 12
    # Another prompt, or one more artifact, is another set.
    assert pushed("acme", [A, B], prompt="other").artifact_set != one.artifact_set
    assert pushed("acme", [A]).artifact_set != one.artifact_set
    # A tag or a character of the pair counts as content.
    assert pushed("acme", [A.model_copy(update={"tags": ["x"]}), B]).artifact_set != one.artifact_set


def test_artifact_ids_hash_tenant_prompt_set_and_content_and_duplicates_count_once():
    first = pushed("acme", [A, B, A])
    assert first.ids() == [artifact_id("acme", "rag-answer", first.artifact_set, a) for a in (A, B)]
    assert first.ids() == pushed("acme", [A, B]).ids()  # the same file again: the same rows
    assert set(first.ids()).isdisjoint(pushed("other", [A, B]).ids())  # a tenant's rows are its own
    assert all(len(i) == 32 for i in first.ids())


def test_a_forged_set_version_is_refused_and_the_derived_one_survives_the_codec():
    event = pushed("acme", [A])
    assert decode(encode(event), ArtifactsSubmitted) == event
    forged = {**json.loads(encode(event)), "artifact_set": "0" * 12}
    with pytest.raises(Exception, match="not the hash"):
        decode(json.dumps(forged).encode(), ArtifactsSubmitted)
    withdrawn = ArtifactsWithdrawn(
        trace_id="t", producer="p", prompt="rag-answer", artifact_set=event.artifact_set
    )
    assert isinstance(decode_artifact_request(encode(withdrawn)), ArtifactsWithdrawn)
    assert isinstance(decode_artifact_request(encode(event)), ArtifactsSubmitted)


def test_an_example_needs_both_halves_of_its_pair():
    with pytest.raises(ValidationError, match="together"):
        ArtifactContent(text="t", input="only a question")


def test_a_prompt_version_pins_its_artifact_set_and_must_render_it():
    set_version = pushed("acme", [A, B]).artifact_set
    pinned = PromptVersion(name="p", system="s", template=TEMPLATE, artifacts_k=2, artifact_set=set_version)
    # Another set is another version: a label move changes prompt and examples together.
    other = pinned.model_copy(update={"artifact_set": pushed("acme", [A]).artifact_set}).model_dump()
    assert PromptVersion.model_validate({**other, "version": ""}).version != pinned.version
    with pytest.raises(ValidationError, match="needs artifact_set"):
        PromptVersion(name="p", system="s", template=TEMPLATE, artifacts_k=2)
    with pytest.raises(ValidationError, match="no \\$examples"):
        PromptVersion(
            name="p", system="s", template="$context $question", artifacts_k=2, artifact_set=set_version
        )
    with pytest.raises(ValidationError, match="artifacts_k is 0"):
        PromptVersion(name="p", system="s", template=TEMPLATE)
    with pytest.raises(ValidationError, match="artifacts_k is 0"):
        PromptVersion(name="p", system="s", template="$context $question", artifact_set=set_version)
    with pytest.raises(ValidationError, match="filled by the pipeline"):
        PromptVersion(name="p", system="s", template="$context $question", variables={"examples": {}})


def test_versions_without_artifacts_keep_their_hash():
    # The built-in prompt's version from before artifacts existed (docs/configuration.md).
    assert PipelineSettings().prompt.version == "68bab262e8be"


def test_examples_render_numbered_with_the_pair_after_the_text():
    hits = [
        ArtifactHit(
            id="a", text="What does assert do?", input="[1] assert tests.", output="It tests [1].", score=0.9
        ),
        ArtifactHit(id="b", text="Answer in one sentence.", input="", output="", score=0.5),
    ]
    assert render_examples(hits) == (
        "Example 1:\nWhat does assert do?\nInput: [1] assert tests.\nOutput: It tests [1].\n\n"
        "Example 2:\nAnswer in one sentence."
    )
    assert render_examples([]) == ""


@pytest.mark.parametrize("prompt", ['x" or tenant != "y', "a\\", 'rag" || prompt like "%'])
def test_filters_keep_an_adversarial_prompt_name_a_value(prompt):
    expr = artifact_filter("acme", prompt, "0123456789ab", ['id"1'])
    assert expr.startswith('tenant == "acme" and prompt == ')
    assert json.loads(expr.split("prompt == ", 1)[1].split(" and artifact_set")[0]) == prompt
    with pytest.raises(PermanentError):
        artifact_filter('acme" or tenant != "', prompt)


def test_the_docs_few_shot_prompt_file_is_a_valid_version():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "prompts-and-experiments.md").read_text()
    [block] = re.findall(r"```json\n(.*?)```", page, flags=re.S)
    prompt = PromptVersion.model_validate_json(block)
    assert prompt.artifacts_k == 3 and "$examples" in prompt.template
