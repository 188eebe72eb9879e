# Entry points, each doing its own set-up:
#   make demo        - compress a real model on real data (geta compress cnn-digits) and print where the report is
#   make test        - lint (ruff) and type-check (mypy) in .venv, run the default test suite there,
#                      then the torchvision tests in .venv-vision
#   make test-vision - only the torchvision tests, in .venv-vision
# Two venvs: the torchvision wheel from PyPI cannot load beside the CPU torch 2.13.0 wheel, and
# transformers imports torchvision whenever it is installed, so .venv (torch 2.13.0, transformers)
# holds no torchvision; the torchvision tests run in .venv-vision (torch 2.14.1 + torchvision 0.29.1,
# a pair that loads together; no transformers).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
VISION_VENV := .venv-vision
VISION_STAMP := $(VISION_VENV)/.installed

FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: demo test test-main test-vision data

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# torch 2.14.1 is a CUDA build (about 5.5 GB installed); it runs the tests on the CPU as well.
$(VISION_STAMP): pyproject.toml constraints-vision.txt
	$(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/pip install --quiet -c constraints-vision.txt torch torchvision
	$(VISION_VENV)/bin/pip install --quiet -c constraints-vision.txt -e '.[test,vision]'
	touch $(VISION_STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt-get can install it (as root, e.g. CI);
# elsewhere the loader downloads it once into ~/.cache/geta/fashion-mnist.
data:
	@test -f $(FASHION_MNIST) || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

demo: $(STAMP) data
	$(VENV)/bin/geta compress cnn-digits --overwrite

test: test-main test-vision

# ruff and mypy read their settings from pyproject.toml ([tool.ruff], [tool.mypy]: mypy checks src/geta).
test-main: $(STAMP) data
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q

test-vision: $(VISION_STAMP)
	$(VISION_VENV)/bin/python -m pytest -q tests/pruning/test_torchvision_zoo.py
