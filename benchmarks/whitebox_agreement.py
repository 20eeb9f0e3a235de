"""Black-box λ_max against the white-box exact value, for conv nets with a 3×32×32 input.

Two small CNNs are trained for a few seconds on a synthetic 10-class task (coloured oriented
gratings in noise), so that their predictions are confident and input-dependent, like a real
classifier's: a ReLU + max-pooling net (kinks, the usual case) and a tanh + average-pooling net
(smooth). Each is audited black-box through the PyTorch adapter in float32 (central differences,
default per-sample step, orthogonal sketch) at k = 256 and 1024 directions on held-out inputs, and compared with
TorchModel.exact_fisher (float64 Jacobian, K×K eigenproblem).

Run: .venv/bin/python benchmarks/whitebox_agreement.py [--samples 50]
Writes docs/benchmarks/whitebox_agreement.md.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fimaudit
import fimaudit_torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "whitebox_agreement.md"
SHAPE = (3, 32, 32)
CLASSES = 10
DIRECTIONS = (256, 1024)


def gratings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class c: a grating at angle c·18°, its colour mix set by c, random phase, in noise."""
    labels = rng.integers(0, CLASSES, n)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    images = np.empty((n, *SHAPE), dtype=np.float32)
    for i, c in enumerate(labels):
        angle = np.pi * c / CLASSES
        wave = np.sin(2 * np.pi * 4 * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
        colour = np.array([1.0 + np.cos(c), 1.0 + np.sin(c), 1.0]) / 2
        images[i] = colour[:, None, None] * wave + 0.8 * rng.standard_normal(SHAPE)
    return images, labels


def relu_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, CLASSES),
    )


def tanh_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, CLASSES),
    )


def train(factory: Callable[[], nn.Module], x: np.ndarray, y: np.ndarray, epochs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    net = factory()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def accuracy(model: fimaudit_torch.TorchModel, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict_proba(x).argmax(axis=1) == y))


def evaluate(name: str, model: fimaudit_torch.TorchModel, x: np.ndarray) -> list[dict]:
    start = time.perf_counter()
    white = model.exact_fisher(x)
    white_s = time.perf_counter() - start
    exact = np.array([w.lambda_max for w in white])
    rows = []
    for k in DIRECTIONS:
        start = time.perf_counter()
        report = fimaudit.audit(model, x, directions=k, seed=0)
        black_s = time.perf_counter() - start
        lam = np.array([s.lambda_max for s in report.samples])
        ci = np.array([s.lambda_max_ci for s in report.samples])
        err = np.abs(lam - exact) / exact
        rows.append({
            "model": name, "k": k, "n": len(x), "median": float(np.median(err)), "p90": float(np.quantile(err, 0.9)),
            "bias": float(np.median((lam - exact) / exact)),
            "coverage": float(np.mean((ci[:, 0] <= exact) & (exact <= ci[:, 1]))),
            "expected": 0.674 * np.sqrt(2 / k), "black_s": black_s / len(x), "white_s": white_s / len(x),
            "lambda_median": float(np.median(exact)), "bound": model.sanity_bound, "white_method": white[0].method,
        })
    return rows


def markdown(rows: list[dict], accuracies: dict[str, float], confidence: dict[str, str]) -> str:
    lines = [
        "# Black box against white box: λ_max on 3×32×32 conv nets",
        "",
        "Written by `benchmarks/whitebox_agreement.py`. Each model is a small CNN trained for a few seconds on a",
        "synthetic 10-class task (coloured oriented gratings in noise), audited on held-out inputs through the",
        "PyTorch adapter in float32 (central differences, the default per-sample step of docs/math.md, orthogonal sketch,",
        "seed 0) and compared with `TorchModel.exact_fisher` (float64 Jacobian by K = 10 vector-Jacobian",
        "products, then the K×K eigenproblem). Relative difference = |λ̂ − λ| / λ per input.",
        "",
        "| model | k | inputs | median rel. diff. | p90 | median signed | 95% CI coverage | theory 0.674·√(2/k) | black box s/input | white box s/input |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['k']} | {r['n']} | {100 * r['median']:.1f}% | {100 * r['p90']:.1f}% | {100 * r['bias']:+.1f}% | "
            f"{100 * r['coverage']:.0f}% | {100 * r['expected']:.1f}% | {r['black_s']:.3f} | {r['white_s']:.3f} |"
        )
    lines += ["", "| model | held-out accuracy | max p (min / median / max) | median exact λ_max | sanity bound ½Π‖W‖² |", "|---|---|---|---|---|"]
    for name in accuracies:
        first = next(r for r in rows if r["model"] == name)
        bound = "n/a (not ReLU)" if first["bound"] is None else f"{first['bound']:.3g}"
        lines.append(f"| {name} | {100 * accuracies[name]:.0f}% | {confidence[name]} | {first['lambda_median']:.4g} | {bound} |")
    lines += [
        "",
        "Compare the medians with the 'theory' column, the covariance-estimation floor 0.674·√(2/k) of MATH.md",
        "that any sketch of k directions has even with exact JVPs: where they are close, the finite differences",
        "(float32 outputs, ReLU kinks and max-pooling included) add little to the sketch's own error, which is",
        "set by k, not by d = 3072. The sanity bound holds but is loose by orders of magnitude: a check, not an",
        "estimate (it applies to the ReLU net only).",
        "",
        "Before issue 12 (a fixed step of 1e-2 × the data's spread, percentile interval), the same script gave",
        "median 4.5% / 3.4% (k = 256 / 1024; coverage 98% / 92%) for ReLU + max-pool and 6.4% / 2.2% (94% / 98%)",
        "for tanh + avg-pool: these nets, trained for seconds, are nearly linear at that step, so the step",
        "mattered little here (it mattered on real trained networks: docs/benchmarks/real_models.md).",
        "",
        "Timings are per input on a shared 2-core machine. The black box's are dominated by the QR that draws",
        "each input's orthogonal directions (numpy.linalg.qr of a 3072 × k Gaussian block), not by the model:",
        "k = 256 spends 513 queries per input, which this CNN answers in about 0.25 s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x_train, y_train = gratings(3000, rng)
    x_test, y_test = gratings(args.samples, rng)
    rows, accuracies, confidence = [], {}, {}
    for name, factory in (("ReLU + max-pool", relu_net), ("tanh + avg-pool", tanh_net)):
        net = train(factory, x_train, y_train)
        model = fimaudit_torch.TorchModel(net, input_shape=SHAPE)
        accuracies[name] = accuracy(model, x_test, y_test)
        top = model.predict_proba(x_test).max(axis=1)
        confidence[name] = f"{top.min():.2f} / {np.median(top):.2f} / {top.max():.2f}"
        rows += evaluate(name, model, x_test)
        print(f"{name}: accuracy {accuracies[name]:.2f}, " + ", ".join(f"k={r['k']}: median {100 * r['median']:.1f}%" for r in rows if r["model"] == name))
    OUT.write_text(markdown(rows, accuracies, confidence))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
