"""Perturbed inputs described instead of formed: the sketch's queries where the model lives on a device.

A sketch of k sign directions at a 224x224 input is k x d = 154 million coordinates per input; forming
x + s h v for them in numpy writes 300-600 MB per input on the host, which kept a GPU audit
CPU-bound (docs/benchmarks/gpu.md). So the estimator yields `Perturbations` requests instead: "the
origin x, these step multiples, these directions", the directions either an array or sign rows
j0..j1 of this sample's counter generator. A model that forms inputs itself (a `DevicePerturbing`
one: the torch adapter on CUDA) receives the request and generates counter signs where it runs; any
other model gets the inputs formed here, once, straight into the batch it is sent (the engine's
batches mix several samples' requests, and forming each into its own array first cost a copy).

The counter generator makes that possible: the sign of coordinate c of row j is bit c % 32 of
word(j, c // 32), a fixed integer hash of (key, j, c // 32) in 32-bit arithmetic (murmur3's fmix32
finaliser, applied twice), so every device computes the same bits, with no generator state to
carry: a GPU audit reproduces on a CPU, bit for bit in the inputs. Its statistical quality is what
the sketch needs (balanced, uncorrelated signs; tests/test_perturbations.py), not a cryptographic one.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

# The two generators of the sketch's sign directions, as the report names them.
Generator = Literal["numpy", "counter"]
GENERATORS = ("numpy", "counter")
# fmix32's multipliers, and the odd constant that spreads word numbers before hashing.
FMIX_1 = 0x85EBCA6B
FMIX_2 = 0xC2B2AE35
WORD_SPREAD = 0x9E3779B9
WORD_BITS = 32


def counter_key(seed: int, index: int) -> tuple[int, int]:
    """Two 32-bit keys for one sample's sign rows, from (seed, index) of any size."""
    digest = hashlib.sha256(f"fimaudit-counter-v1:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def fmix32(h: np.ndarray) -> np.ndarray:
    """murmur3's 32-bit finaliser, in place on a uint32 array (wrapping products, as in C)."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(FMIX_1)
    h ^= h >> np.uint32(13)
    h *= np.uint32(FMIX_2)
    h ^= h >> np.uint32(16)
    return h


def row_keys(key: tuple[int, int], start: int, stop: int) -> np.ndarray:
    """Each row's own 32-bit key: fmix32(fmix32(j ^ k0) + k1) for rows j in [start, stop)."""
    rows = np.arange(start, stop, dtype=np.uint32) ^ np.uint32(key[0])
    h = fmix32(rows)
    h += np.uint32(key[1])
    return fmix32(h)


def sign_words(key: tuple[int, int], start: int, stop: int, d: int) -> np.ndarray:
    """(rows, ceil(d / 32)) uint32 words: word w of row j is fmix32(fmix32(r_j ^ w * WORD_SPREAD) + k0)."""
    words = -(-d // WORD_BITS)
    spread = np.arange(words, dtype=np.uint32) * np.uint32(WORD_SPREAD)
    h = fmix32(row_keys(key, start, stop)[:, None] ^ spread[None, :])
    h += np.uint32(key[0])
    return fmix32(h)


@dataclass(frozen=True)
class SignRows:
    """Rows [start, stop) of one sample's counter sign directions of length d: +-1, E[v v^T] = I."""

    key: tuple[int, int]
    start: int
    stop: int
    d: int

    def __len__(self) -> int:
        return self.stop - self.start

    def part(self, start: int, stop: int) -> SignRows:
        """Rows start..stop counted from this block's first."""
        return replace(self, start=self.start + start, stop=self.start + stop)

    def bits(self) -> SignBits:
        """The rows' signs (bit 1 is -1), coordinate c from bit c % 32 of word c // 32, lowest bit first."""
        words = sign_words(self.key, self.start, self.stop, self.d).astype("<u4")
        return SignBits(np.unpackbits(words.view(np.uint8), axis=1, count=self.d, bitorder="little").view(bool))

    def signs(self, dtype: str = "float32") -> np.ndarray:
        """The rows as +-1."""
        return self.bits().signs(dtype)

    def combine(self, coefficients: np.ndarray, per_block: int = 256) -> np.ndarray:
        """sum_j c_j v_j over the rows (the witness direction), regenerated block by block in float32
        (a direction to query along needs no more precision; float64 signs cost 10x the time)."""
        out = np.zeros(self.d)
        weights = np.asarray(coefficients, dtype=np.float32)
        for lo in range(0, len(self), per_block):
            hi = min(len(self), lo + per_block)
            out += weights[lo:hi] @ self.part(lo, hi).signs()
        return out


@dataclass(frozen=True)
class SignBits:
    """Sign directions held as one byte per coordinate (True: -1), as numpy's generator draws them: the
    inputs are formed from the bits (Perturbations.form_into), never through +-1 floats, a quarter of
    their memory. `signs()` gives the +-1 rows where they are needed (the witness; benchmarks' replays)."""

    bits: np.ndarray  # (b, d) bool

    def __len__(self) -> int:
        return len(self.bits)

    def part(self, start: int, stop: int) -> SignBits:
        return SignBits(self.bits[start:stop])

    def signs(self, dtype: str = "float32") -> np.ndarray:
        rows = self.bits.astype(dtype)
        rows *= -2.0
        rows += 1.0
        return rows

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.signs() if dtype is None else self.signs().astype(dtype)

    def __matmul__(self, other: np.ndarray) -> np.ndarray:
        return self.signs() @ other


# A request's directions: an array (b, d), bits of signs, or counter sign rows.
Directions = SignRows | SignBits | np.ndarray
# x + s and the gap to x - s, for forming sign rows (Perturbations._sign_ends).
SignEnds = tuple[np.ndarray, np.ndarray]


def _part(rows: Directions, start: int, stop: int) -> Directions:
    return rows[start:stop] if isinstance(rows, np.ndarray) else rows.part(start, stop)


@dataclass(frozen=True)
class Perturbations:
    """The inputs x + scale_i * v_j for each scale (point-major: all rows at scales[0] first), lazily.

    Rows lo..hi of that sequence make this request; the engine slices requests into batches. `origin`
    is x flattened, in the model's input dtype, and `rows` the directions; neither changes after the
    request is made (they are shared, not copied).
    """

    origin: np.ndarray
    shape: tuple[int, ...]
    scales: tuple[float, ...]
    rows: Directions
    lo: int = 0
    hi: int = -1
    dtype: str = "float32"
    # Per (dtype, scale s): (x + s, (x - s) - (x + s)) where that difference is exact (else None), for forming
    # sign rows in two passes; shared by the slices of a request, and by every request of one input
    # (one origin) when its maker passes one dict (differences.FiniteDifferences does).
    signed: dict[tuple[str, float], SignEnds | None] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.hi < 0:
            object.__setattr__(self, "hi", len(self.scales) * len(self.rows))

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, where: slice) -> Perturbations:
        start, stop, _ = where.indices(len(self))
        return replace(self, lo=self.lo + start, hi=self.lo + max(start, stop))

    def pieces(self) -> Iterator[tuple[float, Directions]]:
        """(scale, the directions at that scale) covering this request's rows, in order."""
        b = len(self.rows)
        for i, scale in enumerate(self.scales):
            lo, hi = max(self.lo, i * b), min(self.hi, (i + 1) * b)
            if lo < hi:
                yield scale, _part(self.rows, lo - i * b, hi - i * b)

    def form_into(self, out: np.ndarray) -> None:
        """Write this request's inputs into `out` (len(self), d) in the input dtype: x + scale * v, the
        product rounded once to that dtype (for signs, +-round(scale): the same on every IEEE device)."""
        at = 0
        for scale, rows in self.pieces():
            block = out[at : at + len(rows)]
            at += len(rows)
            if isinstance(rows, SignRows):  # a device would draw them; here they are drawn as numpy's are held
                rows = rows.bits()
            if isinstance(rows, SignBits):
                ends = self._sign_ends(scale)
                if ends is not None:  # bit * gap is 0 or gap exactly, and x + s plus that is x + s or x - s
                    np.multiply(rows.bits.view(np.uint8), ends[1], out=block)
                    block += ends[0]
                    continue
                # bit * (-2 step) + step is +-step exactly (step = the scale rounded to the dtype; doubling is
                # exact), then x + that rounds once: what the product with +-1 gives, in three passes.
                step = np.asarray(scale, dtype=self.dtype)
                np.multiply(rows.bits.view(np.uint8), -2 * step, out=block)
                block += step
                block += self.origin
                continue
            np.multiply(rows, scale, out=block, casting="unsafe")
            block += self.origin

    def _sign_ends(self, scale: float) -> SignEnds | None:
        """(x + s, gap) for two-pass forming of sign rows, with x + s + gap == x - s checked in the dtype: the
        inputs x +- s each rounded once, as the three-pass form gives them (and a device), for one pass less
        per row. None where some gap is inexact (a coordinate where x + s and x - s differ in sign and
        exponent): then the three passes."""
        key = (self.dtype, scale)
        if key not in self.signed:
            step = np.asarray(scale, dtype=self.dtype)
            plus, minus = self.origin + step, self.origin - step
            gap = minus - plus
            self.signed[key] = (plus, gap) if np.array_equal(plus + gap, minus) else None
        return self.signed[key]

    def materialize(self) -> np.ndarray:
        """The inputs, formed here: (len, *shape) in the input dtype."""
        out = np.empty((len(self), self.origin.size), dtype=self.dtype)
        self.form_into(out)
        return out.reshape(len(out), *self.shape)

    def dtype_scale(self, scale: float) -> np.generic:
        """The scale rounded once to the input dtype, as a device's tensor-times-scalar does."""
        return np.dtype(self.dtype).type(scale)


Request = np.ndarray | Perturbations


@runtime_checkable
class DevicePerturbing(Protocol):
    """A model that forms `Perturbations` where it runs (adapter SDK; the torch adapter on CUDA).

    `predict_perturbed` answers a batch given as pieces, each an array of inputs or a Perturbations,
    with validated float64 probabilities (rows in order), exactly as predict_proba answers the
    concatenated inputs; `forms_on_device` says whether doing so saves the host any work (an audit
    with generator "auto" takes the counter generator only then)."""

    forms_on_device: bool

    def predict_perturbed(self, pieces: Sequence[Request]) -> np.ndarray: ...


def materialize(pieces: Sequence[Request]) -> np.ndarray:
    """The pieces' inputs concatenated, formed here: each request straight into its rows of the batch."""
    formed = [p for p in pieces if isinstance(p, Perturbations)]
    if not formed:
        arrays = [np.asarray(p) for p in pieces]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    first = formed[0]
    out = np.empty((sum(len(p) for p in pieces), first.origin.size), dtype=first.dtype)
    at = 0
    for piece in pieces:
        rows = out[at : at + len(piece)]
        if isinstance(piece, Perturbations):
            piece.form_into(rows)
        else:
            rows[...] = np.asarray(piece).reshape(len(rows), -1)
        at += len(piece)
    return out.reshape(len(out), *first.shape)
