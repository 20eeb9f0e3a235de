# `make demo`: set up .venv and audit the bundled example model, ending with a signed report.
# `make test`: set up .venv and run the whole test suite (what .ci/run calls).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml adapters/onnx/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' -e adapters/onnx
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/fimaudit audit examples/digits.onnx --data examples/digits_test.npy --out demo/report.json

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) demo *.egg-info
