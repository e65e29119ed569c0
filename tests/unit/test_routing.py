"""The prompt registry's pure logic: content-hash versions, labels, routing and the
sticky split."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.config import PipelineSettings
from agents.routing import Registry, assign, move_label, roll_back
from schemas.errors import PermanentError
from schemas.prompts import Arm, Experiment, LabelMoved, PromptVersion, record_key

V1 = PromptVersion(name="rag", system="s", template="$context $question")
V2 = PromptVersion(name="rag", system="s", template="$context\n\nQ: $question", temperature=0.3)


def registry(*records) -> Registry:
    return Registry({record_key(r).encode(): r.model_dump_json().encode() for r in records})


def test_a_version_is_the_hash_of_its_content_with_defaults_spelled_out_or_not():
    spelled = PromptVersion(name="rag", system="s", template="$context $question", temperature=0, top_k=4)
    assert spelled.version == V1.version and len(V1.version) == 12
    assert V2.version != V1.version
    assert PromptVersion.model_validate_json(V1.model_dump_json()) == V1


def test_a_claimed_version_that_is_not_the_content_hash_is_refused():
    with pytest.raises(ValidationError, match="edits are new versions"):
        PromptVersion(name="rag", system="changed", template="$question", version=V1.version)


def test_labels_and_versions_resolve_and_unknown_references_say_what_exists():
    r = registry(V1, V2, LabelMoved(label="production", version=V1.version))
    assert r.resolve("production") == (V1, "production")
    assert r.resolve(V2.version) == (V2, "")
    assert r.resolve(V2.version[:6]) == (V2, "")
    with pytest.raises(PermanentError, match="labels: production"):
        r.resolve("canary")


def test_routing_serves_the_label_else_the_builtin_prompt():
    fallback = PipelineSettings().prompt
    assert registry(V1).route("production", "u", None, fallback).prompt == fallback
    routed = registry(V1, LabelMoved(label="production", version=V1.version)).route(
        "production", "u", None, fallback
    )
    assert (routed.prompt, routed.label, routed.experiment) == (V1, "production", "")


def test_an_experiment_splits_the_served_label_sticky_per_user_and_a_pin_bypasses_it():
    exp = Experiment(name="exp1", arms=[Arm(label="production", weight=80), Arm(label="canary", weight=20)])
    r = registry(
        V1,
        V2,
        LabelMoved(label="production", version=V1.version),
        LabelMoved(label="canary", version=V2.version),
        exp,
    )
    fallback = PipelineSettings().prompt
    routes = [r.route("production", f"user-{i}", None, fallback) for i in range(4000)]
    canary = [x for x in routes if x.arm == "canary"]
    assert all(x.prompt == V2 and x.experiment == "exp1" for x in canary)
    assert abs(len(canary) / len(routes) - 0.20) < 0.03
    # Sticky: the same user lands in the same arm every time.
    assert all(r.route("production", f"user-{i}", None, fallback).arm == routes[i].arm for i in range(200))
    assert r.route("production", "user-1", "canary", fallback).experiment == ""
    stopped = exp.model_copy(update={"status": "stopped"})
    assert (
        registry(V1, LabelMoved(label="production", version=V1.version), stopped)
        .route("production", "u", None, fallback)
        .prompt
        == V1
    )


def test_one_users_arms_in_two_experiments_are_independent():
    a = Experiment(name="a", arms=[Arm(label="x", weight=1), Arm(label="y", weight=1)])
    b = Experiment(name="b", arms=[Arm(label="x", weight=1), Arm(label="y", weight=1)])
    same = sum(assign(a, f"u{i}") == assign(b, f"u{i}") for i in range(4000))
    assert 0.45 < same / 4000 < 0.55


def test_an_experiment_needs_two_distinct_arms():
    with pytest.raises(ValidationError):
        Experiment(name="e", arms=[Arm(label="p", weight=1)])
    with pytest.raises(ValidationError, match="own label"):
        Experiment(name="e", arms=[Arm(label="p", weight=1), Arm(label="p", weight=2)])


def test_moving_a_label_remembers_and_rollback_walks_back():
    r = registry(V1, V2, LabelMoved(label="production", version=V1.version))
    moved = move_label(r, "production", V2.version, by="test")
    assert (moved.version, moved.history) == (V2.version, [V1.version])
    back = roll_back(registry(V1, V2, moved), "production", by="test", reason="bad")
    assert (back.version, back.history, back.reason) == (V1.version, [], "bad")
    with pytest.raises(PermanentError, match="no earlier version"):
        roll_back(registry(V1, V2, back), "production", by="test")


def test_the_readmes_prompt_file_is_a_valid_version():
    import re
    import tomllib
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "prompts-and-experiments.md").read_text()
    [block] = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    prompt = PromptVersion.model_validate(tomllib.loads(block))
    assert (prompt.model, prompt.seed, prompt.retrieval_mode) == ("gpt-4o-mini", 7, "hybrid")
    assert "$context" in prompt.template and "$question" in prompt.template
