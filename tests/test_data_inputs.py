"""Array files whose rows are flattened inputs: reshaped to the model's input shape when the row
length is the model's input size, refused with both shapes named when it is not. (Arrays passed
to the SDK stay strict: tests/test_errors.py::test_wrong_shape_names_the_expected_shape.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fimaudit.data import check_inputs, digest, fit_to_spec, load_input_set, load_inputs
from fimaudit.errors import DataError
from fimaudit.adapter import InputSpec

ROOT = Path(__file__).resolve().parents[1]
DIGITS = InputSpec((1, 8, 8))  # examples/digits.onnx takes (n, 1, 8, 8)


def _audit(data: Path, out: Path) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "fimaudit.cli", "audit", str(ROOT / "examples" / "digits.onnx"), "--data", str(data),
         "--directions", "16", "--out", str(out), "-q"], check=False, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


def test_cli_audits_a_csv_of_flattened_rows_like_the_shaped_array(tmp_path: Path) -> None:
    digits = np.load(ROOT / "examples" / "digits_test.npy")[:3].astype(np.float64)  # (3, 1, 8, 8), values k/16
    flat = tmp_path / "flat.csv"
    np.savetxt(flat, digits.reshape(3, -1), delimiter=",")  # the README's "one flattened input a row"
    shaped = tmp_path / "shaped.npy"
    np.save(shaped, digits)
    from_csv, from_npy = _audit(flat, tmp_path / "a.json"), _audit(shaped, tmp_path / "b.json")
    assert from_csv["data"]["shape"] == [3, 1, 8, 8]
    assert from_csv["data"]["sha256"] == from_npy["data"]["sha256"] == digest(digits)
    assert [s["lambda_max"] for s in from_csv["samples"]] == [s["lambda_max"] for s in from_npy["samples"]]


def test_npy_of_flattened_rows_is_reshaped_in_the_models_layout(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((5, 3, 4, 2)).astype(np.float32)
    path = tmp_path / "flat.npy"
    np.save(path, x.reshape(5, -1))  # (5, 24): each row is x[i] flattened in C order
    arr, stats = check_inputs(load_inputs(path, (3, 4, 2)), InputSpec((3, 4, 2)))
    assert arr.shape == (5, 3, 4, 2)
    np.testing.assert_array_equal(arr, x)
    assert stats.sha256 == digest(x)


def test_one_flattened_csv_row_is_one_input(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text(",".join(str(v) for v in range(64)) + "\n")
    arr, _ = check_inputs(load_inputs(path, DIGITS.shape), DIGITS)
    np.testing.assert_array_equal(arr, np.arange(64, dtype=np.float64).reshape(1, 1, 8, 8))


def test_rows_already_of_the_models_shape_are_left_alone() -> None:
    x = np.ones((4, 6))
    assert fit_to_spec(x, InputSpec((6,))) is x  # a tabular model: rows are the inputs as they are
    assert fit_to_spec(x, InputSpec((2, 2))) is x  # 6 values a row are no (2, 2) input: check_inputs refuses


def test_rows_of_the_wrong_length_are_refused_naming_both_shapes_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    np.savetxt(path, np.zeros((3, 65)), delimiter=",")
    with pytest.raises(DataError) as caught:
        check_inputs(load_inputs(path, DIGITS.shape), DIGITS)
    err = caught.value
    assert "(3, 65)" in err.message and "rows of 65 values" in err.message
    assert "(n, 1, 8, 8), 64 values each" in err.message
    assert "flattened to 64 values a row" in err.fix and "(n, 1, 8, 8)" in err.fix


def test_input_set_of_an_array_file_has_no_file_names(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 3)))
    inputs = load_input_set(path, skip_unreadable=True)  # no effect on an array file
    assert inputs.x.shape == (2, 3) and inputs.names is None and inputs.skipped == []
