"""The per-sample finite-difference step: chosen in the local regime, checked, and honest when it cannot be."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from known_models import KnownModel, make_known

import fimaudit
from fimaudit.differences import LOCALITY, PILOT_DIRECTIONS, PILOT_STEPS


@pytest.fixture(scope="session")
def curved(models_dir: Path) -> KnownModel:
    """A float32 tanh network with large weights: curved at the scale of the old default step."""
    return make_known(models_dir, "curved", hidden=(32,), shape=(3, 16, 16), classes=5, dtype=np.float32, scale=20, n=6)


def covered(report: fimaudit.AuditReport, exact: np.ndarray) -> list[bool]:
    return [lo <= t <= hi for (lo, hi), t in zip((s.lambda_max_ci for s in report.samples), exact)]


def test_step_is_local_and_recorded(curved: KnownModel) -> None:
    report = fimaudit.audit(curved.model(), curved.x, directions=512, seed=0)
    lam, _, _ = curved.exact()
    d = int(np.prod(curved.x.shape[1:]))
    live = [i for i, s in enumerate(report.samples) if "below_resolution" not in s.flags]
    converged = [i for i in live if "step_unconverged" not in report.samples[i].flags]
    assert len(converged) >= 4
    for i in live:
        s = report.samples[i]
        assert s.step is not None and s.step_norm == pytest.approx(s.step * np.sqrt(d))
        assert s.step_norm <= s.epsilon_tau / LOCALITY  # the rule the report promises
        assert "step_nonlocal" not in s.flags
    for i in converged:
        s = report.samples[i]
        assert s.step_error is not None and s.step_error <= 0.01
        assert s.step == s.step_trials[-1].step  # the smaller step of the agreeing pair is the one used
        assert abs(s.lambda_max / lam[i] - 1) < 0.2
    assert all(covered(report, lam)[i] for i in live if i not in converged)  # widened, never confidently wrong
    assert sum(covered(report, lam)) >= 5


def test_pilot_costs_under_five_percent_at_256(curved: KnownModel) -> None:
    report = fimaudit.audit(curved.model(), curved.x, directions=256, seed=0, estimator="sketch")
    sketch = 2 + 2 * 256 + 2
    for s in report.samples:
        pilot = sum(t.directions for t in s.step_trials) * 2
        assert len(s.step_trials) <= PILOT_STEPS and all(t.directions == PILOT_DIRECTIONS for t in s.step_trials)
        check = 2 * len(s.step_check)  # the step checked along the top direction, beside the witness
        assert s.queries - pilot - check in (sketch, sketch - 2)  # no witness when there is nothing to witness
        assert pilot <= 0.05 * sketch


def test_given_step_is_honoured_and_checked(curved: KnownModel) -> None:
    """A large fixed step is used as given, and the report says it is not local."""
    big = 0.05 * float(np.std(curved.x))
    report = fimaudit.audit(curved.model(), curved.x, directions=64, seed=0, step=big)
    assert report.config.step == big and report.config.step_rule.startswith("fixed")
    for s in report.samples:
        assert s.step == big
        assert len(s.step_trials) == 2 and s.step_trials[0].step == big  # checked against big / 4
        if "below_resolution" in s.flags:
            continue
        nonlocal_ = s.step_norm > s.epsilon_tau / LOCALITY
        assert ("step_nonlocal" in s.flags) == nonlocal_
    assert any("step_nonlocal" in s.flags for s in report.samples)


def test_unconverged_step_widens_the_interval(models_dir: Path) -> None:
    """Logits with deterministic pseudo-noise (like a network's float32 arithmetic, but larger):
    successive steps never agree, so the sample is flagged and its interval widened by their
    disagreement, never a confident figure."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 32))
    u = rng.standard_normal((4, 32))

    def predict(x: np.ndarray) -> np.ndarray:
        z = x @ w.T + 1e-4 * np.sin(1e9 * (x @ u.T))
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    model = fimaudit.CallableModel(predict, fimaudit.InputSpec(shape=(32,)), num_classes=4)
    x = rng.uniform(0, 1, size=(3, 32))
    report = fimaudit.audit(model, x, directions=64, seed=0, estimator="sketch")
    for s in report.samples:
        assert "step_unconverged" in s.flags
        assert s.step_error is not None and s.step_error > 0.1
        low, high = s.lambda_max_ci
        assert low <= s.lambda_max * (1 - s.step_error) ** 2 * 1.0001 or low == 0.0
        assert high >= s.lambda_max * (1 + s.step_error) ** 2 * 0.9999


def test_exact_mode_interval_includes_the_finite_difference_error(mlp32: KnownModel) -> None:
    """Coordinate mode has no sampling error; its interval is the finite-difference band, and
    through float32 outputs that band is not zero and holds the exact value."""
    report = fimaudit.audit(mlp32.model(), mlp32.x, estimator="exact")
    lam, _, _ = mlp32.exact()
    for s, exact in zip(report.samples, lam):
        low, high = s.lambda_max_ci
        assert low < s.lambda_max < high
        assert low <= exact <= high


DATA = Path(__file__).resolve().parent / "data"


def test_real_trained_network_where_the_fixed_step_fails() -> None:
    """A trained digits classifier (tests/data/make_step_model.py) that standardizes its pixels:
    near-constant border pixels make it far from linear at the old step of 1e-2 x the data's std.
    There the fixed step is off by more than 20%; the rule lands within its interval of the
    autograd value on every input."""
    import sys

    torch = pytest.importorskip("torch", reason="torch is installed by adapters/torch/install.sh")
    from fimaudit_torch import TorchModel

    sys.path.insert(0, str(DATA))
    from step_model_arch import build

    net = build()
    net.load_state_dict(torch.load(DATA / "step_model.pt", weights_only=True))
    net.eval()
    x = np.load(DATA / "step_inputs.npy")
    model = TorchModel(net, input_shape=(64,), outputs="logits")
    old = fimaudit.audit(model, x, directions=256, seed=0, step=1e-2 * float(np.std(x)), white_box=True)
    new = fimaudit.audit(model, x, directions=256, seed=0, white_box=True)
    exact = np.array([s.lambda_max_white_box for s in new.samples])
    assert exact == pytest.approx([s.lambda_max_white_box for s in old.samples])
    old_error = np.abs(np.array([s.lambda_max for s in old.samples]) / exact - 1)
    assert (old_error > 0.2).sum() >= 4
    # Given explicitly, the old step is used as given; the check now flags every input it gets wrong
    # and widens its interval to cover the truth (before this rule, 7 of 8 intervals excluded it).
    assert all("step_unconverged" in s.flags for s, e in zip(old.samples, old_error) if e > 0.2)
    assert all(covered(old, exact))
    assert all(covered(new, exact))
    new_error = np.abs(np.array([s.lambda_max for s in new.samples]) / exact - 1)
    assert new_error.max() < 0.05
    assert not any(f.startswith("step_") for s in new.samples for f in s.flags)


def test_max_pool_ties_are_flagged_nondifferentiable() -> None:
    """max(a, b) at a == b has no derivative: the one-sided quotients disagree at every step. Tied
    inputs are flagged and their interval holds the figure autograd would give (the first element's
    derivative); the same model on untied inputs is not flagged."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 16))

    def predict(x: np.ndarray) -> np.ndarray:
        z = np.maximum(x[:, 0::2], x[:, 1::2]) @ w.T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    model = fimaudit.CallableModel(predict, fimaudit.InputSpec(shape=(32,)), num_classes=5)
    half = rng.uniform(0, 1, size=(4, 16))
    tied = np.repeat(half, 2, axis=1)  # every pooled pair ties
    untied = tied + rng.uniform(0.05, 0.1, size=tied.shape) * np.tile([1.0, 0.0], 16)  # first element wins
    for x, expect in ((tied, True), (untied, False)):
        report = fimaudit.audit(model, x, directions=256, seed=0, estimator="sketch")
        for s, row in zip(report.samples, x):
            assert ("nondifferentiable" in s.flags) == expect
            if expect:
                assert s.step_kink is not None and s.step_kink > 0.05
                select = np.zeros((16, 32))
                select[np.arange(16), 2 * np.arange(16)] = 1.0  # autograd's choice at a tie: the first
                p = predict(row[None])[0]
                jac = w @ select
                first = np.linalg.eigvalsh(jac.T @ (np.diag(p) - np.outer(p, p)) @ jac)[-1]
                assert s.lambda_max_ci[0] <= first <= s.lambda_max_ci[1]


def test_pinned_top_class_does_not_block_small_steps() -> None:
    """float32 probabilities of a confident two-class model: p_top = 1 - 1e-10 rounds to 1.0 and never
    moves, while the other class carries all of F and the logit curves at a scale of 1e-3 (like the
    saturated inputs of the third-party text-direction classifier, docs/benchmarks/real_models_split.md).
    Read directly, the pinned class's rounding (eps / 2h) set a resolution level that stopped the step
    at 3.5e-3: lambda_max was 94% low with an interval excluding the truth. Read from the other class
    (the outputs sum to 1), its rounding is that class's, and the step goes down to where the logit is
    linear."""
    d = 32
    rng = np.random.default_rng(0)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    height, scale, offset = 0.03, 1e-3, 23.0

    def logit_gap(x: np.ndarray) -> np.ndarray:
        return offset + height * np.tanh((np.asarray(x, np.float64) @ u - 0.5) / scale)

    def predict(x: np.ndarray) -> np.ndarray:
        small = 1 / (1 + np.exp(logit_gap(x)))
        return np.stack([1 - small, small], axis=1).astype(np.float32)

    x = rng.uniform(0, 1, (4, d))
    x = (x + np.outer(0.5 - x @ u, u)).astype(np.float32)  # at the tanh's centre, where it curves most
    assert (predict(x)[:, 0] == 1.0).all()
    model = fimaudit.CallableModel(predict, fimaudit.InputSpec(shape=(d,), dtype="float32"), num_classes=2, output_dtype="float32")
    report = fimaudit.audit(model, x, directions=64, seed=0)
    for row, s in zip(x, report.samples):
        t = np.tanh((row.astype(np.float64) @ u - 0.5) / scale)
        small = 1 / (1 + np.exp(logit_gap(row[None])[0]))
        exact = small * (1 - small) * (height / scale * (1 - t * t)) ** 2  # F = p1 p2 grad g grad g^T
        assert s.method == "exact" and "quantized_outputs" not in s.flags
        assert abs(s.lambda_max / exact - 1) < 0.02
        assert s.lambda_max_ci[0] <= exact <= s.lambda_max_ci[1]
        assert s.step < 1e-4
