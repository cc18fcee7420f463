# Two commands matter: `make run` (start the server on the embedded database) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint unit integration conformance demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fhir-server serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest tests -q
	$(BIN)/python conformance_tests/run_live.py --report-dir reports/conformance -q
	$(BIN)/fhir-server demo

conformance: $(STAMP)
	$(BIN)/python conformance_tests/run_live.py --report-dir reports/conformance

demo: $(STAMP)
	$(BIN)/fhir-server demo

bench: $(STAMP)
	$(BIN)/python bench/bench_rest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache reports
