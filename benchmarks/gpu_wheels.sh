#!/usr/bin/env bash
# Download the Python 3.12 wheels that fimaudit needs and the GPU machine lacks into .whl/, for
# benchmarks/gpu.sh (the machine has no network: the wheels travel with `carry: [".whl"]`).
# The machine's image already has numpy, scipy, torch, onnx, onnxruntime (CPU), typer and rich;
# missing are pydantic (+ pydantic-core, annotated-types, typing-inspection), cryptography
# (+ cffi, pycparser) and rfc8785. typing-extensions is carried too, since pydantic-core wants a
# recent one. Versions match this project's .venv. Run from anywhere: bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WHEELS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 rfc8785==0.1.4
)
# .whl/ must be ignored by git (it is carried explicitly, and must never be committed).
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -rf .whl && mkdir -p .whl
platforms=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${WHEELS[@]}"
ls -la .whl
du -sh .whl
