# Two entry points, each doing its own set-up in .venv:
#   make demo   - prepare a real model on real data and print its report
#   make test   - run the default test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geta demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
