"""Models and timing helpers shared by the speed benchmarks (overhead, clever_speed, scaling, gpu).

The speed benchmarks need models whose inference costs what deployed ones cost, not trained ones:
an audit's cost does not depend on what the weights learned, only on the architecture. So the
ResNet-like nets here have seeded random weights, with the last layer scaled so that the softmax is
neither flat nor saturated (an audit of a one-hot model takes the same queries, but its numbers
would be meaningless to print).

    resnet_like(...)        a ResNet-18-shaped net (BasicBlocks, BatchNorm in eval mode) of any width
    export_onnx(net, ...)   a single-file .onnx with a dynamic batch axis (torch's dynamo exporter)
    resnet_onnx(...)        build + export once into benchmarks/models/ (gitignored), reused after
    best_of(...)            interleaved best-of-N timing of several callables
    machine()               a one-line description of the machine, for the docs
"""
from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "benchmarks" / "models"  # gitignored


def resnet_like(
    width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), classes: int = 10, channels: int = 3, seed: int = 0,
) -> "torch.nn.Module":  # noqa: F821 - torch is imported lazily so the module loads without it
    """A ResNet-18 topology (7x7 stem, max-pool, 4 stages of BasicBlocks, global pool, linear).

    width=64 with blocks (2, 2, 2, 2) is ResNet-18 itself (11.2 M parameters at 1000 classes);
    smaller widths keep the depth and divide the cost by about (64 / width)^2.
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.skip: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))

    torch.manual_seed(seed)
    layers: list[nn.Module] = [
        nn.Conv2d(channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
    ]
    cin = width
    for stage, count in enumerate(blocks):
        cout = width * 2**stage
        for i in range(count):
            layers.append(Block(cin, cout, 2 if (i == 0 and stage > 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers).eval()


def calibrate_logits(net: "torch.nn.Module", shape: Sequence[int], spread: float = 2.0, seed: int = 0) -> None:  # noqa: F821
    """Rescale the last linear layer so logits on random inputs have standard deviation `spread`:
    random residual nets otherwise produce logits in the hundreds and a saturated softmax."""
    import torch

    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits = net(torch.rand(8, *shape, generator=gen))
        scale = spread / max(float(logits.std()), 1e-12)
        last.weight.mul_(scale)
        last.bias.mul_(scale)


def export_onnx(net: "torch.nn.Module", shape: Sequence[int], path: Path) -> Path:  # noqa: F821
    """One self-contained .onnx (no external data) with a dynamic batch axis and a 'logits' output."""
    import logging

    import onnx
    import torch

    # The exporter logs a warning per torchvision op it cannot register; none is used here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about its own internals
        program = torch.onnx.export(
            net, (torch.zeros(2, *shape),), dynamo=True, external_data=False, verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["x"], output_names=["logits"],
        )
    onnx.save(program.model_proto, str(path))
    return path


def resnet_onnx(name: str, width: int, shape: Sequence[int], classes: int = 10, blocks: Sequence[int] = (2, 2, 2, 2)) -> Path:
    """benchmarks/models/<name>.onnx, built on first use (seconds) and reused afterwards."""
    path = MODELS_DIR / f"{name}.onnx"
    if not path.exists():
        net = resnet_like(width, blocks, classes, shape[0])
        calibrate_logits(net, shape)
        export_onnx(net, shape, path)
    return path


def random_images(n: int, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Seeded float32 inputs in [0, 1]: smooth blobs plus pixel noise, like natural images at the
    scales that matter for timing (the audit's cost does not depend on the pixel values)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, size=(n, shape[0], 4, 4))
    reps = [shape[1] // 4 + 1, shape[2] // 4 + 1]
    smooth = np.kron(coarse, np.ones((1, 1, *reps)))[:, :, : shape[1], : shape[2]]
    return np.clip(smooth + 0.05 * rng.standard_normal((n, *shape)), 0, 1).astype(np.float32)


def best_of(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each callable over `repeats` rounds, the callables interleaved within a
    round so that load from other processes (this machine is shared) hits all of them alike."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} CPUs available, Python {platform.python_version()}, load average {load}"
