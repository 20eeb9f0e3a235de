"""Estimators of the input Fisher information from probability outputs (see docs/math.md).

Everything here is pure numpy. A sample's estimate is a generator (an engine Task): it yields
blocks of perturbed inputs and receives their probabilities, so the engine can batch the queries
of many samples together and memory stays bounded by one block of directions per sample.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.sparse.linalg

from fimaudit.diagnostics import ResolutionProbe
from fimaudit.perturbations import Generator as DirectionGenerator
from fimaudit.perturbations import Request, SignBits, SignRows, counter_key
from fimaudit.differences import (
    DIRECTION_ERROR,
    ERROR_TARGET,
    LOCALITY,
    NOISE_MARGIN,
    MAX_DISAGREEMENT,
    RESOLUTION_FACTOR,
    SCHEME_ORDER,
    SCHEME_POINTS,
    STEP_RATIO,
    DirectionCheck,
    FiniteDifferences,
    Scheme,
    SchemeDecision,
    SchemeOption,
    StepChoice,
    check_direction,
    choose_step,
    decide_scheme,
    pilot_lambda,
    relative_gap,
    binary_step,
    resolvable,
    widen,
)

EstimatorName = Literal["auto", "sketch", "exact"]
ESTIMATOR_NAMES: tuple[str, ...] = get_args(EstimatorName)
# The law of the sketch's random directions (where orthogonal groups do not apply). Both have
# E[v v^T] = I and length sqrt(d); see _rademacher_blocks for why signs are the default.
Draws = Literal["rademacher", "gaussian"]
DirectionsKind = Literal["orthogonal", "gaussian", "rademacher", "coordinate"]
# How orthogonal directions are drawn: rows of a random-sign cosine basis (the default since schema 1.8), or
# Haar-distributed groups by CholeskyQR of Gaussian blocks (earlier reports, which reproduce that way).
OrthogonalLaw = Literal["cosine", "haar"]

# One block of perturbed inputs (float64) is kept under this size, whatever d is.
BLOCK_BYTES = 16 * 2**20
# Orthogonal direction groups need a d x min(k, d, GROUP) orthogonalisation. They only help when k is a
# sizeable fraction of d (a third less error at k = d/2, exact at k = d); for k < d/16 i.i.d.
# Gaussian directions have the same law and skip it, as they do past this many entries. Groups are
# capped so that the cost per direction, O(d * GROUP), does not grow with k: time stays linear in k.
ORTHOGONAL_MAX_ENTRIES = 4_000_000
ORTHOGONAL_MIN_FRACTION = 1 / 16
ORTHOGONAL_GROUP = 512
# Largest |Q^T Q - I| entry accepted from CholeskyQR (orthonormal_rows).
ORTHOGONALITY = 1e-12
# The witness direction needs sum_j omega_j y_j^T (d x K); skip it when that would be large.
WITNESS_MAX_ENTRIES = 20_000_000
WITNESS_MIN_RATIO = 64
JACKKNIFE_GROUPS = 20
# Bootstrap resamples' top eigenvalues: full spectra of the r x r matrices up to this rank, batched
# Lanczos beyond it (batched_top), converged to LANCZOS_TOL relative (the jackknife, whose group count
# multiplies its values' errors) or to BOOTSTRAP_TOL (the resamples, which spread by percents: 15% less
# time on EfficientNet-Lite1's JVPs, values equal to 2e-14; float32 products would take 2.5x less, but
# their 4e-7 errors would break the journal re-check's 1e-9 across BLAS builds).
DENSE_RANK = 32
LANCZOS_TOL = 1e-13
BOOTSTRAP_TOL = 1e-10
LANCZOS_MAX_STEPS = 120
LANCZOS_CHUNK = 64
# Counter sign rows per request (see direction_blocks).
COUNTER_BLOCK = 256
# Rank coordinates keep the directions whose squared singular value is above this share of the top's.
RANK_FLOOR = 1e-13
# Coordinate mode measures all d coordinates at up to this many successive steps (see coordinate_passes).
COORDINATE_PASSES = 3


@dataclass(frozen=True)
class EstimatorConfig:
    """How each sample is estimated. `step` is absolute, in input units (RMS per coordinate): with
    `adaptive_step` it is where each sample's step search starts, else the step every sample uses
    (still checked by a pilot). `step_floor` is the smallest step the input dtype resolves."""

    directions: int
    step: float
    scheme: SchemeOption = "central"
    estimator: EstimatorName = "auto"
    seed: int = 0
    bootstrap: int = 1000
    confidence: float = 0.95
    witness: bool = True
    output_dtype: str = "float32"
    input_dtype: str = "float64"
    adaptive_step: bool = True
    tau: float = 0.01
    step_floor: float = 0.0
    draws: Draws = "rademacher"
    # Where sign directions come from: numpy's PCG64 bits (formed on the host), or the counter generator,
    # whose perturbed inputs a device model forms itself (fimaudit.perturbations).
    generator: DirectionGenerator = "numpy"
    # Forward sketches use their JVPs less their mean (_measure; docs/math.md, "Centring"); False reproduces
    # reports of schema 1.6 and before, whose forward sketches used them as measured.
    centred_forward: bool = True
    orthogonal_law: OrthogonalLaw = "cosine"

    def queries_per_direction(self) -> int:
        """At most, per direction: auto's forward directions take 1 query, its central ones 2."""
        return len(SCHEME_POINTS[self.pilot_scheme()])

    def pilot_scheme(self) -> Scheme:
        """The scheme of the step search: auto's pilot is central, whose one-sided quotients come free."""
        return "central" if self.scheme == "auto" else self.scheme

    def resolve(self, d: int) -> Literal["sketch", "exact"]:
        """'auto' takes the exact coordinate mode when two of its passes (a step and its check at a
        quarter of it) cost no more queries than the sketch."""
        if self.estimator != "auto":
            return self.estimator
        return "exact" if 2 * d <= self.directions else "sketch"


@dataclass(frozen=True)
class SampleEstimate:
    """What one audited input yields; the runner adds index and identity."""

    predicted_class: int
    confidence: float
    lambda_max: float
    lambda_max_raw: float
    lambda_max_ci: tuple[float, float]
    lambda_lower: float | None
    lambda_lower_loose: bool | None
    trace: float
    stable_rank: float | None
    method: Literal["sketch", "exact"]
    directions: int
    directions_kind: DirectionsKind
    queries: int
    probabilities: np.ndarray
    resolution: float
    flags: tuple[str, ...]
    step: StepChoice
    check: DirectionCheck | None  # the step checked along the top direction (with the witness)
    step_norm: float  # the perturbation's L2 norm, step * sqrt(d) (the directions' RMS length)
    scheme: SchemeDecision | None = None  # the scheme the sketch used, and why


def estimate_sample(x: np.ndarray, index: int, cfg: EstimatorConfig) -> Generator[Request, np.ndarray, SampleEstimate]:
    """Estimate lambda_max, tr F and a witnessed lower bound for one input x (model shape)."""
    shape = x.shape
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    d = flat.size
    # The base input twice: a difference reveals nondeterministic outputs and their noise floor.
    first, again = (yield np.stack([flat, flat]).astype(cfg.input_dtype).reshape(2, *shape))
    p0 = first
    probe = ResolutionProbe(p0, cfg.output_dtype)
    probe.repeat(again)
    queries = 2
    method = cfg.resolve(d)
    fd = FiniteDifferences(flat, shape, p0, cfg.step, cfg.pilot_scheme(), probe, cfg.input_dtype)
    choice = yield from choose_step(
        fd, cfg.step, tau=cfg.tau, floor=cfg.step_floor, search=cfg.adaptive_step,
        rng=np.random.default_rng([cfg.seed, index, 2]), output_dtype=cfg.output_dtype,
    )
    queries += choice.queries
    decision = decide_scheme(
        cfg.scheme, choice, cfg.directions, forward_resolves=_forward_resolves(probe, choice), exact=method == "exact",
        centred=cfg.centred_forward,
    )
    fd, choice = _with_scheme(fd, choice, decision)
    k = d if method == "exact" else decision.directions
    # The witness aligns with the worst direction only to about k/d: below k = d/64 it says nothing.
    want_witness = witness_fits(cfg, d, p0.size) and k * WITNESS_MIN_RATIO >= d
    kind, blocks = direction_blocks(method, d, k, np.random.default_rng([cfg.seed, index]), cfg, counter_key(cfg.seed, index))
    if kind == "rademacher" and cfg.adaptive_step:
        choice = replace(choice, step=binary_step(choice.step))
    if method == "exact":
        # Coordinate directions put the whole step on one input at a time, where random pilot
        # directions spread it: a network sharply curved along a few inputs is only seen here.
        # So this mode checks its own step, pass against pass (d <= k/2 keeps it within budget).
        y_all, choice, passes = yield from coordinate_passes(fd, choice, d, cfg)
        queries += passes * d * len(SCHEME_POINTS[fd.scheme])
        witness = _coordinate_witness(y_all, d) if want_witness else None
    else:
        centre = cfg.centred_forward and fd.scheme == "forward"
        y_all, witness = yield from _measure(fd.at(choice.step), blocks, d if want_witness else 0, centre)
        queries += k * len(SCHEME_POINTS[fd.scheme])
    stats = sketch_statistics(y_all, exact=method == "exact", cfg=cfg, index=index)
    check = None
    if witness is not None:
        # Measured with the pilot's scheme: a forward sketch's bias is bounded by decide_scheme, and a
        # one-row request can take another kernel than a batch in some runtimes (last-bit differences
        # by batching), so the witness keeps central differences' two rows.
        check = yield from check_direction(
            replace(fd, scheme=cfg.pilot_scheme()).at(choice.step), witness(stats.top_vector),
            floor=cfg.step_floor, output_dtype=cfg.output_dtype,
        )
        queries += check.queries if check is not None else 0
        choice = _after_check(choice, check)
    lower = check.lower if check is not None else None
    level, flags = probe.resolution(choice.step, RESOLUTION_FACTOR[fd.scheme])
    step_norm = choice.step * float(np.sqrt(d))
    if stats.lambda_max <= level:
        # Nothing above the output resolution: report the level itself as an upper bound, which
        # is the conservative figure for a certificate, and say so.
        flags.append("below_resolution")
        stats = replace(stats, lambda_max=level, ci=(0.0, level))
    else:
        flags += step_flags(choice, step_norm, stats.lambda_max, cfg.tau)
        stats = replace(stats, ci=widen(stats.ci, stats.lambda_max, choice, float(np.sqrt(level / stats.lambda_max))))
    return SampleEstimate(
        predicted_class=int(np.argmax(p0)),
        confidence=float(np.max(p0)),
        lambda_max=stats.lambda_max,
        lambda_max_raw=stats.lambda_raw,
        lambda_max_ci=stats.ci,
        lambda_lower=lower,
        lambda_lower_loose=None if lower is None else bool(lower < 0.5 * stats.lambda_max),
        trace=stats.trace,
        # trace >= lambda_max for any PSD matrix: where the estimates say otherwise (both at the
        # resolution floor, or Hutchinson noise on a rank-one F) the ratio means nothing.
        stable_rank=stats.trace / stats.lambda_max if 0 < stats.lambda_max <= stats.trace else None,
        method=method,
        directions=k,
        directions_kind=kind,
        queries=queries,
        probabilities=p0,
        resolution=level,
        flags=tuple(flags),
        step=choice,
        check=check,
        step_norm=step_norm,
        scheme=decision,
    )


def _forward_resolves(probe: ResolutionProbe, choice: StepChoice) -> bool:
    """Whether forward JVPs at the chosen step stand above output rounding (as differences.resolvable
    asks of each smaller step): the pilot's trace there against forward's resolution level."""
    lam = next((lam for h, lam, _ in choice.trials if h == choice.step), None)
    if lam is None or choice.pilot_rank is None:
        return False
    level, _ = probe.resolution(choice.step, RESOLUTION_FACTOR["forward"])
    return lam * choice.pilot_rank > NOISE_MARGIN * level


def _with_scheme(
    fd: FiniteDifferences, choice: StepChoice, decision: SchemeDecision
) -> tuple[FiniteDifferences, StepChoice]:
    """The differences the sketch uses; a forward sketch's step error includes its bias bound (half of
    it in JVP terms: widen() moves lambda_max by (1 +- e)^2), so the interval covers the bias."""
    if decision.scheme == fd.scheme:
        return fd, choice
    fd = replace(fd, scheme=decision.scheme)
    if decision.bias is None:
        return fd, choice
    return fd, replace(choice, error=max(choice.error, decision.bias / 2))


# The witness direction sum_j (u . y_j) omega_j for the top vector u of the JVPs' Gram matrix.
Witness = Callable[[np.ndarray], np.ndarray]


def _measure(
    fd: FiniteDifferences, blocks: Iterator[np.ndarray | SignBits | SignRows], witness_d: int, centre: bool = False,
) -> Generator[Request, np.ndarray, tuple[np.ndarray, Witness | None]]:
    """All k JVPs (rows; with `centre`, less their mean and scaled by centre_scale), and the witness when
    witness_d > 0 (from the rows as returned)."""
    cross = np.zeros((fd.p.size, witness_d)) if witness_d else None  # K x d: row-major products are fast
    total = np.zeros(witness_d) if witness_d and centre else None  # sum of the directions, to centre the witness
    rows: list[np.ndarray] = []
    counter: list[SignRows] = []
    for block in blocks:
        y = yield from fd.jvp(block)
        rows.append(y)
        if isinstance(block, SignRows):
            counter.append(block)  # regenerated for the witness: the host never formed these directions
        elif cross is not None:
            # Accumulates Y^T Omega so the witness needs no regeneration; in the directions' dtype
            # (float32 signs: a direction to query along needs no more precision than that).
            dense = block.signs() if isinstance(block, SignBits) else block
            cross += y.T.astype(dense.dtype) @ dense
            if total is not None:
                total += dense.sum(axis=0)
    y_all = np.concatenate(rows, axis=0)
    mean = y_all.mean(axis=0) if centre else None
    y_used = (y_all - mean) * centre_scale(len(y_all)) if mean is not None else y_all
    if cross is None:
        return y_used, None
    if counter:
        every = SignRows(counter[0].key, counter[0].start, counter[-1].stop, witness_d)
        return y_used, lambda u: every.combine(y_used @ u)
    if mean is None or total is None:
        return y_used, lambda u: u @ cross
    # sum_j (u . (y_j - mean)) omega_j (the scale only lengthens the witness, whose length does not matter).
    return y_used, lambda u: u @ cross - (u @ mean) * total


def centre_scale(k: int) -> float:
    """sqrt(k / (k - 1)): centred rows so scaled give Y^T Y / k the sample covariance's 1 / (k - 1)."""
    return math.sqrt(k / (k - 1)) if k > 1 else 1.0


def _coordinate_witness(y_all: np.ndarray, d: int) -> Witness:
    """Coordinate mode's witness: Omega = sqrt(d) I, so sum_j (u . y_j) omega_j = sqrt(d) Y u."""
    return lambda u: (y_all @ u) * np.sqrt(d)


def _after_check(choice: StepChoice, check: DirectionCheck | None) -> StepChoice:
    """The step choice in the light of the check along the sketch's top direction: a step that
    the pilot's random directions accepted but that is inaccurate along it is flagged, and the
    interval widened by that error."""
    if check is None or check.error is None or check.error <= DIRECTION_ERROR:
        return choice
    return replace(choice, converged=False, error=max(choice.error, check.error))


def coordinate_passes(
    fd: FiniteDifferences, choice: StepChoice, d: int, cfg: EstimatorConfig
) -> Generator[Request, np.ndarray, tuple[np.ndarray, StepChoice, int]]:
    """A from the d coordinate directions at the pilot's step h, then at h/4 (and h/16 if need be):
    the first pass that agrees with the one before is used (its error is about the gap / 15 for
    central differences). Returns (A's rows, the step choice, the number of passes)."""
    per_block = directions_per_block(d, cfg)
    h = choice.step
    prev, _ = yield from _measure(fd.at(h), _coordinate_blocks(d, per_block), 0)
    passes, best = 1, (math.inf, h, prev)
    tried: tuple[tuple[float, float, int], ...] = ((h, pilot_lambda(prev), d),)
    while passes < (COORDINATE_PASSES if choice.searched else 2):
        smaller = h / STEP_RATIO
        if not resolvable(prev, smaller, fd.probe, fd, cfg.step_floor):
            break
        cur, _ = yield from _measure(fd.at(smaller), _coordinate_blocks(d, per_block), 0)
        passes += 1
        tried += ((smaller, pilot_lambda(cur), d),)
        gap = relative_gap(prev, cur)
        error = gap / (STEP_RATIO ** SCHEME_ORDER[fd.scheme] - 1)
        agreed = gap <= MAX_DISAGREEMENT and error <= ERROR_TARGET
        if not choice.searched:  # a given step is kept, and only checked
            return best[2], replace(choice, error=error + gap, converged=agreed, trials=choice.trials + tried), passes
        if agreed:
            return cur, replace(choice, step=smaller, error=error, converged=True, trials=choice.trials + tried), passes
        if gap < best[0]:
            best = (gap, smaller, cur)
        h, prev = smaller, cur
    if passes == 1:  # no smaller step resolves: the pilot's verdict stands
        return prev, replace(choice, trials=choice.trials + tried), passes
    gap, step, rows = best
    return rows, replace(choice, step=step, error=gap, converged=False, trials=choice.trials + tried), passes


def step_flags(choice: StepChoice, step_norm: float, lam: float, tau: float) -> list[str]:
    """step_unconverged: no two steps agreed; step_nonlocal: the step is not small against ε_τ;
    nondifferentiable: the one-sided quotients disagree at every step (max-pool ties, ReLU at 0)."""
    flags = [] if choice.converged else ["step_unconverged"]
    if choice.kink is not None:
        flags.append("nondifferentiable")
    if step_norm > np.sqrt(2 * tau / lam) / LOCALITY:
        flags.append("step_nonlocal")
    return flags


def direction_blocks(
    method: str, d: int, k: int, rng: np.random.Generator, cfg: EstimatorConfig, key: tuple[int, int] | None = None,
) -> tuple[DirectionsKind, Iterator[np.ndarray | SignBits | SignRows]]:
    """The k directions (rows, E[v v^T] = I) in memory-bounded blocks, seeded by rng; with the counter
    generator, sign directions are SignRows of `key` (counter_key(seed, index)), formed where the model runs."""
    per_block = directions_per_block(d, cfg)
    if method == "exact":
        return "coordinate", _coordinate_blocks(d, per_block)
    if d * min(k, d, ORTHOGONAL_GROUP) <= ORTHOGONAL_MAX_ENTRIES and k >= ORTHOGONAL_MIN_FRACTION * d:
        if cfg.orthogonal_law == "cosine":
            return "orthogonal", _cosine_blocks(rng, d, k, per_block)
        return "orthogonal", _orthogonal_blocks(rng, d, k, per_block)
    if cfg.draws == "rademacher" and cfg.generator == "counter" and key is not None:
        # Rows are described, not held: blocks need not shrink with d (the engine forms at most a batch at
        # once where the host forms them), and the split never changes a row.
        return "rademacher", (SignRows(key, lo, min(k, lo + COUNTER_BLOCK), d) for lo in range(0, k, COUNTER_BLOCK))
    if cfg.draws == "rademacher":
        return "rademacher", _rademacher_blocks(rng, d, k, per_block)
    return "gaussian", _gaussian_blocks(rng, d, k, per_block)


def directions_per_block(d: int, cfg: EstimatorConfig) -> int:
    """Directions per request, so that one block of perturbed inputs stays under BLOCK_BYTES."""
    return max(1, min(256, BLOCK_BYTES // (8 * d * cfg.queries_per_direction())))


def sample_memory(d: int, classes: int, cfg: EstimatorConfig) -> int:
    """Bytes one sample in flight holds at most: its block, its input and base arrays, the witness (K x d,
    only where estimate_sample forms one: counted for a 1000-class 3x240x240 model, it had held such an
    audit to two samples in flight)."""
    block = directions_per_block(d, cfg) * d * (8 + 8 * cfg.queries_per_direction())
    witness = 8 * classes * d if witness_fits(cfg, d, classes) else 0
    return block + 32 * d + witness


def witness_fits(cfg: EstimatorConfig, d: int, classes: int) -> bool:
    """Whether a sample may form its witness (K x d floats): asked for, and not too large."""
    return cfg.witness and d * classes <= WITNESS_MAX_ENTRIES


def _coordinate_blocks(d: int, per_block: int) -> Iterator[np.ndarray]:
    scale = np.sqrt(d)
    for start in range(0, d, per_block):
        stop = min(d, start + per_block)
        block = np.zeros((stop - start, d))
        block[np.arange(stop - start), np.arange(start, stop)] = scale
        yield block


def _orthogonal_blocks(rng: np.random.Generator, d: int, k: int, per_block: int) -> Iterator[np.ndarray]:
    """Groups of min(k, d, ORTHOGONAL_GROUP) orthonormal rows scaled by sqrt(d): Haar-distributed,
    exact at k = d when d <= ORTHOGONAL_GROUP."""
    done = 0
    while done < k:
        size = min(k - done, d, ORTHOGONAL_GROUP)
        group = orthonormal_rows(rng.standard_normal((d, size)))
        group *= np.sqrt(d)
        for start in range(0, size, per_block):
            yield group[start : start + per_block]
        done += size


def _cosine_blocks(rng: np.random.Generator, d: int, k: int, per_block: int) -> Iterator[np.ndarray]:
    """Groups of min(k, d) rows +-sqrt(d) s * c_i: one random sign vector s per group, a random sign per row, and
    the orthonormal DCT-II basis vectors c_i of distinct random frequencies i. Rows of the orthogonal matrix
    sqrt(d) diag(s) C^T are exactly orthogonal, of length sqrt(d), and exact at k = d for any d; with i uniform,
    E[c_i c_i^T] = I/d, so E[v v^T] = I whatever s is. The signs make u . v a Rademacher sum with weights at most
    sqrt(2) |u_j| for any fixed unit u, so no direction of F is hidden from the sketch (the randomised-transform
    argument of SRHT sketches). Each row costs O(d log d), where a Haar group's CholeskyQR costs O(d x group) per row
    and its Gaussian draws d more: 512 directions at d = 3,072 take 9 ms against 82 (docs/math.md)."""
    done = 0
    while done < k:
        size = min(k - done, d)
        signs = _random_signs(rng, d) * np.sqrt(d)
        freqs = rng.permutation(d)[:size]
        # A random sign per row as well: the sum of a whole basis, C^T 1, peaks at one coordinate, so without
        # them a group's mean row would too, and centred forward sketches (which subtract the rows' mean) would
        # lose that coordinate's share; with them the mean is a random-sign sum, spread like an i.i.d. mean.
        flips = _random_signs(rng, size)
        for start in range(0, size, per_block):
            chosen = freqs[start : start + per_block]
            rows = np.zeros((len(chosen), d))
            rows[np.arange(len(chosen)), chosen] = flips[start : start + per_block]
            rows = scipy.fft.idct(rows, type=2, norm="ortho", axis=1)  # row i: the basis vector c_i
            rows *= signs
            yield rows
        done += size


def _random_signs(rng: np.random.Generator, n: int) -> np.ndarray:
    """n independent +-1 (float64), each with probability 1/2."""
    return rng.integers(0, 2, n) * -2.0 + 1.0


def orthonormal_rows(a: np.ndarray) -> np.ndarray:
    """Q^T, C-contiguous, for a = QR with R's diagonal positive: for Gaussian a, Haar-distributed rows
    (the directions, each row contiguous so that forming inputs from it streams through memory).

    CholeskyQR (Q^T = L^-1 a^T, L the Cholesky factor of a^T a) is all matrix products, which stay fast
    when the model's threads share the cores; Householder QR (np.linalg.qr) ran 5-10x slower then, and a
    triangular solve 3x slower than the product with L^-1. Its Q is the same factor (positive-diagonal
    QR is unique); one pass loses orthogonality like cond(a)^2 u, so Q^T Q is checked and a second
    pass taken where it is off by more than ORTHOGONALITY (tall Gaussian blocks are well conditioned:
    one pass is the rule). Square unlucky draws can make Cholesky fail, and then QR decides.
    """
    eye = np.eye(a.shape[1])
    rows, gram = a.T, a.T @ a
    try:
        for _ in range(2):
            lower = np.linalg.cholesky(gram)
            rows = scipy.linalg.solve_triangular(lower, eye, lower=True) @ rows
            gram = rows @ rows.T
            if np.abs(gram - eye).max() < ORTHOGONALITY:
                return rows
    except np.linalg.LinAlgError:
        pass
    q, r = np.linalg.qr(a)
    return np.ascontiguousarray((q * np.sign(np.diag(r))).T)


def _rademacher_blocks(rng: np.random.Generator, d: int, k: int, per_block: int) -> Iterator[SignBits]:
    """Rows of independent random signs. Like Gaussian rows they have E[v v^T] = I, so Y Y^T / k
    estimates A A^T and Hutchinson's trace is unbiased, and every row has length sqrt(d) exactly. For
    a unit vector u, Var (u.v)^2 is 2(1 - sum u_i^4) against Gaussian's 2: never worse, so the sketch's
    error law (docs/math.md) holds. They are drawn as bits, about 100x cheaper than normals, which
    were the largest share of the audit's own arithmetic (docs/benchmarks/arithmetic.md).
    All k rows' bits are drawn at once (k d / 8 bytes), so the block size never changes them; they stay
    bits (a byte per coordinate), from which the inputs are formed (Perturbations.form_into)."""
    width = -(-d // 8)
    packed = np.frombuffer(rng.bytes(k * width), dtype=np.uint8).reshape(k, width)
    for start in range(0, k, per_block):
        yield SignBits(np.unpackbits(packed[start : start + per_block], axis=1, count=d).view(bool))


def _gaussian_blocks(rng: np.random.Generator, d: int, k: int, per_block: int) -> Iterator[np.ndarray]:
    # numpy's Generator fills arrays from one stream, so the block size never changes the values.
    # float64 draws: a trial of float32 ones (a third of the cost) coincided with interval coverage
    # falling to 82-92% at d = 50,176 in benchmarks/accuracy_sweep.py; not kept until understood.
    for start in range(0, k, per_block):
        yield rng.standard_normal((min(per_block, k - start), d))


@dataclass(frozen=True)
class SketchStatistics:
    lambda_max: float
    lambda_raw: float
    ci: tuple[float, float]
    trace: float
    top_vector: np.ndarray


def sketch_statistics(y: np.ndarray, *, exact: bool, cfg: EstimatorConfig, index: int) -> SketchStatistics:
    """lambda_max(Y^T Y / k) with jackknife bias correction and a bootstrap interval.

    Rows of y are A omega_j. In exact (coordinate) mode Y^T Y / d = A A^T and no resampling applies.
    Every eigenproblem is solved in the smaller of two forms (sketch_rows), so a 1000-class model
    never costs K x K ones.
    """
    k = len(y)
    rows, top_vector, top_singular = sketch_rows(y)
    raw = top_singular**2 / k  # lambda_max(Y^T Y / k)
    trace = float(np.sum(y * y)) / k
    if exact or k < 2:
        return SketchStatistics(raw, raw, (raw, raw), trace, top_vector)
    corrected = max(jackknife(rows, raw), 0.0)
    boot = bootstrap_lambdas(rows, cfg.bootstrap, np.random.default_rng([cfg.seed, index, 1]))
    alpha = (1 - cfg.confidence) / 2
    low, high = (float(q) for q in np.quantile(boot, [alpha, 1 - alpha]))
    # Two intervals that fail in opposite regimes, joined. The percentile interval centred on the
    # jackknife estimate covers a separated top eigenvalue; for a (near-)degenerate top, lambda_max's
    # upward bias is O(1/sqrt(k)), beyond the jackknife, and only the basic interval (reflected about
    # the raw estimate, which subtracts the bootstrap's own bias) covers it. Measured coverage of the
    # union is in docs/math.md.
    shift = corrected - raw
    ci = (max(min(low + shift, 2 * raw - high), 0.0), max(high + shift, 2 * raw - low, 0.0))
    return SketchStatistics(corrected, raw, ci, trace, top_vector)


@dataclass(frozen=True)
class RankRows:
    """A sketch's rows y_j as us = U S, their coordinates in the rank-r basis of y = U S V^T: every
    weighted sum sum_j w_j y_j y_j^T has the spectrum of us^T diag(w) us (r x r). Each Lanczos step
    costs two (reps x k x r) products: the cheaper form where r < k / 2 (few classes)."""

    us: np.ndarray

    @property
    def count(self) -> int:  # k, the rows
        return len(self.us)

    @functools.cached_property
    def outer(self) -> np.ndarray:
        """(k, r * r): each row's outer product, for the dense spectra (once for the jackknife and bootstrap)."""
        k, r = self.us.shape
        return (self.us[:, :, None] * self.us[:, None, :]).reshape(k, r * r)

    @property
    def rank(self) -> int:  # r, the size of each eigenproblem
        return int(self.us.shape[1])

    def tops(self, weights: np.ndarray, tol: float) -> np.ndarray:
        """lambda_max(sum_j w_j y_j y_j^T) for every row w of `weights`."""
        r = self.rank
        if r == 0:
            return np.zeros(len(weights))
        if r <= DENSE_RANK:
            return np.linalg.eigvalsh((weights @ self.outer).reshape(len(weights), r, r))[:, -1]
        return batched_top(self.us, weights, tol=tol)


@dataclass(frozen=True)
class GramRows:
    """A sketch's rows as their Gram matrix G = Y Y^T (k x k) and its top eigenvector u0: sum_j w_j y_j y_j^T
    = Y^T W Y has the nonzero spectrum of W^(1/2) G W^(1/2). Each Lanczos step costs one (reps x k x k)
    product, half the rank form's where r > k / 2 (EfficientNet-Lite1: 28-50 against 67-95 ms an input,
    docs/benchmarks/statistics_forms.md)."""

    gram: np.ndarray
    u0: np.ndarray

    @property
    def count(self) -> int:
        return len(self.gram)

    @property
    def rank(self) -> int:  # at most k: the size of each eigenproblem
        return len(self.gram)

    def tops(self, weights: np.ndarray, tol: float) -> np.ndarray:
        """lambda_max(sum_j w_j y_j y_j^T) for every row w of `weights`."""
        roots = np.sqrt(weights)
        # From W^(1/2) u0, the image of the unweighted top direction: near every resample's top vector.
        start = roots * self.u0
        lost = ~start.any(axis=1)  # u0 lies on rows this weighting drops
        start[lost] = roots[lost]
        start /= np.linalg.norm(start, axis=1, keepdims=True)
        return lanczos_tops(lambda q, s: ((q * s) @ self.gram) * s, roots, start, tol)


def sketch_rows(y: np.ndarray) -> tuple[RankRows | GramRows, np.ndarray, float]:
    """(the rows in the form whose Lanczos steps cost less, the top right singular vector of y, the top
    singular value)."""
    k, classes = y.shape
    if k <= DENSE_RANK or 2 * classes <= k:
        us, top_vector, top_singular = _rank_coordinates(y)
        return RankRows(us), top_vector, top_singular
    gram = y @ y.T
    value, u0 = _top_pair(gram) if gram.any() else (0.0, np.zeros(k))
    if value <= 0:
        return RankRows(np.zeros((k, 0))), np.eye(classes)[0], 0.0
    s0 = float(np.sqrt(value))
    return GramRows(gram, u0), y.T @ u0 / s0, s0


def _top_pair(gram: np.ndarray) -> tuple[float, np.ndarray]:
    """The top eigenpair of a symmetric positive semi-definite matrix: ARPACK from a fixed start (3 ms at
    512 x 512 against 15 for LAPACK's subset), LAPACK if ARPACK does not converge."""
    try:
        values, vectors = scipy.sparse.linalg.eigsh(gram, k=1, which="LA", v0=np.ones(len(gram)), tol=0)
        return float(values[0]), vectors[:, 0]
    except scipy.sparse.linalg.ArpackNoConvergence:
        values, vectors = scipy.linalg.eigh(gram, subset_by_index=[len(gram) - 1, len(gram) - 1])
        return float(values[0]), vectors[:, 0]


def _rank_coordinates(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(U S restricted to the non-negligible singular values, the top right singular vector, the top
    singular value) of y = U S V^T: y's rows in an r-dimensional basis where every Gram matrix of a
    subset of rows keeps its spectrum.

    From the eigenvectors of the smaller Gram matrix (y y^T or y^T y) rather than an SVD: 6 ms against
    30 ms at 256 x 1000 (a 1000-class model). Squaring costs the small singular values their relative
    precision, so directions under RANK_FLOOR of the top eigenvalue are dropped: they move any
    eigenvalue of a resample by under 1e-13 relative."""
    k, classes = y.shape
    gram = y @ y.T if k <= classes else y.T @ y
    values, vectors = np.linalg.eigh(gram)
    values, vectors = values[::-1], vectors[:, ::-1]  # descending: column 0 is the top direction
    if not values.size or values[0] <= 0:
        top = np.zeros(classes)
        top[0] = 1.0
        return np.zeros((k, 0)), top, 0.0
    keep = values > values[0] * RANK_FLOOR
    s0 = float(np.sqrt(values[0]))
    if k <= classes:  # vectors are U: U S directly, and v_0 = y^T u_0 / s_0
        return vectors[:, keep] * np.sqrt(values[keep]), (y.T @ vectors[:, 0]) / s0, s0
    return y @ vectors[:, keep], vectors[:, 0], s0  # vectors are V: y V = U S


def jackknife(rows: RankRows | GramRows, full: float) -> float:
    """Delete-a-group jackknife: removes the O(1/k) upward bias of lambda_max(Y^T Y / k)."""
    k = rows.count
    if rows.rank == 0:
        return full
    groups = np.array_split(np.arange(k), min(k, JACKKNIFE_GROUPS))
    # Each leave-a-group-out matrix is the weighted sum with w zero on the group: all groups at once.
    weights = np.zeros((len(groups), k))
    for row, group in zip(weights, groups):
        row[:] = 1.0 / (k - len(group))
        row[group] = 0.0
    n = len(groups)
    return n * full - (n - 1) * float(np.mean(rows.tops(weights, LANCZOS_TOL)))


def bootstrap_lambdas(rows: RankRows | GramRows, reps: int, rng: np.random.Generator) -> np.ndarray:
    """lambda_max of Y*^T Y* / k for `reps` resamples (with replacement) of the rows of y: the weighted
    sums with w = c / k, c multinomial counts."""
    k, r = rows.count, rows.rank
    if r == 0:
        return np.zeros(reps)
    reps = int(min(reps, max(200, 5e8 // max(1, k * r * r))))
    counts = resample_counts(k, reps, rng)
    return rows.tops(counts / k, BOOTSTRAP_TOL)


def resample_counts(k: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, k) Multinomial(k, 1/k) counts: how often each row is drawn in each resample, as the
    histogram of k uniform row indices. The same law as rng.multinomial, about 6x faster."""
    picks = rng.integers(0, k, size=(reps, k)) + k * np.arange(reps)[:, None]
    return np.bincount(picks.ravel(), minlength=reps * k).reshape(reps, k).astype(np.float64)


def batched_top(us: np.ndarray, weights: np.ndarray, *, tol: float = LANCZOS_TOL) -> np.ndarray:
    """Top eigenvalue of us^T diag(w) us for every row w of `weights` (reps x k), from e_0, the top
    eigenvector of the un-resampled matrix diag(s^2) in rank coordinates, near every resample's."""
    start = np.zeros((len(weights), us.shape[1]))
    start[:, 0] = 1.0
    return lanczos_tops(lambda q, w: ((q @ us.T) * w) @ us, weights, start, tol)


def lanczos_tops(
    apply: Callable[[np.ndarray, np.ndarray], np.ndarray], params: np.ndarray, start: np.ndarray, tol: float = LANCZOS_TOL,
) -> np.ndarray:
    """Top eigenvalue of the symmetric operator q -> apply(q, p) for every row p of `params`, by Lanczos
    run on all of them at once from the unit rows of `start`: never the matrices, whose products and full
    spectra cost 0.9 s an input for a 1000-class model (r = 256), against ~0.05 s here. Every Lanczos
    vector is kept and re-orthogonalised against twice, so the Ritz values are those of exact arithmetic.
    It stops when each top Ritz value (a lower bound that only grows) moved by under `tol` relative twice
    running, and after n steps (the operator's size) it is exact."""
    if len(params) > LANCZOS_CHUNK:  # bounds the kept vectors' memory: chunk x steps x n
        parts = [lanczos_tops(apply, params[i : i + LANCZOS_CHUNK], start[i : i + LANCZOS_CHUNK], tol)
                 for i in range(0, len(params), LANCZOS_CHUNK)]
        return np.concatenate(parts)
    reps, n = start.shape
    steps = min(n, LANCZOS_MAX_STEPS)
    basis = np.empty((reps, steps, n))  # only the steps taken are written and read
    q = start
    alphas, betas = np.zeros((reps, n)), np.zeros((reps, n))
    top, calm = np.zeros(reps), 0
    for j in range(steps):
        basis[:, j] = q
        z = apply(q, params)
        alphas[:, j] = np.einsum("br,br->b", z, q)
        for _ in range(2):  # removes alpha q_j and beta q_(j-1) with the rest: full re-orthogonalisation
            z -= np.einsum("bjr,bj->br", basis[:, : j + 1], np.einsum("bjr,br->bj", basis[:, : j + 1], z))
        theta = _tridiagonal_top(alphas[:, : j + 1], betas[:, :j])
        calm = calm + 1 if j and np.all(theta - top <= tol * np.abs(theta)) else 0
        top = theta
        if calm >= 2 or j == n - 1:
            return top
        betas[:, j] = np.linalg.norm(z, axis=1)
        # A vanishing residual means an invariant subspace: that row's value is already exact.
        live = betas[:, j] > 1e-13 * np.maximum(np.abs(alphas[:, : j + 1]).max(axis=1), 1e-300)
        betas[:, j] = np.where(live, betas[:, j], 0.0)
        q = np.where(live[:, None], z / np.where(live, betas[:, j], 1.0)[:, None], 0.0)
    # Not converged within LANCZOS_MAX_STEPS (a spectrum crowded at the top): ARPACK, one at a time.
    return np.array([_arpack_top(apply, p, v) for p, v in zip(params, start)])


def _arpack_top(apply: Callable[[np.ndarray, np.ndarray], np.ndarray], p: np.ndarray, start: np.ndarray) -> float:
    """Top eigenvalue of q -> apply(q, p) by ARPACK's Lanczos on matrix-vector products, from `start`."""
    n = len(start)
    op = scipy.sparse.linalg.LinearOperator((n, n), matvec=lambda v: apply(v[None, :], p[None, :])[0], dtype=np.float64)
    return float(scipy.sparse.linalg.eigsh(op, k=1, which="LA", v0=start, tol=1e-12, return_eigenvectors=False)[0])


def _tridiagonal_top(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Largest eigenvalue of each symmetric tridiagonal matrix (diagonal alphas[b], off-diagonal betas[b])."""
    n = alphas.shape[1]
    t = np.zeros((len(alphas), n, n))
    index = np.arange(n)
    t[:, index, index] = alphas
    t[:, index[1:], index[:-1]] = betas
    t[:, index[:-1], index[1:]] = betas
    return np.linalg.eigvalsh(t)[:, -1]
