"""Figures the report must never print because they contradict themselves (issue 14, item 7),
on in-memory models whose Fisher matrix is known in closed form."""
from __future__ import annotations

import math

import numpy as np

import fimaudit
from fimaudit.model import CallableModel, InputSpec

D = 12


def _softmax_linear(scale: float, classes: int) -> CallableModel:
    w = np.random.default_rng(3).standard_normal((D, classes)) * scale

    def fn(x: np.ndarray) -> np.ndarray:
        z = x.reshape(len(x), -1).astype(np.float64) @ w
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return CallableModel(fn, InputSpec((D,)), classes)


def test_radius_beyond_the_input_norm_is_flagged_and_not_otherwise() -> None:
    x = np.random.default_rng(0).uniform(0.1, 0.2, (4, D))
    norms = np.linalg.norm(x, axis=1)
    flat = fimaudit.audit(_softmax_linear(1e-3, 3), x, directions=16)  # lambda ~ 1e-7: eps ~ 400 >> |x| ~ 0.5
    steep = fimaudit.audit(_softmax_linear(30.0, 3), x, directions=16)
    for report in (flat, steep):
        for s, norm in zip(report.samples, norms):
            assert s.epsilon_tau is not None
            assert ("radius_exceeds_input" in s.flags) == (s.epsilon_tau > norm)
    assert all("radius_exceeds_input" in s.flags for s in flat.samples)
    assert not all("radius_exceeds_input" in s.flags for s in steep.samples)
    assert flat.summary.flags["radius_exceeds_input"] == len(x)


def test_stable_rank_is_never_below_one() -> None:
    # Two classes: F has rank one, so trace = lambda_max exactly and Hutchinson's noise puts the
    # estimated trace below the estimated lambda_max on some inputs; a constant model sits at the
    # resolution floor, where both are the floor's level.
    x = np.random.default_rng(1).uniform(0, 1, (12, D))
    constant = CallableModel(lambda b: np.tile([0.3, 0.7], (len(b), 1)), InputSpec((D,)), 2)
    for model in (_softmax_linear(2.0, 2), constant):
        report = fimaudit.audit(model, x, directions=32, estimator="sketch")
        ranks = [s.stable_rank for s in report.samples]
        assert all(r is None or r >= 1 for r in ranks), ranks
        for s in report.samples:
            if s.stable_rank is not None:
                assert math.isclose(s.stable_rank, s.trace / s.lambda_max)
            else:
                assert s.trace < s.lambda_max or s.lambda_max == 0
