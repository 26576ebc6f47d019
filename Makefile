# Two commands do all the set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED ?= ../shared

.PHONY: venv test test-fast lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 + torchvision 0.29.1 are the pair that installs here (and from PyPI) and that timm accepts
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check swinv2_serve tests benchmarks export
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check swinv2_serve tests benchmarks export
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile

demo: $(STAMP)
	$(PY) -m swinv2_serve demo --output runs/demo --images $(SHARED)/images $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),)

clean:
	rm -rf runs build *.egg-info .pytest_cache
