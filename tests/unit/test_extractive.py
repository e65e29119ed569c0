import pytest

from connectors.llm import ExtractiveBackend, LLMSettings, RenderedPrompt, Source, cited


def prompt(question, *texts):
    sources = [Source(id=f"p{i}", title=f"t{i}", text=t) for i, t in enumerate(texts)]
    return RenderedPrompt(
        system="s", user="u " * 5, question=question, sources=sources, temperature=0.0, max_tokens=10
    )


async def test_answer_quotes_matching_sentences_and_cites_them():
    backend = ExtractiveBackend(LLMSettings())
    result = await backend.generate(
        prompt(
            "What does a lambda expression create?",
            "Unrelated text about loops and iteration here.",
            "A lambda expression creates an anonymous function object. Other words follow here.",
        )
    )
    assert "anonymous function object. [2]" in result.text
    assert result.citations == ["p1"]
    assert result.usage_details["output"] == len(result.text.split())


async def test_no_matching_passage_says_so_and_cites_nothing():
    result = await ExtractiveBackend(LLMSettings()).generate(
        prompt("quantum chromodynamics?", "Cooking pasta needs salted water, says the chef.")
    )
    assert result.citations == []
    assert "None of the indexed passages" in result.text


async def test_heading_underlines_are_not_quoted():
    result = await ExtractiveBackend(LLMSettings()).generate(
        prompt("lambda expressions", "Lambdas ******* Lambda expressions create functions quickly.")
    )
    assert "***" not in result.text


@pytest.mark.parametrize(("text", "ids"), [("a [2] b [1] c [2]", ["p1", "p0"]), ("[9] [0]", [])])
def test_cited_maps_markers_to_source_ids(text, ids):
    sources = [Source(id=f"p{i}", title="", text="") for i in range(3)]
    assert cited(text, sources) == ids
