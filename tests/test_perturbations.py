"""The counter generator and Perturbations requests: perturbed inputs described by the estimator and
formed where the model runs (fimaudit.perturbations). A model that forms them itself must give the audit
a device model would; one that does not gets them formed here, with the same numbers."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run

import fimaudit
from fimaudit import CallableModel, InputSpec
from fimaudit.conformance import ConformanceError, check_model
from fimaudit.engine import QueryEngine
from fimaudit.errors import UsageError
from fimaudit.perturbations import Perturbations, Request, SignRows, counter_key, materialize, sign_words
from fimaudit.reproduction import reproduce

D, CLASSES = 4100, 4  # k <= 128 < d / 16: i.i.d. sign directions; d is not a multiple of 32
RNG = np.random.default_rng(7)
W = RNG.standard_normal((D, CLASSES)) / np.sqrt(D)
X = RNG.standard_normal((3, D))


def predict(x: np.ndarray) -> np.ndarray:
    z = np.tanh(np.asarray(x, np.float64) @ W * 3)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def exact(row: np.ndarray) -> float:
    t = np.tanh(row @ W * 3)
    jac = (3 * (1 - t * t))[:, None] * W.T
    p = predict(row[None])[0]
    fisher = jac.T @ (np.diag(p) - np.outer(p, p)) @ jac
    return float(np.linalg.eigvalsh(fisher)[-1])


def host_model() -> CallableModel:
    return CallableModel(predict, InputSpec((D,), "float64"), CLASSES, name="tanh-numpy")


class FormingModel(CallableModel):
    """Forms Perturbations itself (as a device adapter does), here from its own reading of the request:
    signs from sign_words' bits, x + scale * v row by row; records what it was sent."""

    forms_on_device = True

    def __init__(self, *, honest: bool = True) -> None:
        super().__init__(predict, InputSpec((D,), "float64"), CLASSES, name="tanh-numpy")
        self.requests: list[Perturbations] = []
        self.honest = honest

    def predict_perturbed(self, pieces: Sequence[Request]) -> np.ndarray:
        rows = []
        for piece in pieces:
            if not isinstance(piece, Perturbations):
                rows.extend(np.asarray(piece))
                continue
            if not isinstance(piece.rows, SignRows):  # the pilot's own few directions, given explicitly
                rows.extend(piece.origin + scale * v for scale, part in piece.pieces() for v in np.asarray(part, np.float64))
                continue
            self.requests.append(piece)
            for scale, block in piece.pieces():
                words = sign_words(block.key, block.start, block.stop, block.d)
                c = np.arange(block.d)
                for word_row in words.astype(np.int64):
                    v = 1.0 - 2.0 * ((word_row[c // 32] >> (c % 32)) & 1)
                    rows.append(piece.origin + scale * (v if self.honest else -v))
        return self.predict_proba(np.array(rows))


def python_fmix32(h: int) -> int:
    """murmur3's finaliser in Python integers: an independent reading of the generator's definition."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_sign_words_follow_their_definition() -> None:
    key = counter_key(3, 11)
    words = sign_words(key, 5, 9, 100)
    for j in range(5, 9):
        row_key = python_fmix32((python_fmix32(j ^ key[0]) + key[1]) & 0xFFFFFFFF)
        for w in range(4):
            expected = python_fmix32((python_fmix32(row_key ^ ((w * 0x9E3779B9) & 0xFFFFFFFF)) + key[0]) & 0xFFFFFFFF)
            assert int(words[j - 5, w]) == expected


def test_counter_signs_are_balanced_and_uncorrelated() -> None:
    signs = SignRows(counter_key(0, 0), 0, 256, 8192).signs("float64")
    n = signs.size
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert abs(signs.mean()) < 5 / np.sqrt(n)
    rows = signs @ signs.T / signs.shape[1]  # rows: the sketch's directions must be independent
    cols = signs[:, :1024].T @ signs[:, :1024] / len(signs)  # coordinates, including those sharing a word
    for gram, m in ((rows, signs.shape[1]), (cols, len(signs))):
        off = gram[~np.eye(len(gram), dtype=bool)]
        assert 0.9 < off.std() * np.sqrt(m) < 1.1 and np.abs(off).max() * np.sqrt(m) < 6.5


def test_signs_do_not_depend_on_how_rows_are_split() -> None:
    rows = SignRows(counter_key(1, 2), 0, 40, 77)
    whole = rows.signs()
    assert np.array_equal(np.concatenate([rows.part(0, 13).signs(), rows.part(13, 40).signs()]), whole)
    assert not np.array_equal(SignRows(counter_key(1, 3), 0, 40, 77).signs(), whole)
    c = np.random.default_rng(0).standard_normal(40)
    assert np.allclose(rows.combine(c, per_block=7), c @ whole.astype(np.float64), rtol=1e-6, atol=1e-5)


def test_perturbations_slice_and_form_like_explicit_inputs() -> None:
    origin = np.random.default_rng(1).standard_normal(12).astype(np.float32)
    rows = SignRows(counter_key(0, 4), 0, 5, 12)
    request = Perturbations(origin, (3, 4), (0.25, -0.25), rows, dtype="float32")
    v = rows.signs()
    explicit = np.concatenate([origin + np.float32(0.25) * v, origin - np.float32(0.25) * v]).reshape(10, 3, 4)
    assert len(request) == 10 and np.array_equal(request.materialize(), explicit)
    assert np.array_equal(materialize([request[0:3], request[3:7], request[7:]]), explicit)
    assert len(request[8:20]) == 2 and len(request[4:2]) == 0


def test_engine_sends_requests_to_a_forming_model_and_forms_them_for_others() -> None:
    def task() -> object:
        origin = X[0].copy()
        origin.flags.writeable = False
        got = yield Perturbations(origin, (D,), (0.1, -0.1), SignRows(counter_key(0, 0), 0, 6, D), dtype="float64")
        return got

    results: dict[str, dict[int, np.ndarray]] = {}
    for name, model in (("forming", FormingModel()), ("host", host_model())):
        engine = QueryEngine(model)
        out: dict[int, np.ndarray] = {}
        engine.run([(0, task()), (1, task())], out.__setitem__)  # type: ignore[arg-type]
        engine.close()
        assert engine.queries == 24
        results[name] = out
    assert np.allclose(results["forming"][0], results["host"][0], rtol=0, atol=1e-15)


def test_a_forming_model_gives_the_audit_the_host_gives() -> None:
    forming, host = FormingModel(), host_model()
    on_device = fimaudit.audit(forming, X, directions=128, generator="counter", bootstrap=200)
    formed_here = fimaudit.audit(host, X, directions=128, generator="counter", bootstrap=200)
    assert forming.requests, "the forming model was never sent a Perturbations request"
    for a, b in zip(on_device.samples, formed_here.samples, strict=True):
        assert a.directions_kind == "rademacher" and a.lambda_lower is not None
        assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-12)
        assert a.lambda_max_ci == pytest.approx(b.lambda_max_ci, rel=1e-12)
    assert on_device.config.generator == formed_here.config.generator == "counter"


def test_counter_audit_is_accurate_and_differs_from_numpy_draws() -> None:
    truth = np.array([exact(row) for row in X])
    counter = fimaudit.audit(host_model(), X, directions=128, generator="counter")
    numpy_draws = fimaudit.audit(host_model(), X, directions=128, generator="numpy")
    for report in (counter, numpy_draws):
        estimates = np.array([s.lambda_max for s in report.samples])
        assert np.all(np.abs(estimates / truth - 1) < 0.35)
        assert sum(s.lambda_max_ci[0] <= t <= s.lambda_max_ci[1] for s, t in zip(report.samples, truth, strict=True)) >= 2
    assert numpy_draws.config.generator == "numpy"
    assert [s.lambda_max for s in counter.samples] != [s.lambda_max for s in numpy_draws.samples]


def test_auto_takes_the_counter_generator_only_for_a_model_on_a_device() -> None:
    assert fimaudit.audit(host_model(), X[:1], directions=32, bootstrap=100).config.generator == "numpy"
    assert fimaudit.audit(FormingModel(), X[:1], directions=32, bootstrap=100).config.generator == "counter"
    gaussian = fimaudit.audit(FormingModel(), X[:1], directions=32, bootstrap=100, draws="gaussian")
    assert gaussian.config.generator == "numpy"


def test_a_counter_report_reproduces_without_the_device() -> None:
    report = fimaudit.audit(FormingModel(), X[:2], directions=32, bootstrap=200)
    assert report.config.generator == "counter"
    result = reproduce(report, host_model(), X[:2])
    assert result.reproduced, result.differing


@pytest.mark.parametrize(("options", "message"), [
    ({"generator": "cuda"}, "generator must be auto, numpy or counter"),
    ({"generator": "counter", "draws": "gaussian"}, "generator counter makes sign directions"),
])
def test_bad_generator_options_are_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        fimaudit.audit(host_model(), X[:1], directions=32, **options)  # type: ignore[arg-type]


def test_conformance_catches_a_model_that_forms_other_inputs() -> None:
    check_model(FormingModel())
    with pytest.raises(ConformanceError, match="predict_perturbed"):
        check_model(FormingModel(honest=False))


def test_the_cli_takes_a_generator(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[1] / "examples"
    common = ("audit", str(examples / "digits.onnx"), "--data", str(examples / "digits_test.npy"), "--limit", "1", "--quiet")
    out = tmp_path / "r.json"
    done = run(*common, "--directions", "8", "--generator", "counter", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert fimaudit.AuditReport.model_validate_json(out.read_text()).config.generator == "counter"
    bad = run(*common, "--generator", "cuda", "--out", str(tmp_path / "b.json"))
    assert bad.returncode == 2 and "generator must be auto, numpy or counter" in bad.stderr + bad.stdout


def test_ray_workers_with_gpus_take_the_counter_generator() -> None:
    from fimaudit.runner import resolve_generator

    on_cpu = FormingModel()
    on_cpu.forms_on_device = False  # a model that could form inputs on a GPU, loaded on the driver's CPU
    assert resolve_generator("auto", on_cpu, "rademacher") == "numpy"
    assert resolve_generator("auto", on_cpu, "rademacher", remote_gpus=True) == "counter"
    assert resolve_generator("auto", host_model(), "rademacher", remote_gpus=True) == "numpy"
    assert resolve_generator("numpy", FormingModel(), "rademacher") == "numpy"


def test_html_report_names_the_generator() -> None:
    from fimaudit.render import render_html

    report = fimaudit.audit(host_model(), X[:1], directions=32, generator="counter", bootstrap=100)
    assert "counter generator" in render_html(report)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("scale", [2.0**-10, 1.234567e-3])
@pytest.mark.parametrize("low", [-3.0, 0.5])
def test_inputs_from_sign_bits_equal_those_from_signs(dtype: str, scale: float, low: float) -> None:
    """numpy's sign directions are formed from their bits (x + h + bit * gap, or bit * -2h + h + x where
    the gap is inexact): the same inputs, bit for bit, as the product with +-1 floats gives, for any step
    and dtype. Inputs away from 0 (low 0.5) take the two-pass form; around 0 some gaps are inexact."""
    from fimaudit.perturbations import SignBits

    rng = np.random.default_rng(4)
    origin = rng.uniform(low, 3, 300).astype(dtype)
    bits = rng.integers(0, 2, (7, 300), dtype=np.uint8).view(bool)
    request = Perturbations(origin, (300,), (scale, -scale), SignBits(bits), dtype=dtype)
    formed = request.materialize()
    if low > 0:
        assert all(ends is not None for ends in request.signed.values()) and len(request.signed) == 2
    signs = 1.0 - 2.0 * bits.astype(dtype)
    expected = np.empty((14, 300), dtype)
    for i, s in enumerate((scale, -scale)):
        block = expected[7 * i : 7 * i + 7]
        np.multiply(signs, s, out=block, casting="unsafe")
        block += origin
    assert np.array_equal(formed, expected)
