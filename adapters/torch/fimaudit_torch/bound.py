"""The closed-form sanity bound of MATH.md for plain sequential networks.

uᵀ(diag p − ppᵀ)u = Var_{y~p}(u_y) ≤ ½‖u‖², so λ_max(F) ≤ ½‖J_z‖₂² ≤ ½ Π_l ‖W_l‖₂² when every
other layer is 1-Lipschitz. It holds at every input, so one number per model. It applies only to
an nn.Sequential (nested ones are flattened) of the layers below; anything else gives None.

Every factor is an upper bound computed in closed form, never an iterative estimate (which would
approach the norm from below): Linear layers by their exact spectral norm, convolutions by the
largest singular value of their kernel's Fourier transform (see _conv_norm_bound).

For any network torch.fx can trace (residual blocks, batch norm, depthwise convolutions,
concatenation, attention, GELU/SiLU/ReLU6...), and for a tighter last step, use
fimaudit_torch.graph_bound.graph_bound / local_bound (docs/math.md, "Bounds from the graph").
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# 1-Lipschitz in L2: they add no factor. A trailing Softmax or LogSoftmax maps logits to the same
# distribution, so it does not change F either.
_ONE_LIPSCHITZ = (nn.ReLU, nn.Tanh, nn.Flatten, nn.Identity, nn.Dropout, nn.Softmax, nn.LogSoftmax)
_CONV = (nn.Conv1d, nn.Conv2d)


def relu_network_bound(module: nn.Module, input_shape: Sequence[int]) -> float | None:
    """½ Π‖W_l‖₂² for a sequential ReLU (or tanh) network, or None where it does not apply."""
    layers = _flatten(module)
    if layers is None or not all(_supported(layer) for layer in layers):
        return None
    x = torch.zeros(1, *input_shape, dtype=torch.float32, device=_device(module))
    log_product = 0.0
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, nn.Linear):
                log_product += 2 * math.log(max(_spectral_norm(layer.weight), 1e-300))
            elif isinstance(layer, _CONV):
                log_product += 2 * math.log(max(_conv_norm_bound(layer, tuple(x.shape[2:])), 1e-300))
            x = layer(x.to(_dtype(layer)))  # tracks the spatial size each convolution sees
    return 0.5 * math.exp(log_product)


def _flatten(module: nn.Module) -> list[nn.Module] | None:
    """The layers of a (nested) nn.Sequential in execution order; None for any other module."""
    if not isinstance(module, nn.Sequential) or isinstance(module, torch.jit.ScriptModule):
        return None
    layers: list[nn.Module] = []
    for child in module:
        if isinstance(child, nn.Sequential):
            inner = _flatten(child)
            if inner is None:
                return None
            layers.extend(inner)
        else:
            layers.append(child)
    return layers


def _supported(layer: nn.Module) -> bool:
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        # Disjoint windows: |max a − max b| ≤ ‖a − b‖ and ‖mean a‖ ≤ ‖a‖ per window, so 1-Lipschitz.
        stride = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
        kernel = _pair(layer.kernel_size)
        dilation = _pair(getattr(layer, "dilation", 1))
        return all(s >= k for s, k in zip(stride, kernel)) and dilation == (1, 1)
    if isinstance(layer, nn.LeakyReLU):
        return abs(layer.negative_slope) <= 1
    if isinstance(layer, _CONV):
        return layer.padding_mode == "zeros"  # reflect/replicate padding repeats inputs: norm > bound
    return type(layer) in _ONE_LIPSCHITZ or type(layer) is nn.Linear


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _spectral_norm(weight: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(weight.detach().to("cpu", torch.float64), ord=2))


def _conv_norm_bound(conv: nn.Conv1d | nn.Conv2d, size: tuple[int, ...]) -> float:
    """An upper bound on ‖conv‖₂ for inputs of spatial size `size`, tight up to boundary effects.

    A zero-padded, strided convolution is a restriction (norm ≤ 1) of the full linear convolution,
    which equals a circular convolution on a grid of n + (k−1)·dilation per axis. A circular
    convolution's singular values are those of the (out × in) matrices K̂(ω) of the kernel's DFT
    on that grid (Sedghi, Gupta and Long, ICLR 2019), so the bound is max_ω ‖K̂(ω)‖₂.
    """
    kernel = _dense_kernel(conv).to(torch.float64)
    spatial = kernel.shape[2:]
    grid = [n + k - 1 for n, k in zip(size, spatial)]
    dims = tuple(range(2, kernel.dim()))
    spectrum = torch.fft.fftn(kernel, s=grid, dim=dims)  # (out, in, *grid), zero-padded kernel
    per_frequency = spectrum.permute(*range(2, kernel.dim()), 0, 1)  # (*grid, out, in)
    return float(torch.linalg.matrix_norm(per_frequency, ord=2).max())


def _dense_kernel(conv: nn.Conv1d | nn.Conv2d) -> torch.Tensor:
    """The weight as one (out, in, *k_eff) kernel: groups as a block-diagonal, dilation as holes."""
    w = conv.weight.detach().to("cpu")
    out_c, in_per_group = w.shape[:2]
    groups = conv.groups
    dilation = tuple(int(d) for d in conv.dilation)
    spatial = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dilation)]
    dense = torch.zeros(out_c, in_per_group * groups, *spatial, dtype=w.dtype)
    index = tuple(slice(None, None, d) for d in dilation)
    per_group = out_c // groups
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        cols = slice(g * in_per_group, (g + 1) * in_per_group)
        dense[(rows, cols) + index] = w[rows]
    return dense


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _dtype(layer: nn.Module) -> torch.dtype:
    return next((p.dtype for p in layer.parameters()), torch.float32)
