"""Batch size and speed on the CPU: a framework's time per input against the batch, and whole audits
with the adapters' batches before and after convolutional networks got small ones on the CPU.

Part 1, the framework alone: a plain onnxruntime InferenceSession (CPU provider, default threads), or
the torch module under inference_mode, as a user would call them, runs batches of 1 to 256 (torch: 64)
of the model's real inputs (tiled to fill the batch); the figure is microseconds per input, best of
--repeats timed loops of at least --rows inputs each (64 for EfficientNet-Lite1).

Part 2, whole audits: fimaudit.audit(model, x, seed=0) on the first --samples real inputs (EfficientNet-
Lite1: half through onnxruntime, a quarter through torch), with the adapter's default batch size (since
fimaudit 0.7: at most 16 inputs and 4 MiB for a convolutional network with inputs of 64 KiB or more on
the CPU) and with the rule before it (64 MiB of float32 inputs, at most 1,024), interleaved, best of
--repeats. Both audits send the same inputs; their figures agree to the framework's rounding, which may
depend on the batch size (the largest relative difference in lambda_max is shown).

Models: rapidocr's text-direction classifier and EfficientNet-Lite1 (third-party weights, from the
packages that ship them: benchmarks/zoo_rapidocr.py, zoo_efficientnet.py; EfficientNet-Lite1 both as
its ONNX export and as the torch module its package builds), the ReLU + max-pool Fashion-MNIST CNN
trained here (zoo_fashion.py), and the digits32 MLP (benchmarks/models.py), which has no convolution
and keeps the large batches.

    .venv/bin/python benchmarks/batch_size.py            # writes docs/benchmarks/batch_size.md and .json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fimaudit  # noqa: E402
from fimaudit.adapter import default_batch_size  # noqa: E402
from speed_models import best_of, machine  # noqa: E402

DOC = ROOT / "docs" / "benchmarks" / "batch_size"
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Subject:
    name: str
    about: str
    inputs: np.ndarray
    open: Callable[..., Any]  # open(**options) -> the adapter's model (options: max_batch_size)
    run: Callable[[np.ndarray], object]  # the framework alone on one batch, as a user would call it
    before: Callable[[Any], int]  # the batch size the rule before 0.7 gives that model
    sizes: tuple[int, ...] = SIZES


def subject(name: str) -> Subject:
    if name == "efficientnet-lite1-torch":
        return torch_subject()
    if name == "digits32":
        from models import ensure_digits32

        made = ensure_digits32()
        return onnx_subject(name, "3072-64-10 tanh MLP (ours), no convolution", made.onnx, np.load(made.test), {})
    module, about = {
        "rapidocr-cls": ("zoo_rapidocr", "rapidocr's text-direction classifier, third-party, 3x48x192"),
        "efficientnet-lite1": ("zoo_efficientnet", "EfficientNet-Lite1, third-party ImageNet weights, 3x240x240"),
        "fashion-relu": ("zoo_fashion", "ReLU + max-pool Fashion-MNIST CNN (trained here), 1x28x28"),
    }[name]
    zoo = __import__(module)
    entry = zoo.prepare_relu() if name == "fashion-relu" else zoo.prepare()
    return onnx_subject(name, about, Path(entry.model_path), np.asarray(entry.inputs, dtype=np.float32), dict(entry.load_options))


def onnx_subject(name: str, about: str, path: Path, inputs: np.ndarray, options: dict[str, Any]) -> Subject:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    return Subject(name, about + " (onnxruntime)", inputs, lambda **kw: fimaudit.load_model(str(path), **options, **kw),
                   lambda batch: session.run(None, {feed: batch}), lambda model: default_batch_size(model.input_spec))


def torch_subject() -> Subject:
    """EfficientNet-Lite1 as the torch module its package builds, through the torch adapter."""
    import torch
    import zoo_efficientnet
    from fimaudit_torch import TorchModel

    net = zoo_efficientnet.load_torch_model()
    inputs = np.asarray(zoo_efficientnet.prepare().inputs, dtype=np.float32)

    def run(batch: np.ndarray) -> object:
        with torch.inference_mode():
            return net(torch.from_numpy(batch))

    return Subject("efficientnet-lite1-torch", "EfficientNet-Lite1, third-party weights, 3x240x240 (torch, its package's module)",
                   inputs, lambda **kw: TorchModel(net, input_shape=inputs.shape[1:], outputs="logits", device="cpu", **kw),
                   run, lambda model: default_batch_size(model.input_spec), sizes=SIZES[:7])  # 128 and 256: minutes each


def per_input_times(s: Subject, rows: int, repeats: int) -> dict[int, float]:
    """Microseconds per input of the framework alone, by batch size."""
    out: dict[int, float] = {}
    for size in s.sizes:
        batch = np.ascontiguousarray(np.resize(s.inputs, (size, *s.inputs.shape[1:])))
        s.run(batch)
        loops = max(2, rows // size)

        def run(batch: np.ndarray = batch, loops: int = loops) -> None:
            for _ in range(loops):
                s.run(batch)

        out[size] = best_of({"run": run}, repeats)["run"] / (loops * size) * 1e6
    return out


def audits(s: Subject, samples: int, repeats: int) -> dict[str, Any]:
    """Whole audits with the default batch size and with the rule before 0.7."""
    x = s.inputs[:samples]
    default = s.open()
    before = s.open(max_batch_size=s.before(default))
    reports: dict[str, Any] = {}
    calls = {"default": count_calls(default), "before": count_calls(before)}

    def audit(name: str, model: Any) -> Any:
        def run() -> None:
            calls[name].clear()
            reports[name] = fimaudit.audit(model, x, seed=0)
        return run

    fimaudit.audit(default, x[:2], seed=0)  # warm: the first audit of a process pays its imports
    times = best_of({"default": audit("default", default), "before": audit("before", before)}, repeats)
    lam = {name: np.array([r.lambda_max for r in rep.samples]) for name, rep in reports.items()}
    return {
        "samples": len(x), "batch_default": default.max_batch_size, "batch_before": before.max_batch_size,
        "queries": int(sum(r.queries for r in reports["default"].samples)),
        "seconds_default": times["default"], "seconds_before": times["before"],
        "speedup": times["before"] / times["default"],
        "lambda_rel_diff": float(np.max(np.abs(lam["default"] / lam["before"] - 1))),
        "mean_rows_default": float(np.mean(calls["default"])), "mean_rows_before": float(np.mean(calls["before"])),
    }


def count_calls(model: Any) -> list[int]:
    """The rows of every call the model gets from now on (its adapter's _raw_predict, on this instance)."""
    sizes: list[int] = []
    inner = model._raw_predict

    def counted(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return inner(batch)

    model._raw_predict = counted
    return sizes


def write(prefix: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), "fimaudit": fimaudit.__version__, "repeats": args.repeats, "results": results}
    Path(f"{prefix}.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# Batch size and speed on the CPU", "",
        f"Written by `benchmarks/batch_size.py --samples {args.samples} --repeats {args.repeats}`; the method is in "
        "its docstring. Machine: " + data["machine"] + f", fimaudit {fimaudit.__version__}.", "",
        "## The framework alone: µs per input by batch size (plain session or module, CPU, best of "
        f"{args.repeats})", "",
        "| model | " + " | ".join(str(n) for n in SIZES) + " | best |",
        "|---|" + "---|" * (len(SIZES) + 1),
    ]
    for r in results:
        times = {int(k): v for k, v in r["per_input_us"].items()}
        best = min(times, key=times.__getitem__)
        lines.append(f"| {r['name']} | " + " | ".join(f"{times[n]:,.1f}" if n in times else "–" for n in SIZES) + f" | {best} |")
    lines += ["", "## Whole audits: the default batch against the rule before 0.7 (best of "
              f"{args.repeats}, interleaved)", "",
              "| model | inputs | queries | most rows a call, before → now | mean rows a call | s before | s now | **speed-up** | max rel. diff of λ |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["audit"]
        lines.append(f"| {r['name']} | {a['samples']} | {a['queries']:,} | {a['batch_before']} → {a['batch_default']} | "
                     f"{a['mean_rows_before']:.1f} → {a['mean_rows_default']:.1f} | "
                     f"{a['seconds_before']:.2f} | {a['seconds_default']:.2f} | **{a['speedup']:.2f}×** | {a['lambda_rel_diff']:.1e} |")
    lines += ["", "Where the mean rows a call did not change, neither did the batches: the model keeps the large "
              "batches (no convolution, or inputs under 64 KiB), and those rows show the machine's scatter.",
              "", "Models:", ""] + [f"- **{r['name']}**: {r['about']}" for r in results]
    Path(f"{prefix}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {prefix}.md and .json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="rapidocr-cls,efficientnet-lite1,efficientnet-lite1-torch,fashion-relu,digits32")
    parser.add_argument("--samples", type=int, default=16, help="inputs per audit (EfficientNet: half, it is slow)")
    parser.add_argument("--rows", type=int, default=256, help="inputs per timed loop of part 1 (at least)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        s = subject(name)
        print(f"{name}: the framework alone by batch size", flush=True)
        slow = name.startswith("efficientnet")
        times = per_input_times(s, 64 if slow else args.rows, args.repeats)
        samples = args.samples // (4 if name.endswith("torch") else 2) if slow else args.samples
        print(f"{name}: audits of {samples} inputs", flush=True)
        results.append({"name": name, "about": s.about, "per_input_us": times, "audit": audits(s, samples, args.repeats)})
        print(results[-1]["audit"], flush=True)
    write(args.out, results, args)


if __name__ == "__main__":
    main()
