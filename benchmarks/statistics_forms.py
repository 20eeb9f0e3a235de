"""The jackknife and bootstrap of one sample in their two exact forms, on real JVPs of a 1000-class model.

An audit of EfficientNet-Lite1 (third-party ImageNet weights, benchmarks/zoo_efficientnet.py) on its
photos, default options (auto: 2 x 256 forward directions where the pilot allows), hands each sample's
sketch rows Y (k x 1000) to the statistics; this script keeps them and times, on the same Y, best of
--repeats, numpy's BLAS on one thread (as an audit holds it):
  rank form: Y's rank coordinates (an eigh of the k x k Gram matrix), then every weighted spectrum as
             us^T W us, two (reps x k x r) products a Lanczos step: fimaudit 0.6 for every model;
  Gram form: Y Y^T and its top pair (ARPACK), then W^(1/2) Y Y^T W^(1/2), one (reps x k x k) product a
             step: fimaudit 0.7's choice where the classes exceed k/2.
Each time covers what sketch_statistics spends on the eigenproblems: the form, the jackknife (20
groups) and the bootstrap (1,000 resamples requested; 200 run at this k and r, as the audit runs them).
The two forms' values are compared (largest relative difference over the jackknife and bootstrap values).

    .venv/bin/python benchmarks/statistics_forms.py      # writes docs/benchmarks/statistics_forms.md and .json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fimaudit  # noqa: E402
from fimaudit import estimators  # noqa: E402
from fimaudit.estimators import RankRows, _rank_coordinates, bootstrap_lambdas, jackknife, sketch_rows  # noqa: E402
from speed_models import machine  # noqa: E402

DOC = ROOT / "docs" / "benchmarks" / "statistics_forms"


def sketches(samples: int) -> list[np.ndarray]:
    """The sketch rows Y of each audited sample of EfficientNet-Lite1."""
    import zoo_efficientnet

    entry = zoo_efficientnet.prepare()
    model = fimaudit.load_model(str(entry.model_path), **entry.load_options)
    kept: list[np.ndarray] = []
    inner = estimators.sketch_statistics

    def keeping(y: np.ndarray, **kw: Any) -> Any:
        kept.append(y.copy())
        return inner(y, **kw)

    estimators.sketch_statistics = keeping  # type: ignore[assignment]
    try:
        fimaudit.audit(model, np.asarray(entry.inputs[:samples], dtype=np.float32), seed=0)
    finally:
        estimators.sketch_statistics = inner  # type: ignore[assignment]
    return kept


def both_forms(y: np.ndarray, repeats: int) -> dict[str, Any]:
    k = len(y)

    def rank() -> tuple[float, np.ndarray]:
        us, _, s0 = _rank_coordinates(y)
        rows = RankRows(us)
        return jackknife(rows, s0**2 / k), bootstrap_lambdas(rows, 1000, np.random.default_rng(1))

    def gram() -> tuple[float, np.ndarray]:
        rows, _, s0 = sketch_rows(y)
        return jackknife(rows, s0**2 / k), bootstrap_lambdas(rows, 1000, np.random.default_rng(1))

    out: dict[str, Any] = {"k": k, "classes": int(y.shape[1]), "form": type(sketch_rows(y)[0]).__name__}
    values = {}
    for name, fn in (("rank", rank), ("gram", gram)):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            values[name] = fn()
            best = min(best, time.perf_counter() - start)
        out[f"{name}_ms"] = best * 1e3
    (j_rank, b_rank), (j_gram, b_gram) = values["rank"], values["gram"]
    out["rel_diff"] = float(max(abs(j_gram / j_rank - 1), np.max(np.abs(b_gram / b_rank - 1))))
    out["rank"] = int(_rank_coordinates(y)[0].shape[1])
    return out


def write(prefix: Path, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), "fimaudit": fimaudit.__version__, "repeats": args.repeats, "rows": rows}
    Path(f"{prefix}.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# The jackknife and bootstrap in their two exact forms", "",
        f"Written by `benchmarks/statistics_forms.py --samples {args.samples} --repeats {args.repeats}`; the method is in its "
        f"docstring. Machine: {data['machine']}, fimaudit {fimaudit.__version__}, numpy's BLAS on one thread.", "",
        "| EfficientNet-Lite1 photo | k × classes | rank r | form chosen | rank form ms | Gram form ms | **speed-up** | max rel. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(f"| {i} | {r['k']} × {r['classes']} | {r['rank']} | {r['form']} | {r['rank_ms']:.1f} | {r['gram_ms']:.1f} | "
                     f"**{r['rank_ms'] / r['gram_ms']:.2f}×** | {r['rel_diff']:.1e} |")
    Path(f"{prefix}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {prefix}.md and .json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    ys = sketches(args.samples)
    with threadpool_limits(limits=1, user_api="blas"):
        rows = [both_forms(y, args.repeats) for y in ys]
    for r in rows:
        print(r)
    write(args.out, rows, args)


if __name__ == "__main__":
    main()
