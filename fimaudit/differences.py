"""Finite-difference Jacobian-vector products A v from probabilities, and the choice of their step.

A difference quotient is a secant. On real trained networks a step sized from the data's spread
(the textbook rule) is tens of times larger than the radius over which the network is close to
linear, and the secant then reads λ_max up to 79% low (docs/math.md, "Choosing the step"). So the
step is chosen per input, by a pilot of a few directions measured at successive steps h, h/4,
h/16, ...: the first step whose JVPs agree with those at the step 4x larger is in the local regime
(its own error is about 1/(4^p - 1) of the disagreement for a scheme of order p). The search starts
no larger than a fraction of the radius ε_τ the pilot implies, and stops before the output's
rounding or the input's precision would dominate. Where no pair agrees, the sample is flagged and
its interval widened by the disagreement.
"""
from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np

from fimaudit.diagnostics import COMPLEMENT_ABOVE, ResolutionProbe
from fimaudit.perturbations import Directions, Perturbations, Request, SignEnds

Scheme = Literal["central", "forward", "richardson"]
# What the user asks for: a scheme, or "auto" (central pilot; forward where it is unbiased, see decide_scheme).
SchemeOption = Literal["auto", "central", "forward", "richardson"]
SCHEME_OPTIONS: tuple[str, ...] = get_args(SchemeOption)

# Finite-difference evaluation points per direction, as multiples of the step h.
SCHEME_POINTS: dict[str, tuple[float, ...]] = {
    "central": (1.0, -1.0),
    "forward": (1.0,),
    "richardson": (1.0, -1.0, 0.5, -0.5),
}
# Order p of each scheme's truncation error O(h^p).
SCHEME_ORDER = {"central": 2, "forward": 1, "richardson": 4}
# Scales the central-difference resolution level to each scheme (see diagnostics.resolution).
RESOLUTION_FACTOR = {"central": 1.0, "forward": 4.0, "richardson": 9.0}

# The pilot: 3 directions at up to 4 steps is 24 queries with central differences, 4.7% of the
# 516 an input costs at k = 256 (and 1.2% at k = 1024).
PILOT_DIRECTIONS = 3
PILOT_STEPS = 4
STEP_RATIO = 4.0
# The step's L2 norm must stay under ε_τ / LOCALITY (else the sample is flagged step_nonlocal);
# the search aims at ε_τ / (2 LOCALITY) so that a pilot reading λ_max up to 4x low still passes.
LOCALITY = 10.0
# Two steps agree when their JVPs differ by at most MAX_DISAGREEMENT (relative, Frobenius) and the
# smaller step's own truncation error, estimated from that difference, is at most ERROR_TARGET
# (about 2x that in λ_max: 2%, under the sketch's 4.4% at k = 1024).
MAX_DISAGREEMENT = 0.1
ERROR_TARGET = 0.01
# Stop shrinking the step once output rounding would reach 1/NOISE_MARGIN of the pilot's signal,
# or once the step comes within INPUT_MARGIN of the input dtype's resolution (input rounding then
# perturbs the direction by up to an eighth per coordinate; the pair's comparison shows its effect).
NOISE_MARGIN = 10.0
INPUT_MARGIN = 4.0
# One-sided quotients that disagree by more than this, relative, without shrinking as the step does,
# mark a point where the model has no derivative (see kink_figure).
KINK_LIMIT = 0.05
KINK_WIDENING = 2.0
# Clamp probabilities before the log: a class whose probability underflows contributes
# sqrt(p) * (log difference) ~ 0 to A v anyway.
_TINY = np.finfo(np.float64).tiny


def log_probabilities(p: np.ndarray, complement: int | None = None) -> np.ndarray:
    """log p over the last axis; the `complement` class's as log(1 - sum of the others), which
    rounds like the others (see diagnostics.COMPLEMENT_ABOVE)."""
    logs = np.log(np.maximum(p, _TINY))
    if complement is not None:
        rest = np.delete(p, complement, axis=-1).sum(axis=-1)
        # Only where the others stay small: after a large step the top class may have lost its lead.
        small = rest < 1 - COMPLEMENT_ABOVE
        logs[..., complement] = np.where(small, np.log1p(-np.where(small, rest, 0.0)), logs[..., complement])
    return logs


@dataclass(frozen=True)
class OneSided:
    """How the one-sided quotients of m directions disagree. With e_j = (D+ - D-)/2 the part of a forward
    quotient that is even in v (the central one is the odd part):

    - `disagreement` ||D+ - D-|| / ||D+ + D-|| = ||e|| / ||Dc||: shrinks like h where the model is
      differentiable; at a kink (a max-pool tie, a ReLU at exactly 0) it does not;
    - `spread` the same with each e_j less their mean (sample standard deviation over the m, None for m < 2):
      what is left of e once forward JVPs are centred (see decide_scheme)."""

    disagreement: float
    spread: float | None

    @staticmethod
    def of(up: np.ndarray, down: np.ndarray) -> OneSided | None:
        """From the rows h D+ and h D- (one per direction; the factor h cancels)."""
        even, odd = up - down, up + down
        total = float(np.linalg.norm(odd))
        if total == 0:
            return None
        m = len(even)
        spread = float(np.linalg.norm(even - even.mean(axis=0))) * math.sqrt(m / (m - 1)) / total if m > 1 else None
        return OneSided(float(np.linalg.norm(even)) / total, spread)


@dataclass(frozen=True)
class FiniteDifferences:
    """One input and its base outputs: turns directions into finite-difference JVPs A v at `step`."""

    flat: np.ndarray
    shape: tuple[int, ...]
    p: np.ndarray
    step: float
    scheme: Scheme
    probe: ResolutionProbe
    dtype: str = "float64"
    # x cast to the input dtype, shared by the copies at() and replace() make (not a field of equality).
    _origin: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    # Perturbations.signed, shared by every request of this input.
    _signed: dict[tuple[str, float], SignEnds | None] = field(default_factory=dict, compare=False, repr=False)

    def at(self, step: float, probe: ResolutionProbe | None = None) -> FiniteDifferences:
        return replace(self, step=step, probe=self.probe if probe is None else probe)

    def jvp(self, directions: Directions) -> Generator[Request, np.ndarray, np.ndarray]:
        """Rows A v_j for the rows v_j of `directions` (b, d), from perturbed queries."""
        y, _ = yield from self.jvp_and_asymmetry(directions)
        return y

    def jvp_and_asymmetry(
        self, directions: Directions
    ) -> Generator[Request, np.ndarray, tuple[np.ndarray, OneSided | None]]:
        """The JVPs, and how the one-sided quotients D+ = (l(x+hv) - l(x))/h and D- = (l(x) - l(x-hv))/h
        disagree (free with central differences; None for forward ones, see OneSided)."""
        b = len(directions)
        points = SCHEME_POINTS[self.scheme]
        probs = yield self._inputs(directions, points)
        parts = [probs[i * b : (i + 1) * b] for i in range(len(points))]
        self.probe.pairs(parts[0], parts[1] if len(parts) > 1 else np.broadcast_to(self.p, parts[0].shape))
        if len(parts) == 4:  # Richardson: the h/2 pair carries the largest weight
            self.probe.pairs(parts[2], parts[3])
        top = self.probe.complement  # the probe's base is self.p: the class its pair counts leave out
        logs = [log_probabilities(part, top) for part in parts]
        base = log_probabilities(self.p, top)
        h = self.step
        if self.scheme == "forward":
            deriv = (logs[0] - base) / h
        elif self.scheme == "central":
            deriv = (logs[0] - logs[1]) / (2 * h)
        else:  # Richardson: the h^2 terms of central differences at h and h/2 cancel
            deriv = (4 * (logs[2] - logs[3]) / h - (logs[0] - logs[1]) / (2 * h)) / 3
        root = np.sqrt(self.p)
        if self.scheme == "forward":
            return deriv * root, None
        return deriv * root, OneSided.of((logs[0] - base) * root, (base - logs[1]) * root)

    def _inputs(self, directions: Directions, points: tuple[float, ...]) -> Request:
        """x + s h v for each point s and direction v (point-major), as a request: formed by the engine
        into the batch it is sent in, or by the model where it runs (fimaudit.perturbations). They are
        formed in the model's dtype: x + (h v) is rounded to it once more than in float64, within its
        resolution, which the step already keeps clear of (INPUT_MARGIN)."""
        scales = tuple(s * self.step for s in points)
        return Perturbations(self.origin(), self.shape, scales, directions, dtype=self.dtype, signed=self._signed)

    def origin(self) -> np.ndarray:
        """x in the input dtype, cast once per input and shared by every request (never written to)."""
        cast = self._origin.get(self.dtype)
        if cast is None:
            cast = self._origin[self.dtype] = self.flat.astype(self.dtype)
            cast.flags.writeable = False
        return cast


@dataclass(frozen=True)
class StepChoice:
    """The step a sample's JVPs use, and the evidence for it."""

    step: float
    converged: bool
    # Estimated relative error of the JVPs at `step` (Frobenius, over the pilot directions):
    # the Richardson estimate disagreement / (ratio^p - 1) when converged, else the smallest
    # disagreement seen (the regime is unknown, so nothing is divided away).
    error: float
    trials: tuple[tuple[float, float, int], ...]  # (step, lambda_max over its directions, how many) per step measured
    queries: int
    searched: bool  # False when the user fixed the step (then it was only checked)
    # One-sided quotients disagreeing by this much (relative) at the step used, without shrinking
    # from the step 4x larger: the model has no derivative at x (None: not measured).
    kink: float | None = None
    # ||D+ - D-|| / ||D+ + D-|| of the one-sided quotients over the pilot at the step used (None: forward pilot),
    # and the pilot's stable rank there (tr / lambda_max of its JVPs): the evidence decide_scheme weighs.
    one_sided: float | None = None
    pilot_rank: float | None = None
    one_sided_spread: float | None = None  # OneSided.spread there: what centred forward JVPs keep of the bias


def pilot_directions(d: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((PILOT_DIRECTIONS, d))


def binary_step(h: float) -> float:
    """The largest power of two not above h: the step sign directions use.

    With signs every coordinate moves by exactly +-h, and x + h is rounded to the input dtype. For
    any other h the rounding is the same relative amount on every coordinate of a binade (h / ulp
    is the same there): a bias of the JVPs, not noise, which read lambda_max 2-5% off on
    EfficientNet-Lite1 at its chosen steps of ~10 ulps (docs/math.md). A power of two at or above
    the inputs' resolution (the search keeps h >= 4x it) is a whole number of ulps everywhere, so
    x +- h is exact but where it crosses into a coarser binade. Gaussian directions scatter the
    rounding instead, and keep h as chosen; h / 2 < result <= h, in the regime the search accepted."""
    return 2.0 ** math.floor(math.log2(h)) if h > 0 and math.isfinite(h) else h


def locality_step(lam: float, tau: float, d: int, fraction: float = 2 * LOCALITY) -> float:
    """The per-coordinate step whose L2 norm (step * sqrt(d)) is ε_τ(λ) / fraction."""
    if not lam > 0 or not math.isfinite(lam):
        return math.inf
    return math.sqrt(2 * tau / lam) / (fraction * math.sqrt(d))


def choose_step(
    fd: FiniteDifferences, start: float, *, tau: float, floor: float, search: bool, rng: np.random.Generator,
    output_dtype: str,
) -> Generator[Request, np.ndarray, StepChoice]:
    """The step (see _search), with the kink test on the one-sided quotients of the last pair measured."""
    asymmetry: dict[float, OneSided | None] = {}
    ranks: dict[float, float] = {}
    choice = yield from _search(
        fd, start, tau=tau, floor=floor, search=search, rng=rng, output_dtype=output_dtype, asymmetry=asymmetry,
        ranks=ranks,
    )
    disagreements = {h: None if a is None else a.disagreement for h, a in asymmetry.items()}
    used = asymmetry.get(choice.step)
    return replace(
        choice, kink=kink_figure(disagreements, choice.trials), one_sided=disagreements.get(choice.step),
        one_sided_spread=None if used is None else used.spread, pilot_rank=ranks.get(choice.step),
    )


def kink_figure(asymmetry: dict[float, float | None], trials: tuple[tuple[float, float, int], ...]) -> float | None:
    """The one-sided disagreement at the smallest step measured, when it exceeds KINK_LIMIT and stayed
    within a factor 2 of the step 4x larger's: else None. A smooth model's shrinks 4x per step (it is
    O(h)); output noise's grows 4x (it is O(1/h)); only a kink's stays put."""
    steps = sorted({h for h, _, _ in trials})
    if len(steps) < 2:
        return None
    small, large = asymmetry.get(steps[0]), asymmetry.get(steps[1])
    if small is None or large is None or small <= KINK_LIMIT or not large / 2 <= small <= 2 * large:
        return None
    return small


def _search(
    fd: FiniteDifferences, start: float, *, tau: float, floor: float, search: bool, rng: np.random.Generator,
    output_dtype: str, asymmetry: dict[float, OneSided | None], ranks: dict[float, float],
) -> Generator[Request, np.ndarray, StepChoice]:
    """Measure a pilot of JVPs at successive steps and pick the first that agrees with the next larger.

    With `search` False (a step the user fixed) only `start` and start/4 are measured: the step is
    kept, and the check reported.
    """
    directions = pilot_directions(fd.flat.size, rng)
    probe = ResolutionProbe(fd.p, output_dtype)  # the pilot's own: the audit's probe sees only its step
    order = SCHEME_ORDER[fd.scheme]
    trials: list[tuple[float, float, int]] = []
    queries = 0

    def measure(h: float) -> Generator[Request, np.ndarray, np.ndarray]:
        nonlocal queries
        y, asymmetry[h] = yield from fd.at(h, probe).jvp_and_asymmetry(directions)
        queries += len(directions) * len(SCHEME_POINTS[fd.scheme])
        trials.append((h, pilot_lambda(y), len(directions)))
        ranks[h] = pilot_rank(y, trials[-1][1])
        return y

    h = start
    y = yield from measure(h)
    target = locality_step(trials[-1][1], tau, fd.flat.size)
    if search and target < h / STEP_RATIO and resolvable(y, target, probe, fd, floor):
        h = target  # jump straight into the local regime the first reading implies
        y = yield from measure(h)
    fallback = h if search else start
    best: tuple[float, float] = (math.inf, fallback)  # (disagreement, smaller step) of the best pair
    while len(trials) < (PILOT_STEPS if search else 2):
        smaller = h / STEP_RATIO
        if not resolvable(y, smaller, probe, fd, floor):
            larger = h * STEP_RATIO
            highest = max(lam for _, lam, _ in trials)
            if not search or math.isfinite(best[0]) or larger > locality_step(highest, tau, fd.flat.size, LOCALITY):
                break
            # Nothing smaller resolves and no pair was measured yet: check against the step 4x larger,
            # which is still within eps_tau / LOCALITY (saturated outputs, or a step at the input's precision).
            y_large = yield from measure(larger)
            gap = relative_gap(y_large, y)
            return _judge(h, gap, order, tuple(trials), queries, search, start) or StepChoice(
                h, False, gap, tuple(trials), queries, search
            )
        y_small = yield from measure(smaller)
        gap = relative_gap(y, y_small)
        verdict = _judge(smaller, gap, order, tuple(trials), queries, search, start)
        if verdict is not None:
            return verdict
        if search and gap < best[0]:
            best = (gap, smaller)
        elif not search:
            best = (gap, start)
        h, y = smaller, y_small
    return StepChoice(best[1], False, best[0], tuple(trials), queries, search)


def _judge(
    smaller: float, gap: float, order: int, trials: tuple[tuple[float, float, int], ...], queries: int, search: bool,
    start: float,
) -> StepChoice | None:
    """The choice when a pair of steps (4h, h) agrees, else None."""
    error = gap / (STEP_RATIO**order - 1)
    if gap > MAX_DISAGREEMENT or error > ERROR_TARGET:
        return None
    if search:
        return StepChoice(smaller, True, error, trials, queries, True)
    # A fixed step keeps the larger of the pair: its own error is the smaller's plus the gap.
    return StepChoice(start, True, error + gap, trials, queries, False)


# Along the sketch's top direction (the witness), the step used must itself be accurate to
# DIRECTION_ERROR, estimated from the pair (h, h/4): random pilot directions spread a step over all
# coordinates, and a network sharply curved along a few is seen best along the direction that
# decides λ_max. Else the sample is flagged and its interval widened.
DIRECTION_ERROR = 2 * ERROR_TARGET


@dataclass(frozen=True)
class DirectionCheck:
    lower: float  # Rayleigh quotient along the direction at the step used: a witnessed lower bound
    error: float | None  # estimated relative JVP error there at the step used; None when unmeasurable
    trials: tuple[tuple[float, float], ...]  # (h/4, Rayleigh quotient there), when measured
    queries: int


def check_direction(
    fd: FiniteDifferences, direction: np.ndarray, *, floor: float, output_dtype: str
) -> Generator[Request, np.ndarray, DirectionCheck | None]:
    """Measure the JVP along `direction` at the step used (the witness) and at a quarter of it."""
    norm = float(np.linalg.norm(direction))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    d = fd.flat.size
    v = (direction * (np.sqrt(d) / norm))[None, :]  # same length as the sketch's directions
    per = len(SCHEME_POINTS[fd.scheme])
    y = yield from fd.jvp(v)
    lower = float(y[0] @ y[0]) / d
    smaller = fd.step / STEP_RATIO
    probe = ResolutionProbe(fd.p, output_dtype)
    if not resolvable(y, smaller, probe, fd, floor):
        return DirectionCheck(lower, None, (), per)
    y_small = yield from fd.at(smaller, probe).jvp(v)
    ratio = STEP_RATIO ** SCHEME_ORDER[fd.scheme]
    error = relative_gap(y, y_small) * ratio / (ratio - 1)  # the error of the step used itself
    return DirectionCheck(lower, error, ((smaller, float(y_small[0] @ y_small[0]) / d),), 2 * per)


def pilot_lambda(y: np.ndarray) -> float:
    """lambda_max(Y^T Y / m) over the pilot's m JVPs: rough, and if anything high when m < rank."""
    s = np.linalg.svd(y, compute_uv=False)
    return float(s[0] ** 2 / len(y)) if s.size else 0.0


def pilot_rank(y: np.ndarray, lam: float) -> float:
    """The pilot's stable rank tr / lambda_max (at least 1; 1 when nothing was measured)."""
    trace = float(np.sum(y * y)) / len(y)
    return max(1.0, trace / lam) if lam > 0 else 1.0


def relative_gap(y_large: np.ndarray, y_small: np.ndarray) -> float:
    """||Y_h - Y_{h/4}||_F / ||Y_{h/4}||_F; 0 when both are zero, inf when only the smaller is."""
    diff = float(np.linalg.norm(y_large - y_small))
    ref = float(np.linalg.norm(y_small))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def resolvable(y: np.ndarray, step: float, probe: ResolutionProbe, fd: FiniteDifferences, floor: float) -> bool:
    """Whether JVPs at `step` would still stand above output rounding and input precision."""
    if step < INPUT_MARGIN * floor:
        return False
    level, _ = probe.resolution(step, RESOLUTION_FACTOR[fd.scheme])
    signal = float(np.sum(y * y)) / len(y)  # the pilot's trace estimate, at the larger step
    return signal > NOISE_MARGIN * level


def widen(interval: tuple[float, float], lam: float, choice: StepChoice, noise: float) -> tuple[float, float]:
    """The interval, widened by the finite-difference error of the step used.

    A relative error e in the JVPs moves λ_max by at most a factor (1 ± e)^2. Converged steps widen
    by their small estimated error; unconverged ones by the smallest disagreement seen, so the
    interval covers what the steps disagreed about instead of confidently excluding the truth.
    `noise` adds the output rounding's relative size, sqrt(resolution level / λ_max). At a kink the
    derivative does not exist and the estimate is the average one-sided slope's; a selection of one
    side (what autograd reports at a max-pool tie) can be larger: the interval spans KINK_WIDENING
    times the one-sided quotients' disagreement (a heuristic: at a two-way tie the selection's λ_max
    is twice the average's, and the pilot's disagreement there was 0.2-1.4).
    """
    e = max(choice.error if math.isfinite(choice.error) else 1.0, KINK_WIDENING * (choice.kink or 0.0)) + noise
    low, high = min(interval[0], lam), max(interval[1], lam)
    return (max(low * (1 - min(e, 1.0)) ** 2, 0.0), high * (1 + e) ** 2)


# --scheme auto (docs/math.md, "Forward or central: --scheme auto"). With D+ and D- the one-sided
# quotients, a forward JVP D+ = Dc + e is the central one Dc = (D+ + D-)/2, odd in v, plus
# e = (D+ - D-)/2, even in v. For directions with a symmetric law odd and even parts are
# uncorrelated, so forward JVPs estimate F + E[e e^T]: an upward bias of λ_max of at most
# tr E[e e^T] / λ_max = a² tr F / λ_max, with a = ||D+ - D-|| / ||D+ + D-|| the pilot's one-sided
# disagreement (free with a central pilot). That holds at kinks too, where e does not shrink with h
# (max-pool ties: forward read +5% to +12% high). Forward buys 2k directions for k central ones'
# queries: sampling error sqrt(2/(2k)) = 1/sqrt(k) against sqrt(2/k). It is taken where its bias
# bound is under FORWARD_BIAS_SHARE of its own sampling error, so it wins by ~1.4x in error or
# ~2x in queries, and the interval is widened by that bound.
FORWARD_BIAS_SHARE = 0.25


@dataclass(frozen=True)
class SchemeDecision:
    """The scheme one sample's sketch used, and the pilot's evidence for it."""

    scheme: Scheme
    directions: int  # the sketch's directions under that scheme (2k forward for k central under auto)
    one_sided: float | None  # pilot's ||D+ - D-|| / ||D+ + D-|| at the step used
    spread: float | None  # the same with D+ - D- less its mean over the pilot (OneSided.spread)
    pilot_rank: float | None  # pilot's stable rank tr / lambda_max there (at least 1)
    bias: float | None  # forward's bound on the relative upward bias of lambda_max: spread² × pilot_rank
    limit: float | None  # the largest bias auto accepts: FORWARD_BIAS_SHARE / sqrt(directions budget)
    reason: str


def decide_scheme(
    option: SchemeOption, choice: StepChoice, budget: int, *, forward_resolves: bool, exact: bool, centred: bool = True,
) -> SchemeDecision:
    """Forward or central for one sample under `option` (a fixed scheme passes through), with a
    budget of `budget` central directions (2 * budget queries)."""
    a, rank = choice.one_sided, choice.pilot_rank
    spread = choice.one_sided_spread if centred else a
    if option != "auto":
        return SchemeDecision(option, budget, a, spread, rank, None, None, "given")
    bias = None if spread is None or rank is None else spread * spread * rank
    limit = FORWARD_BIAS_SHARE / math.sqrt(budget)
    if exact:
        why = "coordinate mode: every direction is measured, central"
    elif choice.kink is not None and not centred:  # the rule before centring (schema 1.6), kept to reproduce it
        why = "nondifferentiable: the one-sided quotients disagree at every step, central"
    elif bias is None:
        why = "no one-sided evidence from the pilot, central"
    elif not forward_resolves:
        why = "forward differences would not stand above the output's rounding at this step, central"
    elif bias > limit:
        why = f"forward bias bound {bias:.2g} over the limit {limit:.2g}, central"
    else:
        return SchemeDecision("forward", 2 * budget, a, spread, rank, bias, limit, f"forward bias bound {bias:.2g} within {limit:.2g}")
    return SchemeDecision("central", budget, a, spread, rank, bias, limit, why)
