"""What a whole fimaudit audit costs over the raw batched inference it needs, on the same inputs.

For each model, one untimed audit records every batch the engine sends to the adapter (and the
raw outputs). Then four things are timed, interleaved within each round, best of --repeats:
  audit:    fimaudit.audit(model, x, directions=k) end to end (engine, estimators, adapter, report);
  raw:      the framework alone on exactly the recorded batches, one after another
            (onnxruntime InferenceSession.run, or the torch module under inference_mode);
  adapter:  ProbabilityModel.predict_proba on the same batches (the adapter's casts and checks);
  no-model: the same audit against a stand-in that replays the recorded outputs instantly, i.e.
            everything the audit does besides inference (estimators, bootstrap, engine, report);
  audit, BLAS 1 thread: the audit again with numpy's BLAS limited to one thread (threadpoolctl),
            to show how much of the excess is the estimators' BLAS threads and the framework's
            threads competing for the same cores.
With --generator counter (the torch adapter on CUDA: issue 19's device path) the sketch's perturbed
inputs are formed on the device (fimaudit.perturbations); the recording then forms each batch on the
host once, untimed, so that *raw* runs exactly the inputs the device formed, sent from host memory as
a user without fimaudit would; *raw, resident* runs them already on the device (inference alone).
audit/raw is the overhead (target <= 1.05); queries/s = rows / seconds. A cProfile of the no-model
audit names the functions that the non-inference time goes to (the main thread, where the
estimators run; the adapter's casts run on the engine's worker thread and are the adapter column).

Models (--models, comma-separated):
  digits         examples/digits.onnx, 64-32-10 tanh MLP on 1x8x8: a few µs a row, the worst case
  digits32       benchmarks/models.py, 3072-64-10 tanh MLP on 3x32x32
  resnet18-64    ResNet-18 topology (random weights, 10 classes) on 3x64x64: a realistic CNN
  resnet18-224   ResNet-18 body (random weights, 10 classes) on 3x224x224: for GPUs (benchmarks/gpu.sh)
  resnet18-224-c1000  the same with 1000 classes: the estimators' K x K arithmetic dominates
  resnet-tiny    a width-8 ResNet on 3x32x32: for dry runs of the GPU script on a CPU

    .venv/bin/python benchmarks/overhead.py                      # ONNX Runtime on the CPU, writes the doc
    .venv/bin/python benchmarks/overhead.py --backend torch --device cuda --models resnet18-224 --out $OUT/gpu_overhead
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fimaudit  # noqa: E402
from fimaudit.adapter import ModelIdentity, ProbabilityModel, Request, materialize, to_probabilities  # noqa: E402
from speed_models import best_of, calibrate_logits, machine, random_images, resnet_like, resnet_onnx  # noqa: E402

DOC = ROOT / "docs" / "benchmarks" / "overhead"
# Issue 16's target; pages written before it (issue 11: 1.10) keep theirs in their JSON (rewrite).
TARGET = 1.05
Batch = np.ndarray


@dataclass(frozen=True)
class Spec:
    """A benchmark model: its input shape and how to build it for each backend."""

    name: str
    shape: tuple[int, ...]
    samples: int  # default number of inputs audited (enough for several full batches)
    about: str


SPECS = {
    "digits": Spec("digits", (1, 8, 8), 100, "64-32-10 tanh MLP (examples/digits.onnx)"),
    "digits32": Spec("digits32", (3, 32, 32), 20, "3072-64-10 tanh MLP (benchmarks/models.py)"),
    "resnet18-64": Spec("resnet18-64", (3, 64, 64), 8, "ResNet-18 topology, random weights, 10 classes"),
    "resnet18-224": Spec("resnet18-224", (3, 224, 224), 8, "ResNet-18 body, random weights, 10 classes"),
    "resnet18-224-c1000": Spec("resnet18-224-c1000", (3, 224, 224), 4, "ResNet-18, random weights, 1000 classes"),
    "resnet-tiny": Spec("resnet-tiny", (3, 32, 32), 4, "width-8 ResNet-18 topology, 10 classes (dry runs)"),
    "efficientnet-lite1": Spec("efficientnet-lite1", (3, 240, 240), 2,
                               "EfficientNet-Lite1, third-party ImageNet weights (benchmarks/zoo_efficientnet.py), its photos"),
}
# The real zoo's third-party models (benchmarks/zoo_*.py), read from its cache: `prepare` builds it.
ZOO = {"efficientnet-lite1": "zoo_efficientnet"}
# (width, classes) of the ResNet-shaped specs.
# resnet18-224 keeps 10 classes: with K = 1000 the estimators' K x K work (eigh, jackknife,
# bootstrap) took ~100 s per input on the 2-core machine, which would measure that, not the GPU.
RESNETS = {"resnet18-64": (64, 10), "resnet18-224": (64, 10), "resnet18-224-c1000": (64, 1000), "resnet-tiny": (8, 10)}


@dataclass
class Subject:
    """What is audited and the plain framework call that the audit's batches are compared with."""

    spec: Spec
    model: ProbabilityModel
    raw: Callable[[Batch], np.ndarray]
    x: np.ndarray
    framework: str
    # Moves a host batch to where the model runs (torch: the device), for the *raw, resident* timing.
    upload: Callable[[Batch], Any] | None = None
    resident: Callable[[Any], object] | None = None


@dataclass(frozen=True)
class Row:
    model: str
    framework: str
    input_shape: list[int]
    samples: int
    directions: int
    queries: int
    batches: int
    batch_size: int
    audit_s: float
    raw_s: float
    adapter_s: float
    no_model_s: float
    audit_blas1_s: float
    generator: str = "numpy"
    raw_resident_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.audit_s / self.raw_s


# -- building the subjects ----------------------------------------------------------------------
def inputs(spec: Spec, n: int) -> np.ndarray:
    if spec.name == "digits":
        return np.load(ROOT / "examples" / "digits_test.npy")[:n].astype(np.float32)
    if spec.name == "digits32":
        from models import ensure_digits32

        return np.load(ensure_digits32().test)[:n]
    if spec.name in ZOO:
        return np.asarray(__import__(ZOO[spec.name]).prepare().inputs[:n], dtype=np.float32)
    return random_images(n, spec.shape)


def onnx_path(spec: Spec) -> Path:
    if spec.name == "digits":
        return ROOT / "examples" / "digits.onnx"
    if spec.name == "digits32":
        from models import ensure_digits32

        return ensure_digits32().onnx
    if spec.name in ZOO:
        return Path(__import__(ZOO[spec.name]).prepare().model_path)
    width, classes = RESNETS[spec.name]
    return resnet_onnx(f"{spec.name}_w{width}_c{classes}", width, spec.shape, classes)


# Audit options from the command line (--scheme), the same for every audit this script runs.
AUDIT_OPTIONS: dict[str, Any] = {}


def onnx_subject(spec: Spec, n: int, providers: list[str], generator: str = "numpy") -> Subject:
    import onnxruntime as ort
    from fimaudit_onnx import OnnxModel

    path = onnx_path(spec)
    model = OnnxModel(path, providers=providers)
    if generator == "counter" and model._forming_device is None:
        model._forming_device = "cpu"  # the device path's code (torch forms, I/O binding) on the CPU provider
    # A separate plain session, as a user with no fimaudit would run it.
    session = ort.InferenceSession(str(path), providers=providers)
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    def raw(batch: Batch) -> np.ndarray:
        return session.run([out_name], {in_name: batch})[0]

    return Subject(spec, model, raw, inputs(spec, n), f"onnxruntime {ort.__version__} {providers[0]}")


def torch_subject(spec: Spec, n: int, device: str, generator: str = "numpy") -> Subject:
    import torch
    from fimaudit_torch import TorchModel

    if spec.name not in RESNETS:
        raise SystemExit(f"--backend torch builds the ResNet-shaped models only, not {spec.name}")
    width, classes = RESNETS[spec.name]
    net = resnet_like(width, classes=classes, channels=spec.shape[0])
    calibrate_logits(net, spec.shape)
    model = TorchModel(net, input_shape=spec.shape, device=device, outputs="logits")
    if generator == "counter":
        model._forms_on_device = True  # on a CPU too (gpu.sh --cpu): the device path's code, as CUDA runs it
    dev = torch.device(device)

    def raw(batch: Batch) -> np.ndarray:
        # Host to device and back is part of the job: the batches live in host memory.
        with torch.inference_mode():
            return net(torch.from_numpy(batch).to(dev)).cpu().numpy()

    def resident(batch: Any) -> object:
        with torch.inference_mode():
            out = net(batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    return Subject(spec, model, raw, inputs(spec, n), f"torch {torch.__version__} {device}",
                   upload=lambda b: torch.from_numpy(b).to(dev), resident=resident)


# -- recording and replaying the audit's batches ------------------------------------------------
def batch_key(batch: Batch) -> bytes:
    """Identifies a batch by its size and three of its rows, each read at up to KEY_POINTS evenly spaced
    coordinates: perturbed rows differ at every coordinate, and hashing whole rows (2 MB a batch at
    3x240x240) cost the no-model audit 0.4 s that an audit does not spend."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(batch.shape).encode())
    for row in (batch[0], batch[len(batch) // 2], batch[-1]):
        flat = row.reshape(-1)
        h.update(np.ascontiguousarray(flat[:: max(1, flat.size // KEY_POINTS)]).tobytes())
    return h.digest()


KEY_POINTS = 4096


def pieces_key(pieces: list[Request]) -> tuple[Any, ...]:
    """Identifies a batch given as pieces without forming it: Perturbations by what they describe."""
    return tuple(
        batch_key(p) if isinstance(p, np.ndarray) else (_rows_key(p.rows), p.scales, p.lo, p.hi, p.origin.size, p.origin.tobytes()[:64])
        for p in pieces
    )


def _rows_key(rows: Any) -> Any:
    if hasattr(rows, "key"):
        return rows.key, rows.start, rows.stop
    array = getattr(rows, "bits", rows)
    return array.shape, array[:1].tobytes()[:256]


# Raw outputs of the batches sent as pieces, by pieces_key (the device path's replay answers from it).
PIECE_ANSWERS: dict[tuple[Any, ...], np.ndarray] = {}


def record(subject: Subject, directions: int, generator: str) -> tuple[list[Batch], list[np.ndarray]]:
    """Every batch one audit sends to the adapter's _raw_predict, and the raw outputs; batches sent as
    pieces to predict_perturbed (the counter generator) are formed on the host here, untimed."""
    model = subject.model
    inner = model._raw_predict
    PIECE_ANSWERS.clear()  # one model's at a time: another's could share a description
    batches: list[Batch] = []
    outputs: list[np.ndarray] = []

    def recording(batch: Batch) -> np.ndarray:
        out = np.asarray(inner(batch))
        batches.append(np.array(batch, copy=True))
        outputs.append(out.copy())
        return out

    def recording_pieces(pieces: list[Request]) -> np.ndarray:
        raw = recording(materialize(pieces))
        PIECE_ANSWERS.setdefault(pieces_key(pieces), raw)
        return to_probabilities(raw, len(raw), model.num_classes, model.output_kind)

    model._raw_predict = recording  # type: ignore[method-assign]  # on this instance only
    if generator == "counter":
        model.predict_perturbed = recording_pieces  # type: ignore[attr-defined]
    try:
        fimaudit.audit(model, subject.x, directions=directions, seed=0, generator=generator, **AUDIT_OPTIONS)
    finally:
        del model._raw_predict  # back to the class's method
        if generator == "counter":
            del model.predict_perturbed  # type: ignore[attr-defined]
    return batches, outputs


class Replay(ProbabilityModel):
    """Answers the recorded batches with the recorded outputs at once: an audit against it costs
    everything but the inference."""

    def __init__(self, like: ProbabilityModel, batches: list[Batch], outputs: list[np.ndarray]) -> None:
        self.input_spec, self.num_classes = like.input_spec, like.num_classes
        self.max_batch_size, self.output_kind, self.output_dtype = like.max_batch_size, like.output_kind, like.output_dtype
        self._like = like
        # The same batch can be sent twice (the batch-dependence probe, the journal's re-check):
        # both times it gets the first answer, as a deterministic model would give.
        self._answers: dict[Any, np.ndarray] = {}
        for b, o in zip(batches, outputs):
            self._answers.setdefault(batch_key(b), o)

    def _raw_predict(self, batch: Batch) -> np.ndarray:
        return self._answers[batch_key(batch)]

    @property
    def identity(self) -> ModelIdentity:
        # Asked of the real model each time: for a live torch module that hashes the weights, a
        # cost of the audit that is not inference.
        return self._like.identity


class DeviceReplay(Replay):
    """A Replay that takes Perturbations as a device model does, without forming them: an audit against
    it costs what the host does on the device path (the inputs' digests aside, which the stand-in needs)."""

    forms_on_device = True

    def predict_perturbed(self, pieces: list[Request]) -> np.ndarray:
        raw = PIECE_ANSWERS[pieces_key(pieces)]
        return to_probabilities(raw, len(raw), self.num_classes, self.output_kind)


# -- measuring --------------------------------------------------------------------------------
def measure(subject: Subject, directions: int, repeats: int, generator: str = "numpy") -> tuple[Row, list[dict[str, Any]]]:
    batches, outputs = record(subject, directions, generator)
    stand_in = (DeviceReplay if generator == "counter" else Replay)(subject.model, batches, outputs)
    x = subject.x

    def every(fn: Callable[[Batch], object]) -> Callable[[], None]:
        """All recorded batches, one after another, as the audit's single worker sends them."""
        def run() -> None:
            for b in batches:
                fn(b)
        return run

    def audit(model: Callable[[], ProbabilityModel]) -> Callable[[], object]:
        return lambda: fimaudit.audit(model(), x, directions=directions, seed=0, generator=generator, **AUDIT_OPTIONS)

    timings: dict[str, Callable[[], object]] = {
        "audit": audit(lambda: subject.model),
        "raw": every(subject.raw),
        "adapter": every(subject.model.predict_proba),
        "no_model": audit(lambda: stand_in),
        "audit_blas1": lambda: one_blas_thread(audit(lambda: subject.model)),
    }
    if subject.upload is not None and subject.resident is not None:
        resident_batches = [subject.upload(b) for b in batches]
        timings["raw_resident"] = lambda: [subject.resident(b) for b in resident_batches]  # type: ignore[misc]
    times = best_of(timings, repeats)
    row = Row(
        subject.spec.name, subject.framework, list(subject.spec.shape), len(x), directions,
        sum(len(b) for b in batches), len(batches), subject.model.max_batch_size,
        times["audit"], times["raw"], times["adapter"], times["no_model"], times["audit_blas1"],
        generator, times.get("raw_resident"),
    )
    return row, profile(stand_in, x, directions, generator)


def one_blas_thread(fn: Callable[[], object]) -> object:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return fn()


def profile(replay: Replay, x: np.ndarray, directions: int, generator: str = "numpy", top: int = 8) -> list[dict[str, Any]]:
    """The functions with the most own time in the no-model audit (its calling thread)."""
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    fimaudit.audit(replay, x, directions=directions, seed=0, generator=generator, **AUDIT_OPTIONS)
    prof.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(prof)
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_, calls, tottime, _cumtime, _) in entries[:top]:
        where = "/".join(Path(file).parts[-2:]) if file != "~" else "builtin"
        rows.append({"function": f"{where}:{line}({func})", "calls": calls, "own_s": tottime, "share": tottime / total})
    return rows


# -- the report -------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    lines = [
        "| model | framework | input | samples × k | rows (batches of ≤) | raw s | adapter s | no-model s | audit s | **audit/raw** "
        "| audit s, BLAS 1 thread (/raw) | audit rows/s | raw rows/s | raw µs/row | generator | raw resident s (audit/it) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = "×".join(map(str, r.input_shape))
        lines.append(
            f"| {r.model} | {r.framework} | {shape} | {r.samples} × {r.directions} | {r.queries:,} ({r.batches} of ≤{r.batch_size}) | "
            f"{r.raw_s:.3f} | {r.adapter_s:.3f} | {r.no_model_s:.3f} | {r.audit_s:.3f} | **{r.ratio:.2f}** | "
            f"{r.audit_blas1_s:.3f} ({r.audit_blas1_s / r.raw_s:.2f}) | "
            f"{r.queries / r.audit_s:,.0f} | {r.queries / r.raw_s:,.0f} | {1e6 * r.raw_s / r.queries:,.1f} | {r.generator} | "
            + (f"{r.raw_resident_s:.3f} ({r.audit_s / r.raw_resident_s:.2f}) |" if r.raw_resident_s else "– |")
        )
    return "\n".join(lines)


def profile_table(name: str, entries: list[dict[str, Any]]) -> str:
    lines = [f"**{name}**: functions with the most own time in the no-model audit", "", "| function | calls | own s | share |", "|---|---|---|---|"]
    lines += [f"| `{e['function']}` | {e['calls']} | {e['own_s']:.3f} | {100 * e['share']:.0f}% |" for e in entries]
    return "\n".join(lines)


def reading(rows: list[Row], target: float) -> str:
    """Per model: met or missed, and the excess over raw split into what is and isn't inference."""
    out = []
    for r in rows:
        verdict = "meets the target" if r.ratio <= target else "misses the target"
        if r.ratio < 1:
            # The audit runs every one of these batches, so it cannot beat them: load noise.
            verdict = "meets the target within noise (a ratio below 1 only means the load varied between runs)"
        excess = r.audit_s - r.raw_s
        out.append(
            f"- **{r.model}** {verdict} (audit/raw {r.ratio:.2f}): the audit takes {excess:+.3f} s over raw "
            f"inference; the adapter's casts and checks add {r.adapter_s - r.raw_s:+.3f} s on the same batches, and "
            f"everything besides inference (no-model audit) costs {r.no_model_s:.3f} s, "
            f"{1e3 * r.no_model_s / r.samples:.1f} ms per sample ({100 * r.no_model_s / r.audit_s:.0f}% of the audit); "
            f"with numpy's BLAS on one thread the audit takes {r.audit_blas1_s / r.raw_s:.2f} × raw."
        )
    return "\n".join(out)


def write(prefix: Path, rows: list[Row], profiles: dict[str, list[dict[str, Any]]], args: argparse.Namespace, where: str | None = None) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    where = where or machine()
    scheme = getattr(args, "scheme", "central")  # pages before the --scheme option measured central differences
    target = getattr(args, "target", TARGET)
    data = {"machine": where, "repeats": args.repeats, "scheme": scheme, "target": target,
            "rows": [asdict(r) | {"ratio": r.ratio} for r in rows], "profiles": profiles}
    _file(prefix, "json").write_text(json.dumps(data, indent=2) + "\n")
    command = " ".join(["benchmarks/overhead.py", *sys.argv[1:]])
    profiles_md = "\n\n".join(profile_table(name, entries) for name, entries in profiles.items())
    _file(prefix, "md").write_text(
        "# Overhead: a whole audit versus the raw inference it needs\n\n"
        f"Written by `{command}`; the method is in that script's docstring. In short: one untimed audit\n"
        "records every batch the engine sends to the model; then the audit end to end (*audit*), the\n"
        "framework alone on exactly those batches (*raw*), the adapter's `predict_proba` on them\n"
        "(*adapter*) and the audit against a stand-in model that replays the recorded outputs at once\n"
        f"(*no-model*: everything but inference) are timed, interleaved, best of {args.repeats}. Target:\n"
        f"audit/raw ≤ {target:.2f}. Scheme {scheme}, default step, seed 0; the queries per sample are\n"
        "2k + 5 for the sketch (d > k) and 2d + 5 in exact mode (d ≤ k, the digits model).\n\n"
        f"Machine: {where} (at the end of the run).\n\n"
        f"{table(rows)}\n\n"
        f"## Reading\n\n{reading(rows, target)}\n\n"
        "The engine runs each batch on a worker thread while the estimators compute on the main one, so the\n"
        "no-model time is hidden only where inference leaves a core free: with every core busy with\n"
        "inference (onnxruntime's default thread pool uses all of them) it adds to the wall time instead.\n"
        "Where the model costs µs per row, the audit's per-sample arithmetic (the bootstrap and jackknife\n"
        "over directions, the direction draws, the witness products) weighs as much as inference itself,\n"
        "and no batching can bring audit/raw near 1: a property of auditing a trivially cheap model.\n"
        "The *BLAS 1 thread* column repeats the audit with numpy's BLAS held to one thread: where it is\n"
        "much faster than *audit*, the estimators' BLAS threads and the framework's thread pool were\n"
        "competing for the same cores (both spin while they wait), which the engine's overlap of model\n"
        "and arithmetic makes worse on a CPU; on a loaded machine this effect is larger still.\n\n"
        f"## Where the non-inference time goes\n\n{profiles_md}\n\n"
        "On a machine shared with other work these timings scatter by tens of percent from run to run:\n"
        "compare rows of one run, and the ratios rather than the absolute times.\n"
    )


def _file(prefix: Path, suffix: str) -> Path:
    """PREFIX.suffix: appended, not substituted (a prefix such as overhead_0.5 keeps its .5)."""
    return prefix.parent / f"{prefix.name}.{suffix}"


def rewrite(prefix: Path, command: list[str]) -> None:
    """Rewrite OUT.md from OUT.json (after a change to the text, without re-measuring)."""
    data = json.loads(_file(prefix, "json").read_text())
    fields = set(Row.__dataclass_fields__)
    rows = [Row(**{k: v for k, v in r.items() if k in fields}) for r in data["rows"]]
    sys.argv = [sys.argv[0], *command]
    args = argparse.Namespace(repeats=data["repeats"], scheme=data.get("scheme", "central"), target=data.get("target", 1.10))
    write(prefix, rows, data["profiles"], args, data["machine"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,digits32,resnet18-64", help=f"comma-separated, of {', '.join(SPECS)}")
    parser.add_argument("--samples", type=int, default=None, help="inputs audited per model (default: per model)")
    parser.add_argument("--directions", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--scheme", default="auto", help="finite differences, as audit's --scheme (default: the library's, auto)")
    parser.add_argument("--generator", choices=("numpy", "counter"), default="numpy",
                        help="counter: the device path (perturbed inputs formed where the model runs; torch backend)")
    parser.add_argument("--out", type=Path, default=DOC, help="write OUT.md and OUT.json (default docs/benchmarks/overhead)")
    args = parser.parse_args()
    AUDIT_OPTIONS["scheme"] = args.scheme
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    rows, profiles = [], {}
    for name in args.models.split(","):
        spec = SPECS[name]
        n = args.samples or spec.samples
        if args.backend == "onnx":
            subject = onnx_subject(spec, n, providers, args.generator)
        else:
            subject = torch_subject(spec, n, args.device, args.generator)
        started = time.perf_counter()
        row, prof = measure(subject, args.directions, args.repeats, args.generator)
        rows.append(row)
        profiles[name] = prof
        print(table([row]).splitlines()[-1], f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        write(args.out, rows, profiles, args)  # after each model, so a time limit keeps the finished ones
    print(table(rows))
    print(f"wrote {args.out}.md and .json")


if __name__ == "__main__":
    main()
