import pytest

from connectors.milvus import tenant_filter
from schemas.errors import PermanentError
from schemas.prompts import PromptVersion, content_hash
from topology.settings import Settings


def test_nested_environment_variables_configure_sections(monkeypatch):
    monkeypatch.setenv("LLMOPS_KAFKA__BOOTSTRAP_SERVERS", "broker-a:9093,broker-b:9093")
    monkeypatch.setenv("LLMOPS_LLM__BACKEND", "openai")
    monkeypatch.setenv("LLMOPS_LLM__API_KEY", "sk-secret-value")
    monkeypatch.setenv("LLMOPS_PIPELINE__DEFAULT_TOP_K", "0")
    with pytest.raises(ValueError):
        Settings()  # 0 passages is not a default that makes sense: an error, not a fallback
    monkeypatch.setenv("LLMOPS_PIPELINE__DEFAULT_TOP_K", "7")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "broker-a:9093,broker-b:9093"
    assert settings.llm.backend == "openai"
    assert settings.pipeline.default_top_k == 7
    assert "sk-secret-value" not in repr(settings)
    assert settings.llm.api_key is not None
    assert settings.llm.api_key.get_secret_value() == "sk-secret-value"


@pytest.mark.parametrize("tenant", ['a" || tenant != "b', "a\\", "", "x y"])
def test_tenant_filter_refuses_anything_outside_the_tenant_alphabet(tenant):
    with pytest.raises(PermanentError):
        tenant_filter(tenant)


def test_tenant_filter_is_one_equality():
    assert tenant_filter("acme-1.eu_west") == 'tenant == "acme-1.eu_west"'


def test_the_builtin_prompt_is_a_prompt_version_set_field_by_field_from_the_environment(monkeypatch):
    builtin = Settings().pipeline.prompt
    assert isinstance(builtin, PromptVersion) and builtin.name == "rag-answer"
    # Its content hash: 7363904b5687 until max_tokens 256 joined its content (the local model).
    assert (builtin.version, builtin.top_k, builtin.retrieval_mode, builtin.max_tokens) == (
        "68bab262e8be",
        4,
        "hybrid",
        256,
    )
    monkeypatch.setenv("LLMOPS_PIPELINE__PROMPT__RETRIEVAL_MODE", "dense")
    monkeypatch.setenv("LLMOPS_PIPELINE__PROMPT__SEED", "5")
    monkeypatch.setenv("LLMOPS_PIPELINE__DEFAULT_TOP_K", "7")
    prompt = Settings().pipeline.prompt
    assert (prompt.retrieval_mode, prompt.seed, prompt.top_k) == ("dense", 5, 7)
    assert (prompt.name, prompt.system) == (builtin.name, builtin.system)
    assert prompt.version == content_hash(prompt) != builtin.version


def test_the_builtin_prompt_has_one_top_k(monkeypatch):
    monkeypatch.setenv("LLMOPS_PIPELINE__PROMPT__TOP_K", "3")
    with pytest.raises(ValueError, match="LLMOPS_PIPELINE__DEFAULT_TOP_K"):
        Settings()
