"""Train tests/data/step_model.pt and write tests/data/step_inputs.npy (run once; CI only loads them).

    python tests/data/make_step_model.py

A real trained network on which fimaudit's fixed default step (1e-2 x the data's std per
coordinate) is too large: see step_model_arch.py. Data: scikit-learn's bundled 8x8 digits (no
download), pixels / 16 into [0, 1], 70/30 stratified split (random_state=0). Training: Adam,
lr 1e-3, batch 64, 100 epochs, torch seed 0, one thread. Inputs: the first 8 images of the test
split, not selected by any criterion. The script prints the test accuracy and, per input, the exact
lambda_max (float64 autograd) against fimaudit's estimates at relative steps 1e-2, 1e-3, 1e-4.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from step_model_arch import build  # noqa: E402

EPOCHS = 100
BATCH = 64
LR = 1e-3
SEED = 0
N_INPUTS = 8


def data() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, d.target.astype(np.int64), test_size=0.3, random_state=0, stratify=d.target))


def train(x_tr: np.ndarray, y_tr: np.ndarray) -> nn.Module:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    net = build()
    scale = x_tr.std(axis=0)
    scale[scale == 0] = 1.0  # StandardScaler's convention for constant features
    net[0].mean.copy_(torch.from_numpy(x_tr.mean(axis=0)))
    net[0].scale.copy_(torch.from_numpy(scale))
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(xt)).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def exact_lambda(net: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """lambda_max(F) per input: float64 jacrev of log_softmax (10 x 64), A = diag(sqrt p) J, top eig of A A^T."""
    net64 = copy.deepcopy(net).double().eval()
    out = []
    for x in inputs:
        flat = torch.from_numpy(x.astype(np.float64).reshape(-1))

        def logp(v: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(net64(v.reshape(1, -1)), dim=1)[0]

        with torch.no_grad():
            p = logp(flat).exp()
        a = p.sqrt()[:, None] * torch.func.jacrev(logp)(flat)
        out.append(float(torch.linalg.eigvalsh(a @ a.T)[-1]))
    return np.array(out)


def report(net: nn.Module, inputs: np.ndarray) -> None:
    import fimaudit

    def fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))), 1).numpy()

    model = fimaudit.CallableModel(fn, fimaudit.InputSpec(shape=inputs.shape[1:], dtype="float32"), num_classes=10,
                                   output_dtype="float32")
    exact = exact_lambda(net, inputs)
    std = float(np.std(inputs))
    runs = {r: fimaudit.audit(model, inputs, directions=256, seed=0, step=r * std).samples for r in (1e-2, 1e-3, 1e-4)}
    print(f"std of the inputs {std:.4f}; step 1e-2 x std = {1e-2 * std:.3g} (coordinate mode: one pixel moved by "
          f"{1e-2 * std * np.sqrt(inputs[0].size):.3g})")
    for i, lam in enumerate(exact):
        s = runs[1e-2][i]
        line = (f"#{i}: exact {lam:.4g}  fixed step {s.lambda_max:.4g} CI [{s.lambda_max_ci[0]:.4g}, {s.lambda_max_ci[1]:.4g}]"
                f" err {s.lambda_max / lam - 1:+.1%}")
        for r in (1e-3, 1e-4):
            line += f" | {r:g}: {runs[r][i].lambda_max:.4g} ({runs[r][i].lambda_max / lam - 1:+.1%})"
        print(line)


def main() -> None:
    x_tr, x_te, y_tr, y_te = data()
    net = train(x_tr, y_tr)
    with torch.no_grad():
        acc = float((net(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    print(f"test accuracy {acc:.4f} ({len(y_te)} images)")
    inputs = np.ascontiguousarray(x_te[:N_INPUTS].reshape(N_INPUTS, 64), dtype=np.float32)
    torch.save(net.state_dict(), HERE / "step_model.pt")
    np.save(HERE / "step_inputs.npy", inputs)
    report(net, inputs)


if __name__ == "__main__":
    main()
