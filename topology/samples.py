"""The sample corpus: the Python language reference topics that ship with every CPython
as `pydoc_data.topics` (Python Software Foundation License). Real text, known licence,
nothing to download."""

from __future__ import annotations

from typing import Any

SOURCE = "pydoc_data.topics (CPython, PSF License)"

QUESTIONS = (
    "How does the with statement work?",
    "What does the yield expression do inside a function?",
    "How do I raise an exception and handle it with try and except?",
    "What is a lambda expression?",
    "How does Python look up attributes on a class instance?",
)


def python_reference() -> list[dict[str, Any]]:
    from pydoc_data.topics import topics

    return [
        {"doc_id": f"pydoc-{name}", "title": name, "text": text, "source": SOURCE}
        for name, text in sorted(topics.items())
    ]
