#!/usr/bin/env bash
# Install the TensorFlow SavedModel adapter into the virtual environment given as $1.
# tensorflow-cpu 2.21 (Keras 3) accepts protobuf 6.31-7.x, so it keeps onnx (and a later
# protobuf<7 pin) satisfied; `pip check` below fails the install if it breaks anything else.
set -euo pipefail
venv="${1:?usage: install.sh /abs/path/to/venv}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$venv/bin/python" -m pip install --quiet "tensorflow-cpu==2.21.0"
"$venv/bin/python" -m pip install --quiet -e "$here"
"$venv/bin/python" -m pip check
