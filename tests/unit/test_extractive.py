import pytest

from connectors.llm import ExtractiveBackend, Generation, LLMSettings, RenderedPrompt, Source, cited


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


def answer(text, *citations):
    """The Generation prompt() gets for `text`: system "s" and user "u " * 5 are 6 words."""
    return Generation(
        text=text,
        model="extractive",
        citations=list(citations),
        usage_details={"input": 6, "output": len(text.split())},
    )


NONE = "None of the indexed passages answers this question."


@pytest.mark.parametrize(
    ("question", "texts"),
    [
        # The only shared term is inside a heading underline, which the cleaning removes.
        ("What is a heading?", ["heading======== Text about nothing in particular here."]),
        # The only shared term is a footnote marker's number.
        ("What is item 12?", ["The list has many elements in it [12]. Other words follow here."]),
        # Nothing but stop words and one-letter words to look for.
        ("What is it? A b c", ["What is it? It is what it is, a thing of the sort."]),
        ("lambda", []),
    ],
)
async def test_no_sentence_sharing_a_term_once_cleaned_says_so(question, texts):
    assert await ExtractiveBackend(LLMSettings()).generate(prompt(question, *texts)) == answer(NONE)


async def test_a_sentence_is_quoted_when_longer_than_20_characters_once_cleaned():
    """The length counts the cleaned sentence: whitespace folded, footnote markers gone."""
    result = await ExtractiveBackend(LLMSettings()).generate(
        prompt("What is lambda?", "Lambda   is a\nkeyword [3]. Lambda is a key [7] word.")
    )
    assert result == answer("Lambda is a key word. [1]", "p0")  # 21 characters; the other is 20


async def test_footnotes_and_rules_are_cleaned_out_of_quoted_sentences():
    result = await ExtractiveBackend(LLMSettings()).generate(
        prompt(
            "How are decorator expressions evaluated?",
            "Decorators\n**********\n\nDecorator expressions are evaluated [2] at definition time.\n\n"
            "[3] The decorator ---- expressions of x[0] are evaluated first.",
        )
    )
    assert result == answer(
        "Decorator expressions are evaluated at definition time. [1] "
        "The decorator expressions of x[0] are evaluated first. [1]",
        "p0",
    )


async def test_most_shared_terms_picked_then_quoted_by_passage_rank_and_position():
    texts = (
        "Only generators are named in this line. Generators yield values lazily.",
        "Generators yield values one at a time when asked. Values come from yield.",
    )
    question = "How do generators yield values?"
    # Shared terms: p0 1 and 3, p1 3 and 2.
    three = await ExtractiveBackend(LLMSettings(max_sentences=3)).generate(prompt(question, *texts))
    assert three == answer(
        "Generators yield values lazily. [1] Generators yield values one at a time when asked. [2] "
        "Values come from yield. [2]",
        "p0",
        "p1",
    )
    one = await ExtractiveBackend(LLMSettings(max_sentences=1)).generate(prompt(question, *texts))
    assert one == answer("Generators yield values lazily. [1]", "p0")  # a tie: the better-ranked passage
    four = await ExtractiveBackend(LLMSettings(max_sentences=4)).generate(prompt(question, *texts))
    assert four.text.startswith(
        "Only generators are named in this line. [1] Generators yield values lazily. [1]"
    )


async def test_a_repeated_sentence_is_compared_cleaned_and_case_blind():
    result = await ExtractiveBackend(LLMSettings(max_sentences=3)).generate(
        prompt(
            "How do generators yield values?",
            "Filler sentence without terms. Generators yield values lazily.",
            "GENERATORS yield values [5] lazily. Values come from yield.",
        )
    )
    assert result == answer("Generators yield values lazily. [1] Values come from yield. [2]", "p0", "p1")
