"""fimaudit.audit: run the estimators over many inputs and assemble the report."""
from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fimaudit._version import __version__
from fimaudit.adapter import BoundedModel, ExactFisher, ProbabilityModel, WhiteBoxModel
from fimaudit.data import SAMPLE_RULE, DataStats, check_inputs, digest, draw_sample, indices_sha256, input_scale, rows_digest
from fimaudit.distributed import RayOptions, run_on_ray
from fimaudit.engine import QueryEngine
from fimaudit.errors import UsageError
from fimaudit.differences import SCHEME_OPTIONS
from fimaudit.estimators import ESTIMATOR_NAMES, EstimatorConfig, OrthogonalLaw, SampleEstimate, estimate_sample, sample_memory
from fimaudit.journal import Journal, JournalLock
from fimaudit.model import check_batch_independence
from fimaudit.perturbations import GENERATORS, DevicePerturbing
from fimaudit.report import (
    AuditConfig,
    AuditReport,
    DataInfo,
    JournalInfo,
    ModelBound,
    ModelInfo,
    SampleBound,
    SampleResult,
    Selection,
    ToolInfo,
    summarize,
)
from fimaudit.threads import single_threaded_blas

# Where each sample's step search starts, relative to the data's spread (by output precision): the
# textbook h ~ eps_out^(1/3). On real trained networks this is far outside the local regime, so it
# is only the first rung: the search moves down to a step that has converged (differences.py).
RELATIVE_STEP = {"float16": 3e-2, "float32": 1e-2, "float64": 1e-4}
# Defaults of audit(), which check_options assumes where a caller (the CLI) does not choose them.
BOOTSTRAP = 1000
CONFIDENCE = 0.95
STEP_RULE = (
    "per sample: a pilot of 3 directions from the start step, jumping to eps_tau/20, then down by 4x "
    "until two successive steps agree (docs/math.md)"
)
INTERVAL_METHOD = (
    "union of the percentile bootstrap over directions shifted by the jackknife bias correction and the basic "
    "bootstrap interval, widened by the finite-difference error of the step"
)
Progress = Callable[[int, int, int], None]


def audit(
    model: ProbabilityModel,
    x: Any,
    *,
    directions: int = 256,
    seed: int = 0,
    scheme: str = "auto",
    step: float | None = None,
    estimator: str = "auto",
    draws: str = "rademacher",
    generator: str = "auto",
    tau: float = 0.01,
    limit: int | None = None,
    sample: int | None = None,
    bootstrap: int = BOOTSTRAP,
    confidence: float = CONFIDENCE,
    witness: bool = True,
    concurrency: int = 1,
    data_source: str | None = None,
    progress: Progress | None = None,
    journal: str | Path | None = None,
    restart: bool = False,
    white_box: bool = False,
    journal_lock: JournalLock | None = None,
    ray: str | RayOptions | None = None,
    workers: int = 2,
    bound: bool = False,
) -> AuditReport:
    """Audit `model` at each input of `x` (shape (n, *input_shape)) and return the report.

    Each sample's directions derive from (seed, index) alone, so batching, order and limits never
    change a sample's numbers: the same seed gives the same report (timing fields aside).
    With `journal`, each finished sample is committed to that SQLite file first, and a rerun of
    the same audit continues where it stopped (`restart=True` discards it), after re-computing a
    random few of the journaled samples to check the journal was not altered (docs/security.md).
    `journal_lock` is the journal's lock when the caller already holds it.
    `ray` ("auto" for a local instance, a cluster's address, or RayOptions) shards the samples over
    `workers` Ray actors (fimaudit.distributed); the report is the one a local run gives.
    `limit=N` audits the first N inputs, `sample=N` N inputs drawn at random, committed by `seed` and
    the data's digest (data.draw_sample); either way a sample's numbers are those a full audit gives
    at its index, and the report's data.selection says which rows were audited.
    `generator` is where sign directions come from: "numpy" (PCG64, inputs formed here), "counter" (a
    counter hash that a device model, the torch adapter on CUDA, turns into inputs where it runs:
    fimaudit.perturbations), or "auto" (counter exactly when the model forms inputs on a device). Both give
    the same law and accuracy; the report records which, and reproduces with it on any machine.
    `bound=True` asks the model (a BoundedModel: the torch and ONNX adapters) for an upper bound on
    lambda_max at every input, and on a ball around each audited input where it has a local one; both are
    computed here, after the samples (never on Ray workers or in the journal), and recorded beside them.
    """
    check_options(
        directions, scheme, estimator, tau, limit, step, seed, concurrency, sample, draws, generator,
        bootstrap=bootstrap, confidence=confidence,
    )
    check_batch_independence(model)  # load_model probes too; a model built in code is probed here
    exact_fisher = _white_box_function(model) if white_box else None
    bounded = _bounded_model(model) if bound else None
    arr, stats = check_inputs(x, model.input_spec)
    # The step and its floor come from all the data, so --limit or --sample never change a sample's numbers.
    shards = _ray_options(ray, workers)
    cfg, relative = estimator_config(
        model, stats, directions=directions, step=step, scheme=scheme, estimator=estimator, seed=seed,
        bootstrap=bootstrap, confidence=confidence, witness=witness, tau=tau, draws=draws, generator=generator,
        remote_gpus=shards is not None and shards.gpus_per_worker > 0,
    )
    rows, selection, audited_digest = choose_rows(arr, stats, limit=limit, sample=sample, seed=seed)
    binding = {"tool": __version__, "model": ModelInfo.of(model).model_dump(), "data": stats.sha256, "config": asdict(cfg), "tau": tau}
    book = Journal(journal, binding, restart=restart, lock=journal_lock) if journal is not None else None
    try:
        # Journal indices are checked against all the data: a --limit may have grown, a --sample changed.
        wanted = rows if isinstance(rows, range) else set(rows)  # membership in O(1) either way
        resumed = {i: s for i, s in book.finished(len(arr)).items() if i in wanted} if book is not None else {}
        samples, sent, wall, rechecked = _run(model, arr, rows, cfg, tau, concurrency, progress, book, resumed, shards)
    finally:
        if book is not None:
            book.close()
    if exact_fisher is not None:
        samples = _with_white_box(samples, exact_fisher(np.asarray(arr[np.asarray(rows, dtype=np.intp)])))
    info = ModelInfo.of(model)
    if bounded is not None:
        model_bound, samples = with_bounds(bounded, arr, samples)
        info = info.model_copy(update={"lambda_max_bound": model_bound})
    queries = sum(s.queries for s in samples)
    return AuditReport(
        tool=ToolInfo(version=__version__),
        model=info,
        data=DataInfo(
            sha256=audited_digest, shape=[len(rows), *arr.shape[1:]], dtype=str(arr.dtype), source=data_source,
            selection=selection, population=describe_population(selection, len(arr), data_source),
        ),
        config=AuditConfig(
            estimator=estimator, directions=directions, step=cfg.step, step_relative=relative,  # type: ignore[arg-type]
            step_rule=STEP_RULE if step is None else "fixed (given), checked by a pilot", scheme=scheme,  # type: ignore[arg-type]
            seed=seed, tau=tau, bootstrap=bootstrap, confidence=confidence, draws=cfg.draws, generator=cfg.generator,
            centred_forward=cfg.centred_forward, orthogonal_law=cfg.orthogonal_law, interval_method=INTERVAL_METHOD,
            input_space=_input_space(model), white_box=white_box,
        ),
        samples=samples,
        summary=summarize(samples, queries, wall, sent, _journal_info(book, resumed, rechecked), confidence=confidence, tau=tau),
    )


def estimator_config(
    model: ProbabilityModel, stats: DataStats, *, directions: int, step: float | None, scheme: str, estimator: str,
    seed: int, bootstrap: int, confidence: float, witness: bool, tau: float, draws: str = "rademacher",
    generator: str = "numpy", remote_gpus: bool = False, centred_forward: bool = True, orthogonal_law: OrthogonalLaw = "cosine",
) -> tuple[EstimatorConfig, float | None]:
    """How every sample of an audit of data with these `stats` is estimated, and the step relative to
    the data's spread when it was derived from it. `fimaudit reproduce` rebuilds it the same way."""
    relative: float | None = None
    if step is None:
        relative = RELATIVE_STEP.get(model.output_dtype, 1e-2)
        h = relative * input_scale(stats)
    else:
        h = float(step)
    floor = max(_input_resolution(model, stats.peak), 1e-100)  # below 1e-100, h**2 underflows
    if h < floor:
        raise UsageError(
            f"step {h:.3g} is below the resolution of {model.input_spec.dtype} inputs of this size "
            f"({floor:.3g}): the perturbed inputs would round back to the originals.",
            "omit --step to use the default, or pass a larger one",
        )
    cfg = EstimatorConfig(
        directions, h, scheme, estimator, seed, bootstrap, confidence, witness,  # type: ignore[arg-type]
        model.output_dtype, model.input_spec.dtype, adaptive_step=step is None, tau=tau, step_floor=floor,
        draws=draws, generator=resolve_generator(generator, model, draws, remote_gpus),  # type: ignore[arg-type]
        centred_forward=centred_forward, orthogonal_law=orthogonal_law,
    )
    return cfg, relative


def resolve_generator(option: str, model: ProbabilityModel, draws: str, remote_gpus: bool = False) -> str:
    """The generator an audit uses: "auto" takes the counter one where the model forms sign directions'
    inputs on a device (where numpy's would keep the host busy), numpy's elsewhere. With `remote_gpus`
    (Ray workers given GPUs) a model of a kind that forms them counts, whatever the driver's own device."""
    if option != "auto":
        return option
    on_device = isinstance(model, DevicePerturbing) and (remote_gpus or model.forms_on_device)
    return "counter" if on_device and draws == "rademacher" else "numpy"


def choose_rows(
    arr: np.ndarray, stats: DataStats, *, limit: int | None, sample: int | None, seed: int,
) -> tuple[Sequence[int], Selection | None, str]:
    """(the rows to audit, how they were chosen, the digest of those rows) for --limit or --sample.

    The rows are read where they lie (a memory-mapped file is never loaded whole); their digest
    is that of the array they form, which is what the report's data.sha256 names.
    """
    total = len(arr)
    if sample is not None:
        if sample > total:
            raise UsageError(f"--sample {sample} asks for more inputs than the data holds ({total}).",
                             f"pass --sample {total} or fewer, or omit it to audit every input")
        rows = draw_sample(total, sample, seed, stats.sha256)
        return rows, Selection(
            rule="random", method=SAMPLE_RULE, population_size=total, population_sha256=stats.sha256, seed=seed,
            indices_sha256=indices_sha256(rows), indices=rows,
        ), rows_digest(arr, rows)
    if limit is not None and limit < total:
        first = range(limit)  # a range, not a list: a --limit of millions costs no memory here
        return first, Selection(
            rule="first", method=f"the first {limit} rows, in file order", population_size=total,
            population_sha256=stats.sha256, seed=None, indices_sha256=indices_sha256(first), indices=None,
        ), digest(arr[:limit])
    return range(total), None, stats.sha256


def describe_population(selection: Selection | None, total: int, source: str | None) -> str:
    """What the summary's figures are a sample of, in words, for the report's data.population."""
    where = source or "the data given"
    if selection is None:
        return (f"the distribution the {total} inputs of {where} were drawn from: the summary's bounds hold for it only "
                "as far as these inputs are an i.i.d. sample of it (fimaudit did not choose them)")
    if selection.rule == "random":
        return (f"the {total} inputs of {where} (sha256 {selection.population_sha256}): {len(selection.indices or [])} drawn uniformly without "
                "replacement, committed by the seed and that digest, so the summary's bounds hold for an input drawn at random from it")
    return (f"the {total} inputs of {where} (sha256 {selection.population_sha256}), through its first rows: not a random "
            "sample, so the summary's bounds hold for it only if the file's order is random")


def _journal_info(book: Journal | None, resumed: dict[int, SampleResult], rechecked: int) -> JournalInfo | None:
    return JournalInfo(resumed=len(resumed), rechecked=rechecked) if book is not None else None


def _run(
    model: ProbabilityModel, arr: np.ndarray, rows: Sequence[int], cfg: EstimatorConfig, tau: float, concurrency: int,
    progress: Progress | None, book: Journal | None, resumed: dict[int, SampleResult], shards: RayOptions | None = None,
) -> tuple[list[SampleResult], int, float, int]:
    engine = QueryEngine(model, concurrency=concurrency)
    results = dict(resumed)
    active = _max_active(engine, arr, cfg, model.num_classes)
    model_flags = model_wide_flags(model)
    remote = [0]  # queries spent by Ray workers

    def accept(finished: list[SampleResult]) -> None:
        # A resent Ray shard can finish twice: each sample is recorded once.
        new = list({r.index: r for r in finished if r.index not in results}.values())
        if not new:
            return
        if book is not None:
            book.commit(new)  # durable before they count
        for result in new:
            results[result.index] = result
            remote[0] += result.queries if shards is not None else 0
        if progress is not None:
            progress(len(results), len(rows), engine.queries + remote[0])

    def done(index: int, est: SampleEstimate) -> None:
        accept([SampleResult.from_estimate(index, est, tau, model_flags, _norm(arr[index]))])

    start = time.perf_counter()
    tasks = ((i, estimate_sample(arr[i], i, cfg)) for i in rows if i not in results)
    try:
        # Local runs share the cores with the model's own thread pool (fimaudit/threads.py).
        with single_threaded_blas() if shards is None else contextlib.nullcontext():
            # The journal is checked before this run spends a query on samples of its own.
            rechecked = _recheck(engine, arr, cfg, tau, resumed, active, book)
            if shards is None:
                engine.run(tasks, done, max_active=active)
            else:
                run_on_ray(model, arr, [i for i in rows if i not in results], cfg, tau, shards, accept)
    finally:
        engine.close()
    return [results[i] for i in sorted(results)], engine.queries + remote[0], time.perf_counter() - start, rechecked


def _ray_options(ray: str | RayOptions | None, workers: int) -> RayOptions | None:
    if ray is None or isinstance(ray, RayOptions):
        return ray
    return RayOptions(address=ray, workers=workers)


# Share of the journaled samples re-computed on resume (at least RECHECK_MIN of them).
RECHECK_FRACTION = 0.05
RECHECK_MIN = 2
# Relative tolerance of the re-check: the computation is deterministic, so only rounding noise
# below this could separate an honest journal from its re-computation.
RECHECK_RTOL = 1e-9


def recheck_count(n: int) -> int:
    return min(n, max(RECHECK_MIN, math.ceil(RECHECK_FRACTION * n)))


def _recheck(
    engine: QueryEngine, arr: np.ndarray, cfg: EstimatorConfig, tau: float, journaled: dict[int, SampleResult],
    max_active: int, book: Journal | None,
) -> int:
    """Re-compute a random few journaled samples; refuse the journal unless each matches its row.

    The choice comes from the OS's entropy, never from the audit's seed: someone who edits the
    journal between runs cannot know which rows will be checked.
    """
    chosen = random.SystemRandom().sample(sorted(journaled), recheck_count(len(journaled)))
    again = _compute(engine, arr, chosen, cfg, tau, max_active)
    for i in chosen:
        problem = _disagreement(journaled[i], again[i])
        if problem is not None:
            where = book.path if book is not None else "journal"
            raise UsageError(
                f"the journal {where} does not match a re-computation of sample {i} ({problem}): it was altered "
                "since it was written, or the model now answers differently.",
                "rerun with --restart to discard the journal and audit every sample afresh",
            )
    return len(chosen)


def recompute(
    model: ProbabilityModel, arr: np.ndarray, indices: Sequence[int], cfg: EstimatorConfig, tau: float, concurrency: int = 1,
) -> dict[int, SampleResult]:
    """The samples at `indices` of `arr`, computed afresh: what an audit with `cfg` records for them
    (each depends on its input, its index and cfg alone; `fimaudit reproduce` relies on this)."""
    engine = QueryEngine(model, concurrency=concurrency)
    try:
        return _compute(engine, arr, list(indices), cfg, tau, _max_active(engine, arr, cfg, model.num_classes))
    finally:
        engine.close()


def _compute(
    engine: QueryEngine, arr: np.ndarray, indices: list[int], cfg: EstimatorConfig, tau: float, max_active: int,
) -> dict[int, SampleResult]:
    out: dict[int, SampleResult] = {}
    model_flags = model_wide_flags(engine.model)

    def done(index: int, est: SampleEstimate) -> None:
        out[index] = SampleResult.from_estimate(index, est, tau, model_flags, _norm(arr[index]))

    engine.run(((i, estimate_sample(arr[i], i, cfg)) for i in indices), done, max_active=max_active)
    return out


def _disagreement(journaled: SampleResult, again: SampleResult) -> str | None:
    """The first field where a journaled sample and its re-computation differ, or None."""
    if "nondeterministic" in again.flags:
        # The model's own noise moves every figure; only an interval that misses the journal's is a sign.
        low, high = journaled.lambda_max_ci
        if again.index == journaled.index and again.lambda_max_ci[0] <= high and low <= again.lambda_max_ci[1]:
            return None
        return f"lambda_max_ci: journaled {list(journaled.lambda_max_ci)}, recomputed {list(again.lambda_max_ci)}"
    return _first_difference(journaled.model_dump(), again.model_dump(), "")


def first_difference(old: Any, new: Any) -> str | None:
    """Where two model_dump()s of a sample first differ (floats to RECHECK_RTOL), or None."""
    return _first_difference(old, new, "")


def _first_difference(old: Any, new: Any, where: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict) and old.keys() == new.keys():
        return next((d for k in old if (d := _first_difference(old[k], new[k], f"{where}.{k}" if where else k))), None)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and len(old) == len(new):
        return next((d for j, (a, b) in enumerate(zip(old, new)) if (d := _first_difference(a, b, f"{where}[{j}]"))), None)
    same = (
        math.isclose(old, new, rel_tol=RECHECK_RTOL, abs_tol=0.0)
        if isinstance(old, float) and isinstance(new, float) else old == new and type(old) is type(new)
    )
    return None if same else f"{where}: journaled {old!r}, recomputed {new!r}"


# Memory for the samples in flight (their blocks of perturbed inputs and accumulators).
IN_FLIGHT_BYTES = 512 * 2**20


def _max_active(engine: QueryEngine, arr: np.ndarray, cfg: EstimatorConfig, classes: int) -> int:
    """At most this many samples in flight: enough to fill the batches, bounded for memory."""
    d = int(np.prod(arr.shape[1:]))
    return int(max(2, min(256, IN_FLIGHT_BYTES // sample_memory(d, classes, cfg))))


def model_wide_flags(model: ProbabilityModel) -> list[str]:
    """Flags that hold for every sample of this model (found when it was loaded)."""
    return ["batch_dependent"] if getattr(model, "batch_dependent", False) else []


def _norm(x: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64).ravel()))


def _white_box_function(model: ProbabilityModel) -> Callable[[np.ndarray], Sequence[ExactFisher]]:
    """The adapter's exact computation (per input: lambda_max, trace, method), checked up front."""
    if not isinstance(model, WhiteBoxModel):
        raise UsageError(
            f"white-box mode needs a model with gradients; the '{model.identity.adapter}' adapter has none.",
            "load a PyTorch model (fimaudit-torch) or drop --white-box",
        )
    return model.exact_fisher


def _bounded_model(model: ProbabilityModel) -> BoundedModel:
    """The model's own bounds (--bound), checked before any query is spent."""
    if not isinstance(model, BoundedModel):
        raise UsageError(
            f"--bound needs a model whose graph and weights can be read; the '{model.identity.adapter}' adapter computes no bound.",
            "audit a PyTorch (.pt2, .pt, a live nn.Module) or ONNX file, or drop --bound",
        )
    return model


def with_bounds(model: BoundedModel, arr: np.ndarray, samples: list[SampleResult]) -> tuple[ModelBound, list[SampleResult]]:
    """The model's global bound, and each sample with its local one where the adapter computes it:
    on the L2 ball of radius step_norm around the input (the length of its finite-difference
    perturbations), so it covers the true lambda_max at the input and every point the final step queried."""
    found: list[SampleResult] = []
    for s in samples:
        radius = float(s.step_norm or 0.0)
        local = model.local_lambda_max_bound(np.asarray(arr[s.index]), radius)
        found.append(s if local is None else s.model_copy(update={"lambda_max_bound": SampleBound.of(local, radius)}))
    asked = [s.lambda_max_bound for s in found if s.lambda_max_bound is not None]
    if asked:
        valued = sum(b.value is not None for b in asked)
        note = (f"{valued} of {len(found)} samples bounded: sup of lambda_max(F(x')) over the L2 ball ||x' - x||_2 <= r around the "
                "input x, r = the sample's step_norm (radius 0: at x itself)")
        if valued < len(asked):
            note += f"; {len(asked) - valued} null, each with its reason"
    else:
        note = f"none: the '{_adapter_name(model)}' adapter computes no local bound, only the global one"
    return ModelBound.of(model.lambda_max_bound(), note), found


def _adapter_name(model: BoundedModel) -> str:
    return model.identity.adapter if isinstance(model, ProbabilityModel) else type(model).__name__


def _with_white_box(samples: list[SampleResult], exact: Sequence[ExactFisher]) -> list[SampleResult]:
    """The black-box results with the white-box figures beside them (never instead of them)."""
    return [
        s.model_copy(update={"lambda_max_white_box": float(e.lambda_max), "trace_white_box": float(e.trace), "white_box_method": str(e.method)})
        for s, e in zip(samples, exact)
    ]


def _input_resolution(model: ProbabilityModel, peak: float) -> float:
    """The smallest step that still changes the inputs once cast to the model's dtype."""
    dtype = np.dtype(model.input_spec.dtype)
    eps = float(np.finfo(dtype).eps) if dtype.kind == "f" else 1.0
    return eps * max(peak, float(np.finfo(dtype).tiny) / eps if dtype.kind == "f" else 1.0)


def _input_space(model: ProbabilityModel) -> str:
    spec = model.input_spec
    rng = f", values in [{spec.value_range[0]}, {spec.value_range[1]}]" if spec.value_range else ""
    return f"the model's input tensor, shape {list(spec.shape)}, {spec.dtype}{rng}; L2 norm over all coordinates"


def check_options(
    directions: int, scheme: str, estimator: str, tau: float, limit: int | None, step: float | None, seed: int,
    concurrency: int, sample: int | None = None, draws: str = "rademacher", generator: str = "auto", *,
    bootstrap: int = BOOTSTRAP, confidence: float = CONFIDENCE,
) -> None:
    """UsageError naming the first bad audit option (the CLI asks before it loads the model)."""
    problems = [
        (not isinstance(concurrency, int) or concurrency < 1, f"concurrency must be an integer >= 1 (got {concurrency!r})"),
        (not isinstance(seed, int) or seed < 0, f"seed must be a non-negative integer (got {seed!r})"),
        (not isinstance(directions, int) or directions < 2, f"directions must be an integer >= 2 (got {directions!r})"),
        (scheme not in SCHEME_OPTIONS, f"scheme must be auto, central, forward or richardson (got {scheme!r})"),
        (estimator not in ESTIMATOR_NAMES, f"estimator must be auto, sketch or exact (got {estimator!r})"),
        (draws not in ("rademacher", "gaussian"), f"draws must be rademacher or gaussian (got {draws!r})"),
        (generator not in ("auto", *GENERATORS), f"generator must be auto, numpy or counter (got {generator!r})"),
        # The counter generator makes signs only (fimaudit.perturbations).
        (generator == "counter" and draws != "rademacher", "generator counter makes sign directions: use it with draws rademacher"),
        (not (tau > 0 and math.isfinite(tau)), f"tau must be a positive number (got {tau!r})"),
        (bootstrap < 100, f"bootstrap must be >= 100 resamples (got {bootstrap!r})"),
        (not 0.5 <= confidence < 1, f"confidence must be in [0.5, 1) (got {confidence!r})"),
        (limit is not None and limit < 1, f"limit must be >= 1 (got {limit!r})"),
        (sample is not None and (not isinstance(sample, int) or sample < 1), f"sample must be an integer >= 1 (got {sample!r})"),
        # Both choose the rows: "the first N of a random draw" would be neither a random sample nor a prefix.
        (limit is not None and sample is not None, "limit and sample both choose which inputs to audit: give one"),
        (step is not None and not (step > 0 and math.isfinite(step)), f"step must be a positive number (got {step!r})"),
    ]
    for bad, message in problems:
        if bad:
            raise UsageError(message, "see `fimaudit audit --help` for the accepted values")
