# SpineSSL developer and user entry points.  Every target creates/uses the local venv (.venv).
#
#   make demo   synthetic cohort -> index -> extract -> pretrain -> pair evaluation
#   make test   the test suite (pytest)
#   make bench  all benchmarks -> table + docs/performance.md (<= 25 min on 2 cores; bench-quick ~5 min)
#
# TORCH chooses the torch build.  The default `torch==2.13.0` is the official wheel: on Linux
# x86_64 PyPI serves it with CUDA support; machines with a local CPU wheel of that version use it.
# Examples: make demo TORCH="torch==2.13.0"   (CUDA on a Linux GPU machine)
#           make demo TORCH="torch==2.13.0 --index-url <PyTorch CPU-only index>"  (small CPU install)

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.spinessl-installed
DEMO   ?= demo-output

.PHONY: venv demo test bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 Testing

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) $(DEMO)
