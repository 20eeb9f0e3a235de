# `make demo`: set up .venv (core + ONNX adapter) and audit the bundled example model, ending with a signed report.
# `make test`: set up .venv with every adapter and run the whole test suite (what .ci/run calls).
# `make bench-setup` then `make bench`: the evidence benchmarks (docs/benchmarks.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE_STAMP := $(VENV)/.core-stamp
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: setup demo test lint bench bench-setup clean

$(CORE_STAMP): pyproject.toml adapters/onnx/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' -e adapters/onnx
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP) $(wildcard adapters/*/pyproject.toml adapters/*/install.sh)
	# Each adapter with heavier needs (frameworks, servers) installs them itself.
	for script in adapters/*/install.sh; do [ -f "$$script" ] || continue; bash "$$script" "$(CURDIR)/$(VENV)" || exit 1; done
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP) benchmarks/setup.sh benchmarks/requirements.txt
	bash benchmarks/setup.sh "$(CURDIR)/$(VENV)"
	touch $(BENCH_STAMP)

setup: $(STAMP)

bench-setup: $(BENCH_STAMP)

demo: $(CORE_STAMP)
	mkdir -p demo
	test -f demo/auditor.key || $(BIN)/fimaudit keygen --out demo/auditor
	$(BIN)/fimaudit audit examples/digits.onnx --data examples/digits_test.npy --sign demo/auditor.key --policy examples/policy.toml --out demo/report.dsse.json
	$(BIN)/fimaudit verify demo/report.dsse.json --key demo/auditor.pub --model examples/digits.onnx

test: setup lint
	$(BIN)/python -m pytest -q

# ruff and mypy settings live in pyproject.toml; `make test` runs this first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: bench-setup
	$(BIN)/python benchmarks/real_models.py
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/accuracy_sweep.py
	$(BIN)/python benchmarks/robustness.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/batch_size.py
	$(BIN)/python benchmarks/statistics_forms.py
	$(BIN)/python benchmarks/clever_speed.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/whitebox_agreement.py
	$(BIN)/python benchmarks/triton_overhead.py --write

clean:
	rm -rf $(VENV) .venv-triton demo *.egg-info
