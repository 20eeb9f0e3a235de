#!/usr/bin/env bash
# Install the PyTorch adapter into the virtual environment given as $1 (the Makefile passes .venv).
# torch==2.13.0 resolves to the local CPU wheel; installing it first keeps pip from fetching the
# multi-GB CUDA build to satisfy the adapter's `torch>=2.4` range.
set -euo pipefail
venv="${1:?usage: install.sh /abs/path/to/venv}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
# onnxscript: torch.onnx.export needs it for the cross-check tests (ONNX from the same weights).
"$venv/bin/python" -m pip install --quiet -e "$here[onnx]"
