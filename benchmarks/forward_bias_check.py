"""Does auto's pilot bound the bias of centred forward differences? (issue 16; docs/math.md, "The rule")

For every sample a default audit (--scheme auto, k = 256, seed 0) sends to forward differences, the
centred forward lambda_max and the central one are computed over the same 1024 sign directions at that
sample's step, from the model's probabilities: their ratio less 1 is the bias centring leaves (up to
the shared directions' noise, about 2 sqrt(bound / 1024)). It is printed beside the pilot's bound
(scheme_evidence.forward_bias) and the limit auto holds it to.

Run: .venv/bin/python benchmarks/forward_bias_check.py [zoo_rapidocr|zoo_keras|...]   (a benchmarks/zoo_* module)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fimaudit  # noqa: E402
from fimaudit.differences import log_probabilities  # noqa: E402

DIRECTIONS = 1024


def lam(y: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(y.T @ y / len(y))[-1])


def one_sided(model: fimaudit.ProbabilityModel, x: np.ndarray, h: float, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sqrt(p)-weighted h D+ / h and h D- / h for each row of `signs`, at x."""
    flat = x.astype(np.float64).ravel()
    p0 = model.predict_proba(x[None])[0].astype(np.float64)
    probs = []
    for sign in (1.0, -1.0):
        for j in range(0, len(signs), 64):
            batch = (flat + sign * h * signs[j : j + 64]).reshape((-1, *x.shape)).astype(x.dtype)
            probs.append(model.predict_proba(batch))
    p = np.concatenate(probs).astype(np.float64)
    top = int(np.argmax(p0))
    logs, base, root = log_probabilities(p, top), log_probabilities(p0, top), np.sqrt(p0)
    n = len(signs)
    return (logs[:n] - base) / h * root, (base - logs[n:]) / h * root


def main(module: str) -> None:
    entry = __import__(module).prepare()
    model = fimaudit.load_model(str(entry.model_path), **entry.load_options)
    x = entry.inputs
    report = fimaudit.audit(model, x, directions=256, seed=0, estimator="sketch")
    rng = np.random.default_rng(11)
    rows = []
    for i, s in enumerate(report.samples):
        if s.scheme != "forward" or s.scheme_evidence is None:
            continue
        signs = rng.choice([-1.0, 1.0], size=(DIRECTIONS, x[i].size))
        up, down = one_sided(model, x[i], s.step, signs)
        centred = (up - up.mean(axis=0)) * np.sqrt(DIRECTIONS / (DIRECTIONS - 1))
        rows.append(dict(index=i, bias=lam(centred) / lam((up + down) / 2) - 1, bound=s.scheme_evidence.forward_bias,
                         limit=s.scheme_evidence.limit))
        print(f"{i:4d}  bias {rows[-1]['bias']:+.4f}  bound {rows[-1]['bound']:.4f}", flush=True)
    bias = np.array([r["bias"] for r in rows])
    bound = np.array([r["bound"] for r in rows])
    limit = rows[0]["limit"] if rows else float("nan")
    print(f"{module}: {len(rows)} forward samples of {len(report.samples)}; bias median {np.median(bias):+.4f}, "
          f"p90 {np.quantile(bias, 0.9):+.4f}, max {bias.max():+.4f}; over the limit {limit:.4f}: {int(np.sum(bias > limit))}; "
          f"over the pilot's bound: {int(np.sum(bias > bound))}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "zoo_rapidocr")
