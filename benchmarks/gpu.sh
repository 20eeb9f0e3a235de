#!/usr/bin/env bash
# The overhead benchmark on a GPU: fimaudit's audit against raw batched inference of the same
# batches, a ResNet-18 body (random weights, 10 classes) at 3x224x224 and at 3x64x64 on CUDA, queries/s and the
# audit/raw ratio (benchmarks/overhead.py), twice: with the host path (numpy forms every perturbed input)
# and with the device path (--generator counter: the torch adapter forms them on the GPU; issue 19). Prepared for a session lent a GPU machine (the device
# tool); writes everything under $OUT and finishes in under 8 minutes.
#
# Through the torch adapter, not onnxruntime: the machine's onnxruntime is the CPU build, and the
# onnxruntime-gpu wheel for Python 3.12 (1.31.1, 256 MB) cannot travel within the 64 MiB limit.
#
# Here, once:   bash benchmarks/gpu_wheels.sh        (pydantic, cryptography, rfc8785 ... into .whl/)
# On the GPU:   device run, carry [".whl"], command: bash benchmarks/gpu.sh     (timeout_s 540)
# Dry run here: bash benchmarks/gpu.sh --cpu          (tiny model on the CPU, checks the plumbing; k = 128 < d/16
#               so that sign directions, and with them the device path, are used)
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
[[ ${1:-} == --cpu ]] && MODE=cpu
OUT=${OUT:-/tmp/fimaudit_gpu_$MODE}
mkdir -p "$OUT"
if [[ $MODE == cpu && -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export PYTHONUNBUFFERED=1
LOG=$OUT/gpu.log
exec > >(tee "$LOG") 2>&1
started=$SECONDS

# fimaudit's own dependencies that the image lacks travel as wheels (benchmarks/gpu_wheels.sh).
if ! "$PY" -c "import pydantic, cryptography, rfc8785" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/: run benchmarks/gpu_wheels.sh here and carry .whl"; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
# fimaudit and its adapters from the working tree (nothing is pip-installed there).
export PYTHONPATH=$PWD:$PWD/adapters/torch:$PWD/adapters/onnx${PYTHONPATH:+:$PYTHONPATH}

{
  echo "mode: $MODE"; date -u; uname -a; nproc
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  "$PY" -c "import sys, torch, numpy, fimaudit, fimaudit_torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'fimaudit', fimaudit.__version__)"
} | tee "$OUT/env.txt"
"$PY" -c "import fimaudit, fimaudit_torch" || { echo "fimaudit does not import: see above"; exit 2; }

if [[ $MODE == gpu ]]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
  # 1. The GPU figures: ResNet-18 bodies at 224 (d = 150,528) and at 64 (d = 12,288), 10 classes, device path then host path.
  timeout 200 "$PY" benchmarks/overhead.py --backend torch --device cuda --models resnet18-64,resnet18-224 \
    --samples 8 --repeats 3 --generator counter --out "$OUT/gpu_overhead_device"
  echo "step 1 (device path) exit $? at $((SECONDS - started)) s"
  left=$((330 - (SECONDS - started))); (( left < 60 )) && left=60
  timeout $left "$PY" benchmarks/overhead.py --backend torch --device cuda --models resnet18-64,resnet18-224 \
    --samples 8 --repeats 3 --out "$OUT/gpu_overhead"
  echo "step 1b (host path) exit $? at $((SECONDS - started)) s"
  # 2. If time is left: the CPU table's realistic model with onnxruntime (CPU build) on this machine's
  #    16 otherwise idle cores, a quiet-machine reference for docs/benchmarks/overhead.md.
  if (( SECONDS - started < 300 )); then
    timeout $((420 - (SECONDS - started))) "$PY" benchmarks/overhead.py --models digits,resnet18-64 --repeats 3 --out "$OUT/cpu16_overhead"
    echo "step 2 exit $? at $((SECONDS - started)) s"
  fi
else
  timeout 300 "$PY" benchmarks/overhead.py --backend torch --device cpu --models resnet-tiny \
    --samples 4 --repeats 1 --directions 128 --generator counter --out "$OUT/gpu_overhead_device"
  timeout 300 "$PY" benchmarks/overhead.py --backend torch --device cpu --models resnet-tiny \
    --samples 4 --repeats 1 --directions 128 --out "$OUT/gpu_overhead"
  echo "dry run exit $? at $((SECONDS - started)) s"
fi
ls -la "$OUT"
