# sparsec developer entry points. GNU make; needs only python3 (>= 3.10) and pip.
#
#   make venv    create .venv and install sparsec (editable) + dev/zoo/cuda/tvm/bench extras + the example plugin
#   make test    run the CPU test suite (gpu-marked tests are deselected)
#   make demo    export resnet18, compile it with the CLI, compare against eager
#   make clean   remove build outputs and caches (keeps .venv); make distclean also removes .venv

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two xdist workers: CI machines have 2 cores. Override with `make test JOBS=0`.
JOBS   ?= 2
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv test demo clean distclean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

venv: $(VENV)/.installed

# One pip command, so the whole set resolves once. torch/torchvision come from
# the machine's local wheels where pip is configured for them (find-links).
$(VENV)/.installed: pyproject.toml examples/plugin/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev,zoo,cuda,tvm,bench]' -e ./examples/plugin
	touch $@

test: venv
	$(BIN)/python -m pytest -q -n $(JOBS) -m "not gpu" $(PYTEST_ARGS)

demo: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python examples/demo.py

clean:
	rm -rf build dist out .pytest_cache .hypothesis *.egg-info examples/plugin/*.egg-info examples/plugin/build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
