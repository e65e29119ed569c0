import re
from pathlib import Path

from topology.graph import ENTRY_POINTS, STAGES, mermaid

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
