"""fimaudit's counter generator in torch: the sketch's sign directions and perturbed inputs formed on the
model's device, bit for bit those fimaudit.perturbations forms in numpy.

torch has no wrapping uint32 arithmetic on every device, so words live in int64 tensors holding values
in [0, 2^32): a 32-bit product is taken as lo16(a) * c + (hi16(a) * lo16(c) << 16), every term under
2^49, then masked, so no int64 product overflows on any backend.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fimaudit.adapter import Perturbations, Request, SignRows
from fimaudit.perturbations import FMIX_1, FMIX_2, WORD_BITS, WORD_SPREAD

_MASK = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2^32 for int64 a in [0, 2^32) and a 32-bit constant c."""
    return ((a & 0xFFFF) * c + (((a >> 16) * (c & 0xFFFF)) << 16)) & _MASK


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, FMIX_1)
    h = h ^ (h >> 13)
    h = _mul32(h, FMIX_2)
    return h ^ (h >> 16)


def sign_words(rows: SignRows, device: torch.device) -> torch.Tensor:
    """fimaudit.perturbations.sign_words on `device`: (rows, ceil(d / 32)) int64 words."""
    k0, k1 = rows.key
    j = torch.arange(rows.start, rows.stop, dtype=torch.int64, device=device)
    r = _fmix32((_fmix32(j ^ k0) + k1) & _MASK)
    w = torch.arange(-(-rows.d // WORD_BITS), dtype=torch.int64, device=device)
    spread = _mul32(w, WORD_SPREAD)
    return _fmix32((_fmix32(r[:, None] ^ spread[None, :]) + k0) & _MASK)


def signs(rows: SignRows, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The rows as +-1 in `dtype`: coordinate c is bit c % 32 of word c // 32 (set bit: -1)."""
    words = sign_words(rows, device)
    # Reinterpreted as int32 (two's complement keeps every bit); a shift then a mask reads bit b.
    as32 = (words - ((words >> 31) << 32)).to(torch.int32)
    shifts = torch.arange(WORD_BITS, dtype=torch.int32, device=device)
    bits = ((as32[:, :, None] >> shifts) & 1).reshape(len(rows), -1)[:, : rows.d]
    return (1 - 2 * bits).to(dtype)


def form_inputs(pieces: Sequence[Request], device: torch.device, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The batch the pieces describe, on `device`: counter sign rows formed there as x + scale * v with
    the scale rounded once to the input dtype (as Perturbations.form_into does); arrays, and requests
    with explicit directions (the step pilot's few, or numpy's generator), formed on the host and copied."""
    parts = []
    for piece in pieces:
        if not isinstance(piece, Perturbations) or not isinstance(piece.rows, SignRows):
            host = piece.materialize() if isinstance(piece, Perturbations) else np.array(piece)  # torch needs writable
            parts.append(torch.from_numpy(np.ascontiguousarray(host)).to(device, dtype).reshape(-1, *shape))
            continue
        origin = torch.from_numpy(np.array(piece.origin)).to(device, dtype)
        for scale, rows in piece.pieces():
            step = torch.tensor(float(piece.dtype_scale(scale)), dtype=dtype, device=device)
            parts.append((signs(rows, device, dtype) * step + origin).reshape(-1, *shape))  # type: ignore[arg-type]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
