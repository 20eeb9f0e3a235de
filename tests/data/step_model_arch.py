"""Architecture of tests/data/step_model.pt (trained by tests/data/make_step_model.py).

A GELU MLP on scikit-learn's 8x8 digits (pixels scaled to [0, 1], d = 64, 10 classes) whose first
layer standardizes each pixel with the training set's mean and standard deviation, as a
StandardScaler in front of an MLP would (a pixel that never varies gets scale 1). Several border
pixels are almost always 0 (std ~ 0.002-0.01), so inside the network a change of 0.03 in such a
pixel is a jump of several to twenty standard deviations: the model is far from linear at the scale
of fimaudit's default finite-difference step, which is isotropic in the raw pixel units.
"""
from __future__ import annotations

import torch
from torch import nn

INPUT_DIM = 64
HIDDEN = 64
CLASSES = 10


class Standardize(nn.Module):
    """(x - mean) / scale per feature; mean and scale are buffers filled from the state_dict."""

    def __init__(self, dim: int = INPUT_DIM) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1) - self.mean) / self.scale


def build() -> nn.Module:
    """Input (n, 64) pixels in [0, 1] (an (n, 8, 8) batch is flattened too); output (n, 10) logits."""
    return nn.Sequential(
        Standardize(INPUT_DIM),
        nn.Linear(INPUT_DIM, HIDDEN), nn.GELU(),
        nn.Linear(HIDDEN, HIDDEN), nn.GELU(),
        nn.Linear(HIDDEN, CLASSES),
    )
