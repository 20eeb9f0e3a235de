#!/usr/bin/env bash
# Install the Triton adapter into the project's venv, and a Triton server into a venv of its own.
#
#   bash adapters/triton/install.sh /abs/path/to/project/.venv
#
# Client side (project venv): tritonclient[http,grpc] and `-e adapters/triton`.
# Server side: <repo>/.venv-triton (or $FIMAUDIT_TRITON_SERVER_VENV) with nvidia-pytriton 0.7.0,
# whose wheel carries a real tritonserver 2.51 and its Python backend. That venv keeps numpy<2:
# with numpy 2 the Python backend stub silently returns empty outputs. pytriton's own Python
# dependencies are not needed (--no-deps): the tests run the bundled binary directly.
# Idempotent: each half is skipped while a stamp records the same inputs.
set -euo pipefail

VENV=${1:?usage: install.sh /abs/path/to/project/.venv}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SERVER_VENV=${FIMAUDIT_TRITON_SERVER_VENV:-$ROOT/.venv-triton}
SERVER_PACKAGES=("numpy<2" "onnxruntime-gpu==1.31.1")

# What each half was installed from; a change re-runs that half.
client_key=$(cat "$HERE/pyproject.toml" "$HERE/install.sh" | sha256sum | cut -d' ' -f1)
server_key=$(echo "nvidia-pytriton==0.7.0 ${SERVER_PACKAGES[*]}" | sha256sum | cut -d' ' -f1)

client_stamp="$VENV/.fimaudit-triton-client"
if [[ "$(cat "$client_stamp" 2>/dev/null)" != "$client_key" ]]; then
    "$VENV/bin/python" -m pip install --quiet "tritonclient[http,grpc]>=2.50" -e "$HERE"
    echo "$client_key" > "$client_stamp"
fi

server_stamp="$SERVER_VENV/.fimaudit-triton-server"
if [[ "$(cat "$server_stamp" 2>/dev/null)" != "$server_key" ]]; then
    # The same interpreter as the project's: the wheel ships backend stubs for CPython 3.8-3.13.
    base=$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')
    "$base" -m venv "$SERVER_VENV"
    # pytriton last: installed before them, pip would report its unmet (unneeded) requirements.
    "$SERVER_VENV/bin/python" -m pip install --quiet "${SERVER_PACKAGES[@]}"
    "$SERVER_VENV/bin/python" -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
    echo "$server_key" > "$server_stamp"
fi
