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


async def test_the_sources_own_footnote_markers_are_not_quoted_nor_read_as_citations():
    """The reference numbers its footnotes ("called. [4]", "[4] A footnote"): quoted as
    they stand, cited() would count them as citations of the fourth passage."""
    result = await ExtractiveBackend(LLMSettings(max_sentences=2)).generate(
        prompt(
            "How are decorator expressions evaluated for a function definition?",
            "Decorator expressions are evaluated when the function definition runs. [4]\n\n"
            "[3] A function definition may be wrapped by decorator expressions.",
            "Unrelated text about loops.",
            "More unrelated text about classes.",
            "A fourth passage the answer never quotes.",
        )
    )
    assert result.citations == ["p0"]
    assert "[3]" not in result.text and "[4]" not in result.text
    assert result.text.count("[1]") == 2


async def test_subscripts_in_quoted_code_are_kept():
    result = await ExtractiveBackend(LLMSettings()).generate(
        prompt(
            "Which element does the subscription x[0] select?",
            "The subscription x[0] selects the first element.",
        )
    )
    assert result.text == "The subscription x[0] selects the first element. [1]"


async def test_a_sentence_two_passages_carry_is_quoted_once_from_the_better_ranked():
    """The reference repeats sections (`with` also sits in `compound`): one sentence, once."""
    shared = "The with statement wraps the execution of a block with context manager methods."
    result = await ExtractiveBackend(LLMSettings(max_sentences=2)).generate(
        prompt(
            "What does the with statement wrap with context manager methods?",
            f"Intro about statements here. {shared}",
            shared.replace(" the execution", "\nthe execution")
            + " Another sentence on the with statement and its block.",
        )
    )
    assert result.text.count("wraps the execution") == 1
    assert f"{shared} [1]" in result.text
    assert "with statement and its block. [2]" in result.text  # the freed slot goes to the next best
    assert result.citations == ["p0", "p1"]
