# `make demo`: set up .venv and audit the bundled example model, ending with a signed report.
# `make test`: set up .venv and run the whole test suite (what .ci/run calls).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml $(wildcard adapters/*/pyproject.toml adapters/*/install.sh)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' -e adapters/onnx
	# Each adapter with heavier needs (frameworks, servers) installs them itself.
	for script in adapters/*/install.sh; do [ -f "$$script" ] || continue; bash "$$script" "$(CURDIR)/$(VENV)" || exit 1; done
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	mkdir -p demo
	test -f demo/auditor.key || $(BIN)/fimaudit keygen --out demo/auditor
	$(BIN)/fimaudit audit examples/digits.onnx --data examples/digits_test.npy --sign demo/auditor.key --policy examples/policy.toml --out demo/report.dsse.json
	$(BIN)/fimaudit verify demo/report.dsse.json --key demo/auditor.pub --model examples/digits.onnx

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/whitebox_agreement.py

clean:
	rm -rf $(VENV) .venv-triton demo *.egg-info
