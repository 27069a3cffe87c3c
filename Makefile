# The README's two commands: `make demo` and `make test`. Both make their own virtual
# environment (.venv) and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUDGET ?= 3m
# PyPI's torch for Linux is the CUDA build (about 6.4 GB installed, 3.2 GB of it NVIDIA libraries). On a
# machine without a GPU, the CPU-only wheels are much smaller:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: demo test test-slow install clean

$(BIN)/automl-vision: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install -q --index-url $(TORCH_INDEX) torch torchvision)
	$(BIN)/pip install -q -e .
	touch $@

install: $(BIN)/automl-vision

# Installs, writes scikit-learn's digits as an image folder, runs a real search on it.
demo: install
	$(BIN)/python examples/make_digits.py examples/data/digits
	$(BIN)/automl-vision search examples/data/digits --time-budget $(BUDGET) --out runs/digits-demo
	@echo "See it in the dashboard: $(BIN)/automl-vision dashboard runs/digits-demo"

# Installs the test dependencies (Python packages, and PostgreSQL and Chromium from
# Debian's packages when missing) and runs the whole default test suite.
test: install
	$(BIN)/pip install -q -e '.[test]'
	bash scripts/install-test-deps.sh
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) runs examples/data .pytest_cache
