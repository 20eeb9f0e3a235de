"""The audit's own arithmetic per input, Gaussian against sign (Rademacher) directions (issue 16),
before/after in one run on this machine, and whether the sign law keeps the sketch's accuracy.

Parts (figures in DIR/arithmetic.json, page DIR/arithmetic.md):
  time   CPU time of estimate_sample's own arithmetic per input (time.process_time, all threads: what
         competes with a local model's inference for the cores), driven directly by a cheap float32
         stand-in model whose calls are timed and subtracted (benchmarks/scheme_auto.py's), central
         differences, at d = 12,288 (3x64x64) and d = 150,528 (3x224x224), k = 256. Arms:
         draws = gaussian (the law before this change) and rademacher (the default now); and rademacher
         with the counter generator (issue 19's device path): the estimator yields Perturbations that a
         device model forms itself, so the stand-in forms them (its time subtracted, as a GPU's would not
         be the host's) and what remains is the host's share of a GPU audit.
  parts  the pieces alone, best of 7: 256 x 12,288 normal draws against sign bits; the bootstrap's
         1000 x 256 multinomial counts by rng.multinomial (before) and by estimators.resample_counts.
  law    the sketch's error and interval coverage with exact JVPs Y = V A^T, V Gaussian or signs, the
         library's jackknife and union bootstrap (sketch_statistics), 300 draws per cell, for
         A = diag(s) W^T with the top spectra of docs/math.md's coverage table and W either spread
         (random orthonormal columns, d = 2048) or concentrated (the top singular vector on 4 of
         the d coordinates: the case where the two laws differ most).

Run: .venv/bin/python benchmarks/arithmetic.py [--parts time,parts,law] [--out DIR] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fimaudit  # noqa: E402
from fimaudit.estimators import EstimatorConfig, estimate_sample, resample_counts, sketch_statistics  # noqa: E402
from fimaudit.perturbations import Perturbations  # noqa: E402
from scheme_auto import drive, stand_in  # noqa: E402

SPECTRA = {"separated (1, 0.3, 0.1, 0.01)": [1.0, 0.3, 0.1, 0.01], "close (1, 0.9, 0.5, 0.1)": [1.0, 0.9, 0.5, 0.1],
           "tied (1, 1, 1, 0.5)": [1.0, 1.0, 1.0, 0.5]}


def time_arm(draws: str, shape: tuple[int, ...], n: int, k: int = 256, generator: str = "numpy", scheme: str = "central") -> dict[str, Any]:
    d = int(np.prod(shape))
    model = stand_in(d)

    def predict(batch: Any) -> np.ndarray:  # Perturbations are formed "on the device": model time
        return model(batch.materialize() if isinstance(batch, Perturbations) else batch)

    x = np.random.default_rng(3).uniform(0, 1, (n, *shape)).astype(np.float32)
    cfg = EstimatorConfig(directions=k, step=1e-2 * float(np.std(x)), input_dtype="float32", output_dtype="float32",
                          draws=draws, generator=generator, scheme=scheme)  # type: ignore[arg-type]
    drive(estimate_sample(x[0], 0, cfg), predict)  # warm caches and BLAS
    per = []
    for i, xi in enumerate(x):
        t0 = time.process_time()
        est, model_cpu = drive(estimate_sample(xi, i, cfg), predict)
        per.append(time.process_time() - t0 - model_cpu)
    return dict(draws=draws, generator=generator, scheme=scheme, forward=est.scheme is not None and est.scheme.scheme == "forward",
                d=d, k=k, n=n, kind=est.directions_kind, ms_median=1e3 * float(np.median(per)),
                ms_min=1e3 * float(np.min(per)))


def part_time(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for shape, n in (((3, 64, 64), 8 if quick else 24), ((3, 224, 224), 3 if quick else 6)):
        arms = (("gaussian", "numpy", "central"), ("rademacher", "numpy", "central"), ("rademacher", "counter", "central"),
                ("rademacher", "numpy", "auto"), ("rademacher", "counter", "auto"))
        for draws, generator, scheme in arms:
            rows.append(time_arm(draws, shape, n, generator=generator, scheme=scheme))
            r = rows[-1]
            print(f"time d={r['d']} {draws} {generator} {scheme} (forward {r['forward']}): {r['ms_median']:.1f} ms/input "
                  f"(min {r['ms_min']:.1f})", flush=True)
    return rows


def best_ms(fn: Any, reps: int = 7) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def part_parts(quick: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    k, d, reps = 256, 12_288, 1000
    width = -(-d // 8)
    rows = [
        dict(piece="directions 256 x 12,288: normal draws (float64)", ms=best_ms(lambda: rng.standard_normal((k, d)))),
        dict(piece="directions 256 x 12,288: sign bits, unpacked to float32 +-1",
             ms=best_ms(lambda: 1 - 2 * np.unpackbits(np.frombuffer(rng.bytes(k * width), np.uint8).reshape(k, width),
                                                      axis=1, count=d).astype(np.float32))),
        dict(piece="bootstrap counts 1000 x 256: rng.multinomial", ms=best_ms(lambda: rng.multinomial(k, np.full(k, 1 / k), size=reps))),
        dict(piece="bootstrap counts 1000 x 256: resample_counts", ms=best_ms(lambda: resample_counts(k, reps, rng))),
    ]
    for r in rows:
        print(f"{r['piece']}: {r['ms']:.2f} ms", flush=True)
    return rows


def factor(d: int, spectrum: list[float], concentrated: bool, rng: np.random.Generator) -> np.ndarray:
    """A^T (d x K): orthonormal columns W scaled by sqrt(spectrum), so A A^T has that spectrum."""
    w = np.linalg.qr(rng.standard_normal((d, len(spectrum))))[0]
    if concentrated:
        top = np.zeros(d)
        top[:4] = 0.5  # unit, on 4 coordinates: sum w_i^4 = 1/4
        w[:, 0] = top
        w[:, 1:] -= np.outer(top, top @ w[:, 1:])
        w[:, 1:] = np.linalg.qr(w[:, 1:])[0]
    return w * np.sqrt(spectrum)


def part_law(quick: bool) -> list[dict[str, Any]]:
    d, draws_per_cell = 2048, 100 if quick else 300
    cfg = EstimatorConfig(directions=256, step=1.0)
    rows = []
    for name, spectrum in SPECTRA.items():
        for concentrated in (False, True):
            at = factor(d, spectrum, concentrated, np.random.default_rng(1))
            for k in (64, 256, 1024):
                for law in ("gaussian", "rademacher"):
                    rng = np.random.default_rng([k, int(concentrated), 7])
                    errors, covered = [], []
                    for rep in range(draws_per_cell):
                        v = rng.standard_normal((k, d)) if law == "gaussian" else 2.0 * rng.integers(0, 2, size=(k, d)) - 1.0
                        stats = sketch_statistics(v @ at, exact=False, cfg=cfg, index=rep)
                        errors.append(abs(stats.lambda_max / spectrum[0] - 1))
                        covered.append(stats.ci[0] <= spectrum[0] <= stats.ci[1])
                    rows.append(dict(spectrum=name, top="concentrated" if concentrated else "spread", k=k, law=law,
                                     n=draws_per_cell, median=float(np.median(errors)), coverage=float(np.mean(covered))))
                    r = rows[-1]
                    print(f"law {name} {r['top']} k={k} {law}: median {100 * r['median']:.2f}%, coverage {100 * r['coverage']:.1f}%", flush=True)
    return rows


def render(data: dict[str, Any]) -> str:
    lines = ["# The audit's own arithmetic: sign directions and a faster bootstrap (issue 16)", "",
             f"`benchmarks/arithmetic.py`; {data['machine']}.", ""]
    if data.get("notes"):
        lines += ["## Reading", ""] + [f"- {n}" for n in data["notes"]] + [""]
    if "time" in data:
        lines += ["## Arithmetic per input (k = 256)", "",
                  "CPU time (all threads) of `estimate_sample` driven directly, minus the stand-in model's calls. "
                  "Both arms use the new bootstrap counts; `gaussian` is the direction law before this change. "
                  "Target at d = 12,288: ≤ 35 ms. Generator `counter`: the device path, where the model forms the "
                  "perturbed inputs (their forming is counted as the model's time, as on a GPU it is not the host's). "
                  "Scheme `auto`: the stand-in is smooth, so every input takes forward differences, 512 directions for "
                  "the same 512 queries.", "",
                  "| d | draws | generator | scheme | inputs | ms per input (median) | min |", "|---|---|---|---|---|---|---|"]
        for r in data["time"]:
            scheme = r.get("scheme", "central") + (" (forward)" if r.get("forward") else "")
            lines.append(f"| {r['d']:,} | {r['draws']} | {r.get('generator', 'numpy')} | {scheme} | {r['n']} | "
                         f"{r['ms_median']:.1f} | {r['ms_min']:.1f} |")
        lines.append("")
    if "parts" in data:
        lines += ["## The pieces alone (best of 7)", "", "| piece | ms |", "|---|---|"]
        lines += [f"| {r['piece']} | {r['ms']:.2f} |" for r in data["parts"]] + [""]
    if "law" in data:
        lines += ["## Does the sign law keep the sketch's accuracy?", "",
                  "Exact JVPs Y = V Aᵀ (no finite differences), d = 2,048, the library's jackknife estimate and union "
                  "bootstrap interval (95%). `spread`: A's top right singular vector is a random unit vector; "
                  "`concentrated`: it lies on 4 coordinates (Σw⁴ = 1/4, where Var (w·v)² is 1.5 for signs against 2).", "",
                  "| top spectrum | top vector | k | law | draws | median error | coverage |", "|---|---|---|---|---|---|---|"]
        for r in data["law"]:
            lines.append(f"| {r['spectrum']} | {r['top']} | {r['k']} | {r['law']} | {r['n']} | {100 * r['median']:.2f}% | "
                         f"{100 * r['coverage']:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="time,parts,law")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    path = args.out / "arithmetic.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    data["machine"] = (f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, numpy {np.__version__}, "
                       f"fimaudit {fimaudit.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    parts = {"time": part_time, "parts": part_parts, "law": part_law}
    for name in args.parts.split(","):
        data[name] = parts[name](args.quick)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        (args.out / "arithmetic.md").write_text(render(data))


if __name__ == "__main__":
    main()
