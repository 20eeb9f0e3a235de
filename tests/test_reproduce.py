"""`fimaudit reproduce` and fimaudit.reproduce: real re-audits of the bundled digits model, a
perturbed copy of it, forged reports, and signed reproductions checked by securesystemslib."""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from typer.testing import CliRunner

import fimaudit
from fimaudit import CallableModel, InputSpec
from fimaudit.adapter import ModelIdentity
from fimaudit.cli import app
from fimaudit.errors import DataError, ReproductionError
from fimaudit.reproduction import STEP_ERROR_FACTOR, judge
from fimaudit.signing import keyid, load_public_key

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
EXAMPLE_DATA = ROOT / "examples" / "digits_test.npy"
X = np.load(EXAMPLE_DATA)
WEIGHTS = np.load(ROOT / "examples" / "digits_weights.npz")
# Sketched directions, so every figure depends on the seed (the 64-pixel digits would take the exact mode).
QUICK = ("--directions", "32", "--estimator", "sketch", "-q")


def cli(*args: Any) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "FIMAUDIT_KEY_PASSPHRASE": None})
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout + res.stderr


@dataclass(frozen=True)
class Audits:
    folder: Path
    plain: Path  # --sample 10, unsigned
    signed: Path  # the same audit, signed by the auditor
    auditor_pub: Path
    reproducer_key: Path
    reproducer_pub: Path


@pytest.fixture(scope="module")
def audits(tmp_path_factory: pytest.TempPathFactory) -> Audits:
    d = tmp_path_factory.mktemp("reproduce")
    for name in ("auditor", "reproducer"):
        assert cli("keygen", "--out", d / name)[0] == 0
    plain, signed = d / "plain.json", d / "signed.dsse.json"
    code, text = cli("audit", EXAMPLE, "--data", EXAMPLE_DATA, "--sample", "10", "--out", plain, *QUICK)
    assert code == 0, text
    code, text = cli("audit", EXAMPLE, "--data", EXAMPLE_DATA, "--sample", "10", "--sign", d / "auditor.key", "--out", signed, *QUICK)
    assert code == 0, text
    return Audits(d, plain, signed, d / "auditor.pub", d / "reproducer.key", d / "reproducer.pub")


def reproduce_cli(report: Path, *extra: Any, model: Path = EXAMPLE, data: Path = EXAMPLE_DATA) -> tuple[int, str]:
    return cli("reproduce", report, "--model", model, "--data", data, *extra)


def test_a_plain_report_reproduces_bit_identically(audits: Audits, tmp_path: Path) -> None:
    out = tmp_path / "reproduced.json"
    code, text = reproduce_cli(audits.plain, "--samples", "4", "--out", out)
    assert code == 0, text
    assert "reproduced: bit-identical" in text and "model sha256 matches" in text and "4 of 10 samples" in text
    predicate = json.loads(out.read_text())
    record = predicate["reproduction"]
    assert predicate["assurance"] == "reproduced" and record["reproduced"] and record["identical"]
    assert record["max_deviation"] == 0.0 and record["model_check"] == "sha256" and record["population"] == 10
    assert record["original_sha256"] == hashlib.sha256(audits.plain.read_bytes()).hexdigest()
    assert record["original_signers"] == [] and record["tool"]["version"] == fimaudit.__version__
    recorded = {s["index"] for s in json.loads(audits.plain.read_text())["samples"]}
    assert len(record["samples"]) == 4 and {s["index"] for s in record["samples"]} <= recorded
    assert predicate["report"] == json.loads(audits.plain.read_text())


def test_a_signed_reproduction_verifies_with_securesystemslib(audits: Audits, tmp_path: Path) -> None:
    out = tmp_path / "r.dsse.json"
    code, text = reproduce_cli(audits.signed, "--key", audits.auditor_pub, "--sign", audits.reproducer_key, "--out", out, "--samples", "3")
    assert code == 0, text
    public = load_public_key(audits.reproducer_pub)
    envelope = Envelope.from_dict(copy.deepcopy(json.loads(out.read_text())))
    assert set(envelope.verify([SSlibKey.from_crypto(public, keyid=keyid(public))], threshold=1)) == {keyid(public)}
    statement = json.loads(envelope.payload)
    assert statement["subject"] == [{"name": "digits.onnx", "digest": {"sha256": hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()}}]
    predicate = statement["predicate"]
    original = json.loads(audits.signed.read_text())
    original_payload = base64.b64decode(original["payload"])
    record = predicate["reproduction"]
    assert predicate["assurance"] == "reproduced" and record["reproduced"] and len(record["samples"]) == 3
    assert record["original_sha256"] == hashlib.sha256(original_payload).hexdigest()
    assert record["original_signers"] == [keyid(load_public_key(audits.auditor_pub))]
    assert predicate["report"] == json.loads(original_payload)["predicate"]["report"]  # the same report, re-signed
    assert cli("verify", out, "--key", audits.reproducer_pub, "--model", EXAMPLE)[0] == 0


def test_a_signed_report_is_read_only_once_its_signature_verifies(audits: Audits) -> None:
    code, text = reproduce_cli(audits.signed)
    assert code == 2 and "pass --key" in text
    code, text = reproduce_cli(audits.signed, "--key", audits.reproducer_pub)
    assert code == 5 and "no signature by key" in text


def test_another_model_file_is_refused_before_any_sample_is_re_audited(audits: Audits, tmp_path: Path) -> None:
    from fimaudit_onnx.build import mlp_to_onnx

    rng = np.random.default_rng(0)
    weights = [WEIGHTS["W0"] * (1 + 1e-3 * rng.standard_normal(WEIGHTS["W0"].shape)).astype(np.float32), WEIGHTS["W1"]]
    perturbed = tmp_path / "digits.onnx"
    mlp_to_onnx(weights, [WEIGHTS["b0"], WEIGHTS["b1"]], activation="tanh", output="probabilities",
                input_shape=(1, 8, 8), dtype=np.float32, path=perturbed)
    code, text = reproduce_cli(audits.plain, model=perturbed)
    assert code == 5
    assert f"has sha256 {hashlib.sha256(perturbed.read_bytes()).hexdigest()}" in text and "report audited a model with sha256" in text
    assert "λ_max recorded" not in text  # no table: nothing was re-audited


def test_other_data_is_refused(audits: Audits, tmp_path: Path) -> None:
    changed = X.copy()
    changed.view(np.uint8).reshape(-1)[999] ^= 1
    np.save(tmp_path / "x.npy", changed)
    code, text = reproduce_cli(audits.plain, data=tmp_path / "x.npy")
    assert code == 3 and "the data has sha256" in text and "whole data file" in text


def test_a_forged_configuration_fails_naming_the_differing_samples(audits: Audits, tmp_path: Path) -> None:
    made = tmp_path / "limit.json"
    assert cli("audit", EXAMPLE, "--data", EXAMPLE_DATA, "--limit", "5", "--out", made, *QUICK)[0] == 0
    report = json.loads(made.read_text())
    report["config"]["seed"] = 1  # figures measured with seed 0, claimed for seed 1
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(report))
    code, text = reproduce_cli(forged, "--samples", "5")
    # A sample whose interval was widened by its step's error may match under the other seed (orthogonal
    # cosine directions at k = d/2 vary little from seed to seed); the rest differ, each named.
    found = re.search(r"not reproduced: (\d) of 5 samples differ", text)
    assert code == 5 and found is not None and int(found.group(1)) >= 3, text
    assert sum(f"sample {i}: lambda_max" in text for i in range(5)) == int(found.group(1))
    assert not (tmp_path / "reproduced.dsse.json").exists()


def test_a_summary_edited_apart_from_its_samples_is_refused(audits: Audits, tmp_path: Path) -> None:
    report = json.loads(audits.plain.read_text())
    report["summary"]["lambda_max"]["median"] *= 0.5
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(report))
    code, text = reproduce_cli(forged)
    assert code == 5 and "contradicts itself" in text


def test_a_report_from_before_selections_were_recorded_still_reproduces(tmp_path: Path) -> None:
    model = fimaudit.load_model(EXAMPLE)
    report = fimaudit.audit(model, X, limit=4, directions=32, estimator="sketch")
    legacy = report.model_copy(update={"data": report.data.model_copy(update={"selection": None, "population": None})})
    result = fimaudit.reproduce(legacy, model, X, samples=None)
    assert result.reproduced and result.record.identical and len(result.record.samples) == 4


def _mlp(w0: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def forward(batch: np.ndarray) -> np.ndarray:
        hidden = np.tanh(batch.reshape(len(batch), -1).astype(np.float64) @ w0 + WEIGHTS["b0"])
        logits = hidden @ WEIGHTS["W1"] + WEIGHTS["b1"]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return forward


def _callable(w0: np.ndarray) -> CallableModel:
    return CallableModel(_mlp(w0.astype(np.float64)), InputSpec((1, 8, 8), "float64"), 10, name="digits-numpy")


def test_the_library_detects_a_slightly_perturbed_model() -> None:
    x = X.astype(np.float64)
    report = fimaudit.audit(_callable(WEIGHTS["W0"]), x, sample=8, directions=32, estimator="sketch")
    same = fimaudit.reproduce(report, _callable(WEIGHTS["W0"]), x, samples=None)
    assert same.reproduced and same.record.identical and same.record.model_check == "none"
    noise = 1 + 0.01 * np.random.default_rng(1).standard_normal(WEIGHTS["W0"].shape)
    other = fimaudit.reproduce(report, _callable(WEIGHTS["W0"] * noise), x, samples=None)
    assert not other.reproduced and other.differing
    assert {s.index for s in other.differing} <= {s.index for s in report.samples}
    assert all(s.deviation > s.tolerance for s in other.differing)


def test_which_samples_are_re_audited_is_not_predictable_from_the_report() -> None:
    x = X.astype(np.float64)
    model = _callable(WEIGHTS["W0"])
    report = fimaudit.audit(model, x, sample=10, directions=16, estimator="sketch", bootstrap=100)
    # 3 of 10 from the OS's entropy: four equal choices would happen with probability 120**-3.
    chosen = {tuple(s.index for s in fimaudit.reproduce(report, model, x, samples=3).record.samples) for _ in range(4)}
    assert len(chosen) > 1


def test_a_tampered_selection_is_refused() -> None:
    x = X.astype(np.float64)
    model = _callable(WEIGHTS["W0"])
    report = fimaudit.audit(model, x, sample=5, directions=16, estimator="sketch", bootstrap=100)
    assert report.data.selection is not None
    moved = report.data.selection.model_copy(update={"indices_sha256": "0" * 64})
    tampered = report.model_copy(update={"data": report.data.model_copy(update={"selection": moved})})
    with pytest.raises(ReproductionError, match="selection is not what its rule draws"):
        fimaudit.reproduce(tampered, model, x)
    with pytest.raises(DataError, match="whole data file"):
        fimaudit.reproduce(report, model, x[report.data.selection.indices or []])  # the drawn rows alone: not the population


def test_the_tolerance_is_the_error_the_interval_was_widened_by() -> None:
    report = fimaudit.audit(fimaudit.load_model(EXAMPLE), X, limit=1, directions=32, estimator="sketch")
    s = report.samples[0]
    assert s.step_error is not None and not s.step_kink
    # The JVPs' relative error e (the step's, plus the output rounding's); lambda_max is quadratic in them.
    e = s.step_error + math.sqrt(s.lambda_max_resolution / s.lambda_max)
    tolerance = STEP_ERROR_FACTOR * e
    inside = s.model_copy(update={"lambda_max": s.lambda_max * (1 + 0.9 * tolerance)})
    outside = s.model_copy(update={"lambda_max": s.lambda_max * (1 - 1.1 * tolerance)})
    assert judge(s, inside).matches and not judge(s, inside).identical
    assert not judge(s, outside).matches and judge(s, outside).tolerance == pytest.approx(tolerance)
    assert judge(s, s).identical and judge(s, s).deviation == 0.0
    # The interval holds the same e, (1 ± e)^2 around the estimate: a re-computation inside it, on both sides, may differ by 4e.
    low, high = s.lambda_max_ci
    assert high >= s.lambda_max * (1 + e) ** 2 * (1 - 1e-12)
    # A nondeterministic model's figures move with its noise: overlapping intervals are agreement.
    noisy = s.model_copy(update={"flags": ["nondeterministic"]})
    assert judge(noisy, noisy.model_copy(update={"lambda_max": high, "lambda_max_ci": (high, 2 * high)})).matches
    assert not judge(noisy, noisy.model_copy(update={"lambda_max": 3 * high, "lambda_max_ci": (2 * high, 4 * high)})).matches


class _Endpoint(CallableModel):
    """A model that reports itself as a fingerprinted endpoint, as the Triton adapter does."""

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(reference="fake://digits", adapter="fake", extra={"fingerprint": "recorded"})


@dataclass(frozen=True)
class _Outcome:
    matches: bool
    max_abs_difference: float = 0.0
    reason: str = "outputs differ by up to 0.3 on the probes"


def test_an_endpoint_is_identified_by_its_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    x = X.astype(np.float64)
    model = _Endpoint(_mlp(WEIGHTS["W0"].astype(np.float64)), InputSpec((1, 8, 8), "float64"), 10)
    report = fimaudit.audit(model, x, limit=3, directions=16, estimator="sketch", bootstrap=100)
    asked: list[tuple[str, str]] = []

    class Checker:
        name = "fake"
        answer = True

        def check_fingerprint(self, reference: str, recorded: str, tol: float = 1e-5, **options: Any) -> _Outcome:
            asked.append((reference, recorded))
            return _Outcome(self.answer)

    checker = Checker()
    monkeypatch.setattr("fimaudit.reproduction.adapter_for", lambda ref: checker)
    result = fimaudit.reproduce(report, model, x)
    assert result.reproduced and result.record.model_check == "fingerprint" and asked == [("fake://digits", "recorded")]
    checker.answer = False
    with pytest.raises(ReproductionError, match="does not serve the audited model: outputs differ"):
        fimaudit.reproduce(report, model, x)
