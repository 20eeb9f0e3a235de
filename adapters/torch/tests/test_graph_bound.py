"""The graph bound (fimaudit_torch.graph_bound) against exact λ_max from autograd, in float64.

Every supported operator appears in at least one small network, random and briefly trained on
digits; the bound must be ≥ the exact λ_max(F) at every tested input (zero violations), the local
bound must be exact where it says so and ≥ λ_max anywhere in its ball, and operators without a rule
must give None with the operator named.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fimaudit_torch import lipschitz as lip
from fimaudit_torch.graph_bound import Bound, fixed_pattern_radius, graph_bound, local_bound
from torch import nn

torch.set_num_threads(1)
SHAPE = (1, 8, 8)


# ── references ───────────────────────────────────────────────────────────────────────────────


def exact_lambda(net: nn.Module, x: torch.Tensor, log_output: bool = False) -> float:
    """λ_max(J_zᵀ(diag p − ppᵀ)J_z) by jacrev in float64 (log of the output for softmax heads)."""
    net64 = net.double().eval()

    def logits(flat: torch.Tensor) -> torch.Tensor:
        out = net64(flat.reshape(1, *x.shape)).reshape(-1)
        return torch.log(out) if log_output else out

    flat = x.double().reshape(-1)
    jac = torch.func.jacrev(logits)(flat)
    p = torch.softmax(logits(flat).detach(), 0)
    m = torch.diag(p) - torch.outer(p, p)
    return float(torch.linalg.eigvalsh(jac.T @ m @ jac)[-1].detach())


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(data.target)


DIGITS_X, DIGITS_Y = digits()


def train_briefly(net: nn.Module, steps: int = 25, log_output: bool = False) -> nn.Module:
    """A few Adam steps on digits, so weights and batch-norm statistics are not just random."""
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(DIGITS_X), (64,), generator=gen)
        out = net(DIGITS_X[idx])
        loss = F.nll_loss(torch.log(out.clamp_min(1e-12)), DIGITS_Y[idx]) if log_output else F.cross_entropy(out, DIGITS_Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def sample_inputs(n_digits: int = 4, n_random: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    picks = [DIGITS_X[i] for i in range(0, 40 * n_digits, 40)]
    return picks + [3 * torch.randn(*SHAPE, generator=gen) for _ in range(n_random)]


# ── networks, one or more per operator ──────────────────────────────────────────────────────


class Residual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        projection = stride > 1 or c_in != c_out
        self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)) if projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.short(x) + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.blocks = nn.Sequential(Residual(6, 6, 1), Residual(6, 8, 2))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class DenseNet(nn.Module):
    """Pre-activation dense block (BN-ReLU-conv, concatenation) and an average-pool transition."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layers = nn.ModuleList([nn.Sequential(nn.BatchNorm2d(4 + 3 * i), nn.ReLU(), nn.Conv2d(4 + 3 * i, 3, 3, padding=1)) for i in range(2)])
        self.trans = nn.Sequential(nn.BatchNorm2d(10), nn.ReLU(), nn.Conv2d(10, 6, 1), nn.AvgPool2d(2))
        self.fc = nn.Linear(6 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(torch.flatten(self.trans(x), 1))


class MobileBlock(nn.Module):
    """Depthwise (multiplier 2) and grouped convolutions, ReLU6, hardswish, reflect padding."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 4, 1, groups=2)
        self.dil = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn(self.stem(x)))
        x = x + self.pw(F.hardswish(self.bn2(self.dw(x))))
        x = self.dil(F.pad(x, (1, 1, 1, 1), mode="reflect"))[:, :, 1:-1, 1:-1]
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ViT(nn.Module):
    """Patchify convolution, class token, positional embedding, pre-LN attention and GELU MLP."""

    def __init__(self, e: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, e, 4, stride=4)
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, e))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 5, e))
        self.ln1, self.ln2, self.ln = nn.LayerNorm(e), nn.LayerNorm(e), nn.LayerNorm(e)
        self.att = nn.MultiheadAttention(e, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(e, 32), nn.GELU(), nn.Linear(32, e))
        self.head = nn.Linear(e, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        h = self.ln1(t)
        t = t + self.att(h, h, h, need_weights=False)[0]
        t = t + self.mlp(self.ln2(t))
        return self.head(self.ln(t)[:, 0])


class HandAttention(nn.Module):
    """Attention spelled out (matmul, softmax) and through F.scaled_dot_product_attention."""

    def __init__(self, e: int = 8, sdpa: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, e)
        self.ln = nn.LayerNorm(e)
        self.qkv = nn.Linear(e, 3 * e)
        self.fc = nn.Linear(e * 8, 10)
        self.sdpa = sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.reshape(x.shape[0], 8, 8))
        q, k, v = self.qkv(self.ln(t)).chunk(3, dim=-1)
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v
        return self.fc((t + a).flatten(1))


class Functional(nn.Module):
    """Tensor methods and functions: chunk, sub, constant products and quotients, x·sigmoid(x),
    mean, transpose, clamp, max pooling by function, a log-softmax head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        a, b = y.chunk(2, dim=1)
        y = torch.cat([a - 0.5 * b, -b], dim=1) * self.scale / 2.0
        y = y * torch.sigmoid(y)
        y = F.max_pool2d(y.clamp(min=-1.0), 3, stride=2, padding=1)
        y = y.transpose(2, 3).mean(dim=(2,))
        return F.log_softmax(self.fc(y.flatten(1)), dim=1)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.2), "prelu": lambda: nn.PReLU(16, 0.3), "elu": lambda: nn.ELU(0.5),
    "selu": nn.SELU, "celu": lambda: nn.CELU(2.0), "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU("tanh"), "silu": nn.SiLU,
    "mish": nn.Mish, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "hardtanh": lambda: nn.Hardtanh(-0.5, 2.0), "relu6": nn.ReLU6,
    "hardsigmoid": nn.Hardsigmoid, "hardswish": nn.Hardswish, "softplus": lambda: nn.Softplus(2.0), "softsign": nn.Softsign,
    "logsigmoid": nn.LogSigmoid, "tanhshrink": nn.Tanhshrink, "softshrink": lambda: nn.Softshrink(0.3),
}


def mlp(act: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), act(), nn.Linear(16, 16), nn.BatchNorm1d(16), act(), nn.Linear(16, 10))


def vgg() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(3, stride=1, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10), nn.Softmax(dim=1))


NETWORKS: dict[str, tuple[Callable[[], nn.Module], bool]] = {  # builder, output is probabilities
    "vgg": (vgg, True), "resnet": (ResNet, False), "densenet": (DenseNet, False), "mobile": (MobileBlock, False),
    "vit": (ViT, False), "attention": (HandAttention, False), "sdpa": (lambda: HandAttention(sdpa=True), False),
    "functional": (Functional, False),
}


def check_bounds(net: nn.Module, log_output: bool, radius: float = 0.05) -> tuple[Bound, list[float]]:
    """Global ≥ exact everywhere; local at 0 exact (or ≥); local at `radius` ≥ exact in its ball."""
    bound = graph_bound(net, SHAPE)
    assert bound.value is not None, (bound.unsupported_op, bound.reason)
    exact = [exact_lambda(net, x, log_output) for x in sample_inputs()]
    assert min(bound.value - e for e in exact) >= 0, (bound.value, max(exact))
    for x in sample_inputs(2, 1):
        at = local_bound(net, x, radius=0.0)
        e = exact_lambda(net, x, log_output)
        assert at.value is not None and at.value >= e * (1 - 1e-9)
        if at.exact:
            assert at.value == pytest.approx(e, rel=1e-7, abs=1e-15)
        near = local_bound(net, x, radius=radius)
        assert near.value is not None and near.value <= bound.value * (1 + 1e-9) + 1e-300
        assert near.value >= max(ball_samples(net, x, radius, log_output)) * (1 - 1e-9)
    return bound, exact


def ball_samples(net: nn.Module, x: torch.Tensor, radius: float, log_output: bool) -> list[float]:
    """λ_max at the centre, on random points of the sphere, and after a few steps of projected
    gradient ascent on λ_max itself: the local bound must hold at all of them."""
    gen = torch.Generator().manual_seed(2)
    values = [exact_lambda(net, x, log_output)]
    for _ in range(3):
        u = torch.randn(x.shape, generator=gen)
        values.append(exact_lambda(net, x + radius * u / u.norm(), log_output))
    return values + [ascend(net, x, radius, log_output)]


def ascend(net: nn.Module, x: torch.Tensor, radius: float, log_output: bool, steps: int = 5) -> float:
    net64 = net.double()
    x0 = x.double().reshape(-1)
    y = x0.clone()
    best = 0.0
    for _ in range(steps):
        y = y.detach().requires_grad_(True)

        def logits(flat: torch.Tensor) -> torch.Tensor:
            out = net64(flat.reshape(1, *x.shape)).reshape(-1)
            return torch.log(out) if log_output else out

        jac = torch.func.jacrev(logits)(y)
        p = torch.softmax(logits(y), 0)
        lam = torch.linalg.eigvalsh(jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac)[-1]
        best = max(best, float(lam))
        try:
            (g,) = torch.autograd.grad(lam, y, allow_unused=True)
        except RuntimeError:  # no second derivative for this activation in torch: stop ascending
            break
        if g is None or not torch.isfinite(g).all() or float(g.norm()) == 0:
            break
        y = y + 0.5 * radius * g / g.norm()
        step = y - x0
        y = x0 + step * min(1.0, radius / float(step.norm()))
    return max(best, exact_lambda(net, y.detach().reshape(x.shape).float(), log_output))


# ── the tests ────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_networks_are_bounded(name: str) -> None:
    torch.manual_seed(0)
    net = train_briefly(mlp(ACTIVATIONS[name]), steps=10)
    check_bounds(net, False, radius=0.02)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_architectures_are_bounded(name: str) -> None:
    torch.manual_seed(0)
    builder, probabilities = NETWORKS[name]
    net = train_briefly(builder(), log_output=probabilities)
    bound, _ = check_bounds(net, probabilities, radius=0.02)
    assert bound.scope == "all inputs"


@pytest.mark.parametrize("name", ["resnet", *(pytest.param(n, marks=pytest.mark.slow) for n in ("densenet", "mobile", "functional", "sdpa"))])
def test_torch_export_programs_get_the_same_bound(name: str) -> None:
    """A torch.export program's module (ATen operators, as fimaudit loads .pt2 files) is bounded by
    the same rules: the same number as the nn.Module, and the same exact local value."""
    torch.manual_seed(0)
    builder, probabilities = NETWORKS[name]
    net = train_briefly(builder(), steps=10, log_output=probabilities)
    program = torch.export.export(net, (DIGITS_X[:1],)).module()
    ours, theirs = graph_bound(net, SHAPE), graph_bound(program, SHAPE)
    assert theirs.value is not None, theirs.reason
    assert theirs.value == pytest.approx(ours.value, rel=1e-9)
    at = local_bound(program, DIGITS_X[9])
    assert at.value == pytest.approx(local_bound(net, DIGITS_X[9]).value, rel=1e-9)


def test_batch_norm_scale_moves_through_relu_into_the_next_layer() -> None:
    """Pre-activation BN → ReLU → conv (no convolution right before the BN to fold it into): a channel
    with a tiny running variance (huge scale) but small weights after it must not dominate
    (relu(s·x + b) = s·relu(x + b/s))."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.Flatten(), nn.Linear(256, 10)).eval()
    plain = graph_bound(net, SHAPE).value
    net[2].running_var[0] = 1e-6  # scale ≈ 1000 on channel 0 ...
    with torch.no_grad():
        net[4].weight[:, 0] *= 1e-3  # ... whose weights in the next layer are tiny
    moved = graph_bound(net, SHAPE).value
    assert moved is not None and plain is not None and moved < 10 * plain
    assert max(exact_lambda(net, x) for x in sample_inputs()) <= moved
    for x in sample_inputs(2, 1):
        assert local_bound(net, x, radius=0.05).value >= max(ball_samples(net, x, 0.05, False)) * (1 - 1e-9)


def test_random_untrained_networks_are_bounded() -> None:
    for name in ("resnet", "mobile", "functional"):
        torch.manual_seed(3)
        builder, probabilities = NETWORKS[name]
        net = builder().eval()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # make the running statistics matter
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 3.0)
                m.weight.data.uniform_(0.5, 2.0)
        check_bounds(net, probabilities, radius=0.1)


def test_piecewise_linear_local_bound_is_exact_at_the_input() -> None:
    torch.manual_seed(0)
    net = train_briefly(ResNet())
    x = DIGITS_X[5]
    at = local_bound(net, x)
    assert at.exact and at.scope == "x"
    assert at.value == pytest.approx(exact_lambda(net, x), rel=1e-9)
    # Within a tiny ball the pattern stays fixed: the bound is the exact value plus the p-range term.
    tiny = local_bound(net, x, radius=1e-6)
    assert not tiny.exact and tiny.method.startswith("fixed activation pattern")
    assert at.value <= tiny.value <= at.value * 1.01


def test_jacobian_change_bound_between_the_linear_region_and_the_global_bound() -> None:
    """Past the certified linear region, exact J(x) plus a bound on its change over the ball (the
    unstable ReLUs' and max-pool windows' share) holds at every sampled point and stays far below the
    global bound at small radii."""
    torch.manual_seed(0)
    for builder, probabilities in ((ResNet, False), (vgg, True)):
        net = train_briefly(builder(), log_output=probabilities)
        glob = graph_bound(net, SHAPE).value
        assert glob is not None
        for i in (5, 7):
            x = DIGITS_X[i]
            b = local_bound(net, x, radius=1e-3)
            assert b.value is not None and b.value >= max(ball_samples(net, x, 1e-3, probabilities)) * (1 - 1e-9)
            if b.method.startswith("exact Jacobian at x plus"):
                assert b.details["jacobian_change"] > 0 and b.value < glob


def test_fixed_pattern_radius_certifies_a_constant_jacobian() -> None:
    torch.manual_seed(0)
    net = train_briefly(ResNet())
    x = DIGITS_X[7]
    r = fixed_pattern_radius(net, x)
    assert r > 0
    inside = local_bound(net, x, radius=r)
    assert inside.method.startswith("fixed activation pattern")
    assert inside.value >= max(ball_samples(net, x, r, False)) * (1 - 1e-9)
    assert not local_bound(net, x, radius=64 * r).method.startswith("fixed")
    smooth = train_briefly(mlp(nn.GELU), steps=5)
    assert fixed_pattern_radius(smooth, x) == 0.0
    # Average pooling of dead ReLUs next to padding makes exact max-pool ties: not differentiable.
    tied = train_briefly(vgg(), log_output=True)
    assert not local_bound(tied, x).exact and fixed_pattern_radius(tied, x) == 0.0


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.fc(x.flatten(1))
        return {"features": x.flatten(1), "logits": z}


def test_output_name_picks_the_class_scores() -> None:
    net = TupleOut().eval()
    assert graph_bound(net, SHAPE).value is None
    picked = graph_bound(net, SHAPE, output_name="logits")
    assert picked.value == pytest.approx(lip.row_difference_bound(net.fc.weight), rel=1e-12)
    assert local_bound(net, DIGITS_X[0], output_name="logits").exact


def test_probabilities_need_a_final_softmax() -> None:
    """The adapter's detected output kind guards the last step: probabilities that do not come from
    a softmax in the graph (here a sigmoid) have no logits to bound."""
    sig = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Sigmoid()).eval()
    refused = graph_bound(sig, SHAPE, outputs="probabilities")
    assert refused.value is None and refused.unsupported_op == "output"
    soft = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1)).eval()
    assert graph_bound(soft, SHAPE, outputs="probabilities").value == graph_bound(soft, SHAPE).value


def test_bound_uses_the_last_layer_row_differences() -> None:
    """¼ max‖W_a − W_b‖² never exceeds ½‖W‖² and is what a linear head gets."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    b = graph_bound(net, SHAPE)
    w = net[1].weight.detach().double()
    assert b.value == pytest.approx(lip.row_difference_bound(w), rel=1e-12)
    assert b.value <= 0.5 * float(torch.linalg.matrix_norm(w, 2)) ** 2
    # For a linear model the bound is attained: some p and v reach ¼‖W_a − W_b‖²‖v‖², and λ_max
    # at inputs where two classes share the mass approaches it.
    assert b.value >= max(exact_lambda(net, x) for x in sample_inputs())


# ── pieces ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu", "mish", "sigmoid", "tanh", "softplus", "selu", "hardswish", "softsign"])
def test_activation_constants_are_tight_upper_bounds(name: str) -> None:
    act = lip.activation(name)
    fn = {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "mish": F.mish,
          "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softplus": F.softplus, "selu": F.selu, "hardswish": F.hardswish,
          "softsign": F.softsign}[name]
    t = torch.linspace(-30, 30, 600001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn(t).sum(), t)
    measured = float(g.abs().max())
    assert measured <= act.lipschitz <= measured * (1 + 1e-6) + 1e-12
    # The local slope bound holds on random intervals.
    gen = torch.Generator().manual_seed(0)
    lo = 6 * torch.randn(200, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(200, generator=gen, dtype=torch.float64) * 4
    sup = act.local_slope(lo, hi)
    for i in range(0, 200, 20):
        s = torch.linspace(float(lo[i]), float(hi[i]), 2001, dtype=torch.float64, requires_grad=True)
        (gs,) = torch.autograd.grad(fn(s).sum(), s)
        assert float(gs.abs().max()) <= float(sup[i]) * (1 + 1e-9) + 1e-12


def test_known_constants() -> None:
    c = lip.lipschitz_constants()
    r2 = math.sqrt(2)
    gelu = 0.5 * (1 + math.erf(1)) + r2 * math.exp(-1) / math.sqrt(2 * math.pi)
    assert c["gelu"] == pytest.approx(gelu, rel=1e-8) and c["gelu"] >= gelu
    assert c["silu"] == pytest.approx(1.0998393, rel=1e-6)
    assert c["hardswish"] == 1.5 and c["sigmoid"] == 0.25 and c["hardsigmoid"] == pytest.approx(1 / 6)


def test_onnx_constants_match_the_computed_ones() -> None:
    """fimaudit_onnx.bound hard-codes the smooth activations' constants (no torch there): they must be
    the ones computed here, rounded up."""
    onnx_bound = pytest.importorskip("fimaudit_onnx.bound")
    c = lip.lipschitz_constants()
    for name, value in (("gelu", onnx_bound.GELU), ("gelu_tanh", onnx_bound.GELU_TANH), ("silu", onnx_bound.SILU), ("mish", onnx_bound.MISH)):
        assert c[name] <= value <= c[name] * (1 + 1e-8)


def dense_operator_norm(conv: nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.zeros(1, *shape, dtype=torch.float64)
    conv = conv.double().requires_grad_(False)
    jac = torch.func.jacrev(lambda v: conv(v.reshape(x.shape)).reshape(-1))(x.reshape(-1))
    return float(torch.linalg.matrix_norm(jac, 2))


@pytest.mark.parametrize("kw", [
    dict(c_in=3, c_out=4, k=3, stride=1, padding=1, dilation=1, groups=1),
    dict(c_in=3, c_out=5, k=3, stride=2, padding=1, dilation=1, groups=1),
    dict(c_in=4, c_out=4, k=3, stride=1, padding=2, dilation=2, groups=4),
    dict(c_in=4, c_out=8, k=5, stride=2, padding=2, dilation=1, groups=4),
    dict(c_in=4, c_out=6, k=3, stride=1, padding=0, dilation=1, groups=2),
    dict(c_in=2, c_out=6, k=2, stride=2, padding=0, dilation=1, groups=1),
])
def test_conv_norm_is_an_upper_bound(kw: dict[str, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(kw["c_in"], kw["c_out"], kw["k"], stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"], groups=kw["groups"], bias=False)
    size = (7, 9)
    true = dense_operator_norm(conv, (kw["c_in"], *size))
    bound = lip.conv_norm(conv.weight, size, (kw["stride"],) * 2, (kw["dilation"],) * 2, kw["groups"])
    assert true <= bound <= 1.6 * true
    if kw["stride"] == kw["k"] and kw["padding"] == 0:  # patchify: exact
        assert bound == pytest.approx(true, rel=1e-8)


def test_pooling_factors_hold() -> None:
    gen = torch.Generator().manual_seed(0)
    for k, s, d in [(2, 2, 1), (3, 2, 1), (3, 1, 1), (3, 2, 2)]:
        factor = lip.max_pool_factor((k, k), (s, s), (d, d))
        for _ in range(20):
            a, b = torch.randn(1, 1, 9, 9, generator=gen), torch.randn(1, 1, 9, 9, generator=gen)
            pa = F.max_pool2d(a, k, s, dilation=d)
            pb = F.max_pool2d(b, k, s, dilation=d)
            assert float((pa - pb).norm()) <= factor * float((a - b).norm()) + 1e-9
    gap = lip.nonnegative_map_norm(lambda t: F.adaptive_avg_pool2d(t, 1), (1, 3, 6, 6))
    assert gap == pytest.approx(1 / 6, rel=1e-8)


def test_row_difference_is_popoviciu_sharp() -> None:
    """sup_p λ_max(Wᵀ(diag p − ppᵀ)W) = ¼ max‖W_a − W_b‖²: attained with half the mass on each end."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    bound = lip.row_difference_bound(w)
    dist = torch.cdist(w, w)
    a, b = divmod(int(torch.argmax(dist)), 6)
    p = torch.zeros(6, dtype=torch.float64)
    p[a] = p[b] = 0.5
    attained = float(torch.linalg.eigvalsh(w.T @ (torch.diag(p) - torch.outer(p, p)) @ w)[-1])
    assert attained == pytest.approx(bound, rel=1e-8)
    for _ in range(50):
        q = torch.softmax(3 * torch.randn(6, generator=gen, dtype=torch.float64), 0)
        assert float(torch.linalg.eigvalsh(w.T @ (torch.diag(q) - torch.outer(q, q)) @ w)[-1]) <= bound


# ── what is refused ─────────────────────────────────────────────────────────────────────────


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.se = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        s = torch.sigmoid(self.se(y.mean((2, 3))))
        return self.fc((y * s[:, :, None, None]).mean((2, 3)))


class RawAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.reshape(x.shape[0], 8, 8)
        return self.fc(self.att(t, t, t)[0].flatten(1))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


class ArgmaxGather(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.flatten(1))
        return z * (z > 0)  # a mask computed from the input: discontinuous


@pytest.mark.parametrize("net, op, bounded_locally", [
    (ArgmaxGather(), "mul", False),
    (nn.Sequential(nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(256, 10)), "Upsample", False),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Flatten(), nn.Linear(128, 10)), "Conv2d", False),
    (SqueezeExcite(), "mul", True),
    (RawAttention(), "attention", True),
    (Branchy(), "torch.fx.symbolic_trace", False),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Hardshrink()), "Hardshrink", False),
])
def test_unsupported_operators_give_none_with_the_operator(net: nn.Module, op: str, bounded_locally: bool) -> None:
    bound = graph_bound(net.eval(), SHAPE)
    assert bound.value is None
    assert bound.unsupported_op == op and bound.reason
    local = local_bound(net.eval(), DIGITS_X[0], radius=0.1)
    if bounded_locally:  # no global constant, but bounded within a ball: the local bound exists and holds
        assert local.value is not None and local.value >= exact_lambda(net, DIGITS_X[0])
    else:
        assert local.value is None and local.unsupported_op == op


def test_attention_bound_on_a_stated_domain() -> None:
    """Without a LayerNorm, attention needs a stated input domain; the bound then holds there."""
    torch.manual_seed(0)
    net = RawAttention().eval()
    radius = 4.0
    stated = graph_bound(net, SHAPE, input_norm=radius)
    assert stated.value is not None and "||x||_2 <= 4" in stated.scope
    for x in sample_inputs():
        assert exact_lambda(net, radius * x / x.norm()) <= stated.value


# ── torch and ONNX agree ─────────────────────────────────────────────────────────────────────


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_onnx_bound_equals_or_exceeds_the_torch_bound(name: str, tmp_path: object) -> None:
    onnx_bound = pytest.importorskip("fimaudit_onnx.bound")
    import contextlib
    import io

    torch.manual_seed(0)
    builder, probabilities = NETWORKS[name]
    net = train_briefly(builder(), steps=5, log_output=probabilities)
    ours = graph_bound(net, SHAPE)
    buf = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(net.float(), (DIGITS_X[:1],), buf, dynamo=False, opset_version=18, external_data=False)
    import onnx

    theirs = onnx_bound.graph_bound(onnx.load_from_string(buf.getvalue()))
    assert ours.value is not None and theirs.value is not None, theirs.reason
    assert theirs.value >= ours.value * (1 - 1e-6)
    if name not in ("vit", "attention", "sdpa"):  # no attention: the same rules, the same number
        assert theirs.value == pytest.approx(ours.value, rel=1e-6)


def test_efficientnet_style_zero_violations_on_data() -> None:
    """A summary check over many digits for the MobileNet/EfficientNet-style block."""
    torch.manual_seed(0)
    net = train_briefly(MobileBlock(), steps=40)
    bound = graph_bound(net, SHAPE)
    assert bound.value is not None
    exact = np.array([exact_lambda(net, DIGITS_X[i]) for i in range(0, 1797, 90)])
    assert (exact <= bound.value).all()
