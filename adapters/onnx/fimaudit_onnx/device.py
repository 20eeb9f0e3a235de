"""Perturbed inputs formed on the GPU for onnxruntime's CUDA provider (fimaudit.perturbations).

onnxruntime cannot draw the counter generator's signs itself, so torch forms the batch in device memory
(fimaudit_torch.counter, the same bits as numpy's) and onnxruntime reads it there through I/O binding:
the inputs never exist on the host, and only the K outputs per row come back. This needs torch with
CUDA and the torch adapter installed beside this one; without them the host forms the inputs, as for
any model, with the same numbers.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fimaudit.adapter import Request

# onnxruntime's name for a device -> torch's.
_TORCH_DEVICES = {"cuda": "cuda", "cpu": "cpu"}


def device_of(session: Any) -> str | None:
    """"cuda" where the session runs on CUDA and torch can form inputs there; else None."""
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return None
    try:
        import torch
        from fimaudit_torch import counter  # noqa: F401  (the forming code; absent without the torch adapter)
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def run_formed(session: Any, input_name: str, output_name: str, pieces: Sequence[Request], dtype: str,
               shape: tuple[int, ...], device: str) -> np.ndarray:
    """The model's raw outputs for the pieces, their inputs formed by torch on `device` and bound to the
    session's input in place ("cpu" runs the same code on the CPU provider, for tests)."""
    import torch
    from fimaudit_torch.counter import form_inputs

    where = torch.device(_TORCH_DEVICES[device])
    batch = form_inputs(pieces, where, getattr(torch, dtype), shape).contiguous()
    binding = session.io_binding()
    binding.bind_input(
        name=input_name, device_type=device, device_id=where.index or 0, element_type=np.dtype(dtype).type,
        shape=tuple(batch.shape), buffer_ptr=batch.data_ptr(),
    )
    binding.bind_output(output_name)  # onnxruntime allocates it on the host
    if device == "cuda":
        torch.cuda.current_stream(where).synchronize()  # the batch is formed before onnxruntime's stream reads it
    session.run_with_iobinding(binding)
    out = binding.copy_outputs_to_cpu()[0]
    del batch  # kept alive until the run has read it
    return np.asarray(out)
