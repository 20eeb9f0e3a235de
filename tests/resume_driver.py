"""Run one journaled audit to completion (or until killed); used by test_resume.py as a subprocess."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import fimaudit
from fimaudit.fileio import atomic_write

if __name__ == "__main__":
    model_path, data_path, journal, out = sys.argv[1:5]
    model = fimaudit.load_model(model_path, max_batch_size=64)
    report = fimaudit.audit(model, np.load(data_path), directions=64, seed=11, estimator="sketch", journal=journal)
    atomic_write(Path(out), report.to_json().encode())
