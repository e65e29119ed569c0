"""The local LLM server's settings and the stack's choice to start it: with the `openai`
backend and no base URL the stack serves the local model and points workers at it; a
configured server (remote or not) replaces it; `extractive` needs none. The local model
has a priced row in the price table."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.telemetry import ModelPrice, priced
from connectors.llm import LLMSettings, OpenAIBackend
from connectors.local_llm import LocalLLMSettings, server_argv
from schemas.errors import PermanentError
from topology.settings import Settings
from topology.stack import LocalStack


@pytest.fixture(autouse=True)
def _no_llm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BACKEND", "BASE_URL", "MODEL"):
        monkeypatch.delenv(f"LLMOPS_LLM__{name}", raising=False)


def test_the_local_model_is_priced_at_zero_unless_configured(monkeypatch: pytest.MonkeyPatch):
    name = LocalLLMSettings().served_name()
    assert name == "SmolLM2-135M-Instruct.Q4_1"
    assert priced(Settings().telemetry.prices, name, 1_000_000, 1_000_000) == (0.0, True)

    monkeypatch.setenv("LLMOPS_LOCAL_LLM__OUTPUT_PER_MTOK", "2.0")
    assert priced(Settings().telemetry.prices, name, 1_000_000, 1_000_000) == (2.0, True)

    # A row for the same model in the telemetry price table wins.
    monkeypatch.setenv("LLMOPS_TELEMETRY__PRICES", f'{{"{name}": {{"input_per_mtok": 1.0}}}}')
    assert Settings().telemetry.prices[name] == ModelPrice(input_per_mtok=1.0)


def test_any_gguf_can_be_served_under_its_own_name(tmp_path: Path):
    gguf = tmp_path / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"
    local = LocalLLMSettings(model_path=gguf, threads=3)
    argv = server_argv(local, 8123)
    assert argv[argv.index("--model") + 1] == str(gguf)
    assert argv[argv.index("--name") + 1] == "Qwen2.5-0.5B-Instruct-Q4_K_M"
    assert argv[argv.index("--threads") + 1] == "3" and argv[argv.index("--port") + 1] == "8123"
    assert LocalLLMSettings(model_path=gguf, model_name="qwen").served_name() == "qwen"
    assert LocalLLMSettings().thread_count() >= 1  # 0: half the cores, at least one


def test_the_openai_backend_without_a_server_names_the_variable_to_set():
    assert LLMSettings().backend == "openai" and LLMSettings().base_url is None
    with pytest.raises(PermanentError, match="set LLMOPS_LLM__BASE_URL"):
        OpenAIBackend(LLMSettings())


def stack(tmp_path: Path, env: dict[str, str] | None = None, **llm: object) -> LocalStack:
    settings = Settings()
    settings = settings.model_copy(
        update={
            "llm": settings.llm.model_copy(update=llm),
            "local_llm": settings.local_llm.model_copy(update={"port": 0}),
            "stack": settings.stack.model_copy(update={"data_dir": tmp_path}),
        }
    )
    return LocalStack(settings, env=env)  # the constructor starts nothing


def test_the_stack_serves_the_local_model_when_no_server_is_configured(tmp_path: Path):
    local = stack(tmp_path)
    assert local.local_llm and local.llm_port > 0
    assert local.llm_url == f"http://127.0.0.1:{local.llm_port}/v1" == local.settings.llm.base_url
    env = local.env()
    assert env["LLMOPS_LLM__BASE_URL"] == local.llm_url
    assert env["LLMOPS_LLM__MODEL"] == "SmolLM2-135M-Instruct.Q4_1" == local.settings.llm.model


def test_a_configured_server_replaces_the_local_one(tmp_path: Path):
    remote = stack(tmp_path, base_url="http://vllm:8000/v1", model="meta-llama/Llama-3.1-8B-Instruct")
    assert not remote.local_llm and remote.llm_url == "http://vllm:8000/v1"
    assert "LLMOPS_LLM__BASE_URL" not in remote.env() and remote.settings.llm.model.startswith("meta-llama")
    # ... also when it comes in the environment the stack gives its processes.
    scripted = stack(tmp_path, env={"LLMOPS_LLM__BASE_URL": "http://127.0.0.1:9/v1"})
    assert not scripted.local_llm and scripted.env()["LLMOPS_LLM__BASE_URL"] == "http://127.0.0.1:9/v1"


def test_the_extractive_backend_needs_no_llm_server(tmp_path: Path):
    assert not stack(tmp_path, backend="extractive").local_llm
    assert not stack(tmp_path, env={"LLMOPS_LLM__BACKEND": "extractive"}).local_llm
