import re
from pathlib import Path

import pytest

from topology.analytics_app import create_analytics_app
from topology.graph import ENTRY_POINTS, LEADER_TIMERS, SINKS, STAGES, Stage, chained_stages, mermaid
from topology.settings import Settings
from topology.stage_consumer import StageConsumerService

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_diagram_is_generated_from_the_stage_graph():
    text = README.read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no mermaid block"
    assert blocks[0] == mermaid(), "README diagram is stale: paste the output of `llmops topology`"


def test_every_consumed_topic_is_fed_with_the_model_its_stage_expects():
    produced = {(s.produces, s.output_model) for s in STAGES}
    produced |= {(topic, model) for _, topic, model in ENTRY_POINTS}
    for stage in STAGES:
        assert (stage.consumes, stage.input_model) in produced, stage.name


def test_stage_names_are_unique_and_match_agent_modules():
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))
    for stage in STAGES:
        assert stage.handler.__module__ == f"agents.{stage.name}"


def test_the_query_path_is_chained_from_prompting_to_generation_and_nothing_else_is():
    assert chained_stages(STAGES) == {
        "prompting": "embedding",
        "embedding": "retrieval",
        "retrieval": "generation",
    }  # the conversation stage keeps a table; indexing's topic has no reader


def test_a_topic_read_by_two_stages_or_out_of_order_is_not_chained():
    prompting, embedding = (next(s for s in STAGES if s.name == n) for n in ("prompting", "embedding"))
    second_reader = Stage(**{**vars(embedding), "name": "shadow"})
    assert chained_stages((prompting, embedding, second_reader)) == {}
    with pytest.raises(ValueError, match="embedding must come after prompting"):
        chained_stages((embedding, prompting))


def test_every_sink_reads_a_topic_something_feeds():
    fed = {s.produces for s in STAGES} | {topic for _, topic, _ in ENTRY_POINTS} | {"telemetry"}
    fed |= {field for timer in LEADER_TIMERS for field, _ in timer.produces}
    for sink in SINKS:
        assert sink.consumes in fed, sink.name
    names = [s.name for s in STAGES] + [s.name for s in SINKS] + [t.name for t in LEADER_TIMERS]
    assert len(names) == len(set(names))


def test_the_analytics_app_runs_exactly_the_declared_sinks_and_leader_timers():
    app = create_analytics_app(Settings())  # constructors do no I/O: nothing starts
    [sinks] = [s.consumer for s in app._extra_services if isinstance(s, StageConsumerService)]
    assert sorted(stage for stage, _ in sinks._stages.values()) == sorted(s.name for s in SINKS)
    assert not app.agents
    timers = [task.__name__ for task in app._app_tasks]
    assert timers == [t.name.replace("-", "_") for t in LEADER_TIMERS]


def test_the_diagram_draws_the_analytics_side_and_its_topics():
    drawn = mermaid()
    for sink in SINKS:
        assert f"({sink.name})" in drawn
    for timer in LEADER_TIMERS:
        assert f"{{{{{timer.name}}}}}" in drawn
    assert '[["llmops.alerts"]]' in drawn and "prompt-registry-changelog" in drawn
