#!/usr/bin/env bash
# Everything the benchmarks need beyond the test environment (run by `make bench-setup`):
# Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX files under
# /usr/share/datasets/fashion-mnist), and the peer tools the evidence benchmarks compare against:
# ART (CLEVER, attacks), Foolbox (minimum-norm attacks) and matplotlib for the plots.
set -euo pipefail
venv="${1:?usage: setup.sh /abs/path/to/venv}"
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
    else
        echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2
        exit 1
    fi
fi
here="$(dirname "${BASH_SOURCE[0]}")"
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
"$venv/bin/python" -m pip install --quiet --no-deps -r "$here/requirements-nodeps.txt"
