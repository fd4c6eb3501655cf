# SpineSSL developer and user entry points.  Every target creates/uses the local venv (.venv).
#
#   make demo   synthetic cohort -> index -> extract -> pretrain -> pair evaluation
#   make test   the test suite (pytest)
#   make bench  all benchmarks -> table + docs/performance.md (<= 25 min on 2 cores; bench-quick ~5 min)
#   make test-slicer-pins  the core tests in a second venv (.venv-slicer510) with the Python packages
#               that 3D Slicer 5.10 bundles (pydicom 2.4.4, numpy 2.0); the main venv has pydicom 3
#   make coverage-slicer   line coverage of the Slicer module (SpineSSL.py, SpineSSLModuleLib/) by the stand-in harness
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

.PHONY: venv demo test bench bench-quick clean test-slicer-pins coverage-slicer

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

# The library on the packages Slicer 5.10 bundles (see ../shared/slicer-python/5.10/External_python-*.cmake).
SLICER_VENV ?= .venv-slicer510
SLICER_BIN   = $(SLICER_VENV)/bin
SLICER_STAMP = $(SLICER_VENV)/.spinessl-installed
SLICER_PINS ?= "numpy==2.0.*" "pydicom==2.4.4"
SLICER_PIN_TESTS = Testing/test_io.py Testing/test_index.py Testing/test_extract.py Testing/test_levels.py \
	Testing/test_synth.py Testing/test_synth_dicom.py Testing/test_synth_config.py Testing/test_grading.py \
	Testing/test_privacy.py Testing/test_bad_inputs.py Testing/test_scene.py Testing/test_scene_workflow.py \
	Testing/test_slicer_harness.py

$(SLICER_STAMP): pyproject.toml
	test -x $(SLICER_BIN)/python || $(PYTHON) -m venv $(SLICER_VENV)
	$(SLICER_BIN)/python -m pip install -q --upgrade pip
	$(SLICER_BIN)/python -m pip install -q $(TORCH)
	$(SLICER_BIN)/python -m pip install -q $(SLICER_PINS) -e ".[test]"
	touch $(SLICER_STAMP)

test-slicer-pins: $(SLICER_STAMP)
	$(SLICER_BIN)/python -c "import numpy, pydicom; print('numpy', numpy.__version__, 'pydicom', pydicom.__version__); \
		assert numpy.__version__.startswith('2.0.') and pydicom.__version__ == '2.4.4'"
	$(SLICER_BIN)/python -m pytest -n 2 $(SLICER_PIN_TESTS)

coverage-slicer: $(STAMP)
	$(BIN)/python -m coverage run --include="SpineSSL/SpineSSL.py,SpineSSL/SpineSSLModuleLib/*.py" -m pytest -q -p no:xdist Testing/test_slicer_harness.py
	$(BIN)/python -m coverage report -m

clean:
	rm -rf $(VENV) $(SLICER_VENV) $(DEMO)
