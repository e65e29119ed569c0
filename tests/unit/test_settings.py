import pytest

from connectors.milvus import tenant_filter
from schemas.errors import PermanentError
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
