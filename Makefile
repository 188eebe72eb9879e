# Two entry points, each doing its own set-up in .venv:
#   make demo   - compress a real model on real data (geta compress cnn-digits) and print where the report is
#   make test   - run the default test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: demo test data

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt-get can install it (as root, e.g. CI);
# elsewhere the loader downloads it once into ~/.cache/geta/fashion-mnist.
data:
	@test -f $(FASHION_MNIST) || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

demo: $(STAMP) data
	$(VENV)/bin/geta compress cnn-digits

test: $(STAMP) data
	$(VENV)/bin/python -m pytest -q
