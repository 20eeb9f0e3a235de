"""--scheme auto against central differences (issue 16), before/after in one run on this machine.

Parts (each writes its figures into DIR/scheme_auto.json; the page DIR/scheme_auto.md is rebuilt):
  queries     queries per input for a 5% median error of lambda_max, central ('before': today's
              default until this issue) against auto ('after'), on the accuracy-sweep model digits32
              (d = 3,072; exact lambda from its weights) and on real Fashion-MNIST CNNs from
              benchmarks/zoo_fashion.py (exact lambda from torch autograd): median error and coverage
              at several budgets, then queries for 5% from a fit error = c / sqrt(queries).
  arithmetic  CPU time of the estimator's own arithmetic per input at d = 12,288 (3x64x64), k = 256:
              estimate_sample driven directly by a cheap float32 stand-in model whose calls are timed
              and subtracted (time.process_time: all threads' CPU, what competes with the model's
              inference for the cores). Arms: central / auto, Gaussian draws in float64 / float32.
  float32     whether float32 Gaussian draws by themselves lose interval coverage: exact JVPs Y = V A^T
              of the accuracy sweep's digits224 (d = 50,176) with V drawn in float64 and float32, same
              bootstrap, many repetitions.

Run: .venv/bin/python benchmarks/scheme_auto.py [--parts queries,arithmetic,float32] [--out DIR] [--quick]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fimaudit  # noqa: E402
from fimaudit import estimators  # noqa: E402
from fimaudit.estimators import EstimatorConfig, SampleEstimate, estimate_sample, sketch_statistics  # noqa: E402
from fimaudit.perturbations import Perturbations, SignRows  # noqa: E402

Predict = Callable[[np.ndarray], np.ndarray]
TARGET_ERROR = 0.05


# ---------------------------------------------------------------- float32 draws (bench-only switch)
def gaussian_blocks_f32(rng: np.random.Generator, d: int, k: int, per_block: int) -> Iterator[np.ndarray]:
    """The float32-draw variant of estimators._gaussian_blocks (the reverted trial's law)."""
    for start in range(0, k, per_block):
        yield rng.standard_normal((min(per_block, k - start), d), dtype=np.float32)


class DrawDtype:
    """Context manager swapping the library's Gaussian direction blocks for float32 ones."""

    def __init__(self, dtype: str) -> None:
        self.dtype, self.saved = dtype, estimators._gaussian_blocks

    def __enter__(self) -> None:
        if self.dtype == "float32":
            estimators._gaussian_blocks = gaussian_blocks_f32  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        estimators._gaussian_blocks = self.saved  # type: ignore[assignment]


# ---------------------------------------------------------------- part: queries for 5%
def fashion_entries(names: list[str]) -> list[Any]:
    import zoo_fashion

    makers = {zoo_fashion.GELU_NAME: zoo_fashion.prepare_gelu, zoo_fashion.RELU_NAME: zoo_fashion.prepare_relu,
              zoo_fashion.DITHERED_NAME: zoo_fashion.prepare_relu_dithered}
    return [makers[n]() for n in names]


def subjects(quick: bool) -> list[tuple[str, Any, np.ndarray, np.ndarray]]:
    """(name, model, inputs, exact lambda_max) per model."""
    import zoo_fashion
    from accuracy_sweep import Counts, load_subject
    from models import ensure_digits32

    d32 = ensure_digits32()
    sub = load_subject("digits32", "3x32x32", d32.onnx, d32.weights, d32.test, Counts(16 if quick else 40, 1, 1))
    out = [("digits32 (accuracy sweep MLP)", fimaudit.load_model(str(sub.onnx)), sub.x, sub.exact)]
    names = [zoo_fashion.GELU_NAME, zoo_fashion.DITHERED_NAME, zoo_fashion.RELU_NAME]
    for entry in fashion_entries(names[:2] if quick else names):
        model = fimaudit.load_model(str(entry.model_path), **entry.load_options)
        out.append((entry.name, model, entry.inputs, entry.exact_lambda))
    return out


def run_arm(model: Any, x: np.ndarray, exact: np.ndarray, scheme: str, k: int, seeds: list[int]) -> dict[str, Any]:
    errs, covered, queries, forward = [], [], [], []
    t0 = time.perf_counter()
    for seed in seeds:
        rep = fimaudit.audit(model, x, directions=k, seed=seed, scheme=scheme, estimator="sketch")
        for s, t in zip(rep.samples, exact):
            errs.append(s.lambda_max / t - 1)
            covered.append(s.lambda_max_ci[0] <= t <= s.lambda_max_ci[1])
            queries.append(s.queries)
            forward.append(s.scheme == "forward")
    a = np.abs(np.array(errs))
    return dict(scheme=scheme, k=k, n=len(errs), median=float(np.median(a)), p90=float(np.quantile(a, 0.9)),
                coverage=float(np.mean(covered)), queries=float(np.mean(queries)), forward_share=float(np.mean(forward)),
                seconds=time.perf_counter() - t0)


def queries_for(rows: list[dict[str, Any]], target: float = TARGET_ERROR) -> float:
    """Queries per input for a median error of `target`, from the fit median = c / sqrt(queries)
    over the arm's budgets (the sketch's error falls as 1/sqrt(directions))."""
    c = float(np.exp(np.mean([np.log(r["median"]) + 0.5 * np.log(r["queries"]) for r in rows])))
    return (c / target) ** 2


def zoo_subject(module: str) -> list[tuple[str, Any, np.ndarray, np.ndarray]]:
    """A third-party network of the real-model benchmark (benchmarks/zoo_*.py: weights shipped in a
    package, exact lambda from autograd), read from its cache."""
    entry = __import__(module).prepare()
    return [(entry.name, fimaudit.load_model(str(entry.model_path), **entry.load_options), entry.inputs, entry.exact_lambda)]


def ocr_subject() -> list[tuple[str, Any, np.ndarray, np.ndarray]]:
    """rapidocr's text-direction classifier: third-party weights shipped in a PyPI package."""
    return zoo_subject("zoo_rapidocr")


SEEDS = 1  # --seeds: audits per arm, seeds 0..SEEDS-1 (more seeds steady the medians of few inputs)


def part_queries(quick: bool, which: Callable[[bool], list[tuple[str, Any, np.ndarray, np.ndarray]]] | None = None) -> list[dict[str, Any]]:
    seeds = list(range(SEEDS))
    ks = [128, 512] if quick else [128, 256, 512]
    out = []
    for name, model, x, exact in (which or subjects)(quick):
        rows = [run_arm(model, x, exact, scheme, k, seeds) for scheme in ("central", "auto") for k in ks]
        central = [r for r in rows if r["scheme"] == "central"]
        auto = [r for r in rows if r["scheme"] == "auto"]
        q_c, q_a = queries_for(central), queries_for(auto)
        out.append(dict(model=name, inputs=len(x), d=int(np.prod(x.shape[1:])), rows=rows,
                        queries_5pct_central=q_c, queries_5pct_auto=q_a, ratio=q_a / q_c))
        print(f"{name}: 5% at {q_c:.0f} (central) vs {q_a:.0f} (auto) queries: ratio {q_a / q_c:.2f}", flush=True)
    return out


# ---------------------------------------------------------------- part: arithmetic
def stand_in(d: int, classes: int = 10) -> Predict:
    """A smooth float32 model reading 64 of the d inputs: its inference costs next to nothing."""
    rng = np.random.default_rng(5)
    idx = rng.choice(d, 64, replace=False)
    w1 = rng.standard_normal((64, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, classes)).astype(np.float32)

    def predict(batch: np.ndarray) -> np.ndarray:
        z = np.tanh(batch.reshape(len(batch), -1)[:, idx] @ w1) @ w2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    return predict


def drive(task: Generator[Any, np.ndarray, SampleEstimate], predict: Predict) -> tuple[SampleEstimate, float]:
    """Run one sample's estimate against `predict`; returns it and the CPU seconds spent in `predict`.
    Requests with explicit directions are formed here, outside that time: the engine forms them on the
    host, part of the audit's arithmetic. Counter sign rows go to `predict` as they are (a device's work)."""
    model_cpu = 0.0
    batch = next(task)
    while True:
        if isinstance(batch, Perturbations) and not isinstance(batch.rows, SignRows):
            batch = batch.materialize()
        t0 = time.process_time()
        out = predict(batch)
        model_cpu += time.process_time() - t0
        try:
            batch = task.send(out)
        except StopIteration as stop:
            return stop.value, model_cpu


def arithmetic_ms(scheme: str, dtype: str, n: int, d: int = 12_288, k: int = 256) -> dict[str, Any]:
    predict = stand_in(d)
    x = np.random.default_rng(3).uniform(0, 1, (n, 3, 64, 64)).astype(np.float32)
    cfg = EstimatorConfig(directions=k, step=1e-2 * float(np.std(x)), scheme=scheme, input_dtype="float32",  # type: ignore[arg-type]
                          output_dtype="float32")
    per, used = [], []
    with DrawDtype(dtype):
        for i, xi in enumerate(x):
            t0 = time.process_time()
            est, model_cpu = drive(estimate_sample(xi, i, cfg), predict)
            per.append(time.process_time() - t0 - model_cpu)
            used.append(est.scheme.scheme if est.scheme else scheme)
    return dict(scheme=scheme, draws=dtype, n=n, ms_median=1e3 * float(np.median(per)), ms_min=1e3 * float(np.min(per)),
                forward_share=float(np.mean([u == "forward" for u in used])))


def part_arithmetic(quick: bool) -> list[dict[str, Any]]:
    n = 3 if quick else 8
    rows = [arithmetic_ms(s, t, n) for s in ("central", "auto") for t in ("float64", "float32")]
    for r in rows:
        print(f"arithmetic {r['scheme']:8s} draws {r['draws']}: {r['ms_median']:.0f} ms/input (min {r['ms_min']:.0f})", flush=True)
    return rows


# ---------------------------------------------------------------- part: float32 draws, exact JVPs
def part_float32(quick: bool) -> list[dict[str, Any]]:
    from accuracy_sweep import Counts, load_subject
    from large_models import ensure_digits224

    d224 = ensure_digits224()
    sub = load_subject("digits224", "1x224x224", d224.onnx, d224.weights, d224.test, Counts(10 if quick else 30, 1, 1))
    reps = 2 if quick else 4
    out = []
    for k in (256, 1024):
        for dtype in ("float64", "float32"):
            cover, errs = [], []
            for i, (a, t) in enumerate(zip(sub.a_rows, sub.exact)):
                for r in range(reps):
                    rng = np.random.default_rng([7, i, r])
                    v = rng.standard_normal((k, sub.d), dtype=np.float32 if dtype == "float32" else np.float64)
                    y = v @ a.T  # exact JVPs A v, in float64 (a is float64)
                    cfg = EstimatorConfig(directions=k, step=1.0, seed=r)
                    st = sketch_statistics(y, exact=False, cfg=cfg, index=i)
                    cover.append(st.ci[0] <= t <= st.ci[1])
                    errs.append(abs(st.lambda_max / t - 1))
            row = dict(k=k, draws=dtype, n=len(cover), coverage=float(np.mean(cover)), median=float(np.median(errs)))
            print(f"exact JVPs d=50,176 k={k} {dtype}: coverage {row['coverage']:.3f} median {row['median']:.4f} (n={row['n']})", flush=True)
            out.append(row)
    return out


def part_float32_fd(quick: bool) -> list[dict[str, Any]]:
    """The same question through the whole estimator (finite differences through onnxruntime, the
    per-sample step, the witness), digits224, today's code with float64 or float32 Gaussian draws."""
    from accuracy_sweep import Counts, load_subject
    from large_models import ensure_digits224

    d224 = ensure_digits224()
    sub = load_subject("digits224", "1x224x224", d224.onnx, d224.weights, d224.test, Counts(8 if quick else 30, 1, 1))
    model = fimaudit.load_model(str(sub.onnx))
    out = []
    for k in ((256,) if quick else (1024,)):
        for dtype in ("float64", "float32"):
            cover, errs = [], []
            with DrawDtype(dtype):
                for seed in (0, 1):
                    rep = fimaudit.audit(model, sub.x, directions=k, seed=seed, scheme="central", estimator="sketch")
                    for smp, t in zip(rep.samples, sub.exact):
                        cover.append(smp.lambda_max_ci[0] <= t <= smp.lambda_max_ci[1])
                        errs.append(abs(smp.lambda_max / t - 1))
            row = dict(k=k, draws=dtype, n=len(cover), coverage=float(np.mean(cover)), median=float(np.median(errs)))
            print(f"finite differences d=50,176 k={k} {dtype}: coverage {row['coverage']:.3f} median {row['median']:.4f} (n={row['n']})", flush=True)
            out.append(row)
    return out


# ---------------------------------------------------------------- page
def render(data: dict[str, Any]) -> str:
    lines = ["# --scheme auto: queries and arithmetic (issue 16)", "",
             f"`benchmarks/scheme_auto.py`; {data['machine']}. 'central' (the default before fimaudit 0.5: before) "
             "against 'auto' (the default since, with centred forward differences: after), both in this one run. "
             "Figures of fimaudit 0.4, whose auto did not centre: [scheme_auto_0.4.md](scheme_auto_0.4.md).", ""]
    if data.get("notes"):  # the reading, written after the run (kept in the JSON so a rerun keeps it)
        lines += ["## Reading", ""] + [f"- {n}" for n in data["notes"]] + [""]
    measured = data.get("queries", []) + data.get("queries_ocr", []) + data.get("queries_fer", []) + data.get("queries_efficientnet", [])
    if measured:
        lines += ["## Queries per input for a 5% median error", "",
                  "| model | d | inputs × seeds | scheme | k (budget) | queries/input | median | p90 | coverage | forward share |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m in measured:
            for r in m["rows"]:
                lines.append(f"| {m['model']} | {m['d']} | {r['n']} | {r['scheme']} | {r['k']} | {r['queries']:.0f} | "
                             f"{100 * r['median']:.2f}% | {100 * r['p90']:.1f}% | {100 * r['coverage']:.1f}% | {r['forward_share']:.2f} |")
        lines += ["", "| model | queries for 5%: central | auto | auto / central (target ≤ 0.6) |", "|---|---|---|---|"]
        for m in measured:
            lines.append(f"| {m['model']} | {m['queries_5pct_central']:.0f} | {m['queries_5pct_auto']:.0f} | {m['ratio']:.2f} |")
        lines += ["", "Queries for 5% come from the fit median = c / √queries over each arm's budgets (the sketch's "
                  "error falls as 1/√k); queries include the pilot, the base queries and the witness check.", ""]
    if "arithmetic" in data:
        lines += ["## Arithmetic per input at d = 12,288 (3×64×64), k = 256", "",
                  "CPU time (all threads) of `estimate_sample` driven directly, minus the CPU time of the stand-in "
                  "model's calls (a float32 tanh network reading 64 inputs). Target ≤ 35 ms.", "",
                  "| scheme | Gaussian draws | ms per input (median) | min | forward share |", "|---|---|---|---|---|"]
        for r in data["arithmetic"]:
            lines.append(f"| {r['scheme']} | {r['draws']} | {r['ms_median']:.0f} | {r['ms_min']:.0f} | {r['forward_share']:.2f} |")
        lines.append("")
    if "float32" in data:
        lines += ["## Do float32 Gaussian draws by themselves lose coverage?", "",
                  "Exact JVPs of digits224 (d = 50,176) at its inputs, Y = V Aᵀ with V drawn in float64 or float32, "
                  "then the library's jackknife and union bootstrap interval.", "",
                  "| k | draws | estimates | coverage | median error |", "|---|---|---|---|---|"]
        for r in data["float32"]:
            lines.append(f"| {r['k']} | {r['draws']} | {r['n']} | {100 * r['coverage']:.1f}% | {100 * r['median']:.2f}% |")
        lines.append("")
    if "float32_fd" in data:
        lines += ["The same through the whole estimator (finite differences through onnxruntime, per-sample step, "
                  "central, 2 seeds):", "", "| k | draws | estimates | coverage | median error |", "|---|---|---|---|---|"]
        for r in data["float32_fd"]:
            lines.append(f"| {r['k']} | {r['draws']} | {r['n']} | {100 * r['coverage']:.1f}% | {100 * r['median']:.2f}% |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="queries,arithmetic,float32")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per arm in the queries parts")
    args = ap.parse_args()
    global SEEDS
    SEEDS = args.seeds
    path = args.out / "scheme_auto.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    data["machine"] = f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPU cores (shared), fimaudit {fimaudit.__version__}"
    parts = {"queries": part_queries, "arithmetic": part_arithmetic, "float32": part_float32, "float32_fd": part_float32_fd,
             "queries_ocr": lambda quick: part_queries(quick, lambda _: ocr_subject()),
             "queries_fer": lambda quick: part_queries(quick, lambda _: zoo_subject("zoo_keras")),
             "queries_efficientnet": lambda quick: part_queries(quick, lambda _: zoo_subject("zoo_efficientnet"))}
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        data[name] = parts[name](args.quick)
        data.setdefault("seconds", {})[name] = time.perf_counter() - t0
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        (args.out / "scheme_auto.md").write_text(render(data))


if __name__ == "__main__":
    main()
