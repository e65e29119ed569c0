from typing import Any

from pydantic import BaseModel, Field, SecretStr

from topology.config_reference import COMMAND, TARGET, default_text, render, section
from topology.settings import Settings


def test_the_configuration_reference_is_current():
    stale = f"{TARGET} is stale: run `{COMMAND}` (or `make docs`) and commit it"
    assert TARGET.is_file(), stale
    assert TARGET.read_text(encoding="utf-8") == render(), stale


def test_every_setting_of_the_tree_is_listed_with_its_variable():
    text = render()

    def variables(model: Any, env: str) -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += variables(annotation, f"{env}__{name.upper()}")
            else:
                found.append(f"{env}__{name.upper()}")
        return found

    names = [
        v
        for name, f in Settings.model_fields.items()
        for v in variables(f.annotation, f"LLMOPS_{name.upper()}")
    ]
    assert len(names) > 100
    missing = [name for name in names if f"| `{name}` |" not in text]
    assert not missing


def test_secrets_show_no_value_and_defaults_ignore_the_environment(monkeypatch):
    class Section(BaseModel):
        """A section."""

        password: SecretStr = SecretStr("hunter2")
        token: SecretStr | None = None
        pattern: str = Field(default="a|b", description="x | y")

    out: list[str] = []
    section(Section, "LLMOPS_TEST", "test", out)
    text = "\n".join(out)
    assert "hunter2" not in text
    assert "| `LLMOPS_TEST__PASSWORD` | secret | (secret) |" in text
    assert "| `LLMOPS_TEST__TOKEN` | secret \\| unset | unset |" in text
    # a pipe inside a cell would end it
    assert "| `a\\|b` | x \\| y |" in text
    assert default_text(Section.model_fields["password"]) == "(secret)"

    class Prompt(BaseModel):
        name: str  # required in the model, given by the parent's default
        temperature: float = 1.0

    class Parent(BaseModel):
        prompt: Prompt = Prompt(name="built-in", temperature=0.0)

    out = []
    section(Parent, "LLMOPS_P", "p", out)
    text = "\n".join(out)
    assert "| `LLMOPS_P__PROMPT__NAME` | str | `built-in` |" in text
    assert "| `LLMOPS_P__PROMPT__TEMPERATURE` | float | `0.0` |" in text

    before = render()
    monkeypatch.setenv("LLMOPS_KAFKA__PARTITIONS", "9")
    monkeypatch.setenv("LLMOPS_LLM__API_KEY", "sk-canary")
    assert render() == before


def test_every_variable_the_readme_and_docs_name_exists():
    import re

    known = set(re.findall(r"\| `(LLMOPS_[A-Z0-9_]+)` \|", render()))
    # Switches of the test suite, not settings of the system.
    test_switches = {"LLMOPS_REQUIRE_APACHE_KAFKA", "LLMOPS_REQUIRE_CHROMIUM", "LLMOPS_CONSOLE_SHOTS"}
    root = TARGET.parents[1]
    pages = [root / "README.md", *sorted(p for p in TARGET.parent.glob("*.md") if p != TARGET)]
    unknown = [
        f"{page.name}: {name}"
        for page in pages
        for name in sorted(set(re.findall(r"LLMOPS_[A-Z0-9_]*[A-Z0-9]", page.read_text(encoding="utf-8"))))
        if name not in known | test_switches and not any(k.startswith(f"{name}__") for k in known)
    ]
    assert not unknown, f"settings named in the docs that the settings tree lacks: {unknown}"
