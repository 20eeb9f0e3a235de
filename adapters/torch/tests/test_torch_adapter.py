"""The PyTorch adapter on real files (TorchScript, torch.export, state_dict) and live modules, and
its white-box reference checked against finite differences computed without autograd."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Skipped only where torch itself is absent; a broken adapter must fail, not skip.
torch = pytest.importorskip("torch", reason="torch is installed by adapters/torch/install.sh")

import fimaudit_torch  # noqa: E402
from torch import nn  # noqa: E402

import fimaudit  # noqa: E402
from fimaudit.conformance import check_model  # noqa: E402

# The tests script modules on purpose (TorchScript files are still audited); torch 2.13 deprecates it.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[3]  # adapters/torch/tests/ -> the repository
SHAPE = (3, 8, 8)  # d = 192: small enough for coordinate finite differences in the tests
CLASSES = 5


def tanh_net() -> nn.Module:
    """A smooth conv net (tanh, average pooling), so finite differences have no kinks to cross."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, CLASSES)
    )


def relu_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(),
        nn.Linear(8, CLASSES), nn.Softmax(dim=1),
    )


def relu_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 6))


def seeded(factory: Callable[[], nn.Module], seed: int, scale: float = 3.0) -> nn.Module:
    """factory() with seeded weights scaled up, so predictions are confident and λ_max varies."""
    torch.manual_seed(seed)
    module = factory().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(scale)
    return module


def inputs(n: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tanh net in every format the adapter reads."""
    root = tmp_path_factory.mktemp("torch_models")
    net = seeded(tanh_net, 0)
    example = torch.from_numpy(inputs(2))
    out = {"torchscript": root / "net.pt", "export": root / "net.pt2", "static": root / "static.pt2", "state_dict": root / "net.pth"}
    fimaudit_torch.save_torchscript(net, out["torchscript"], SHAPE)
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)), out["export"])
    torch.export.save(torch.export.export(net, (example,)), out["static"])  # batch fixed at 2
    torch.save(net.state_dict(), out["state_dict"])
    return out


def load(kind: str, files: dict[str, Path]) -> fimaudit_torch.TorchModel:
    if kind == "module":
        return fimaudit_torch.TorchModel(seeded(tanh_net, 0), input_shape=SHAPE)
    if kind == "state_dict":
        return fimaudit.load_model(files["state_dict"], factory=tanh_net, input_shape=SHAPE)
    return fimaudit.load_model(files[kind])


KINDS = ["torchscript", "export", "static", "state_dict", "module"]


@pytest.mark.parametrize("kind", KINDS)
def test_conformance_and_identity(kind: str, files: dict[str, Path]) -> None:
    model = load(kind, files)
    check_model(model)
    ident = model.identity
    assert ident.adapter == "torch" and ident.provider == "cpu" and model.input_spec.shape == SHAPE
    assert model.num_classes == CLASSES and model.output_kind == "logits"
    if kind == "module":
        assert ident.sha256 is None and len(ident.extra["weights_sha256"]) == 64
    else:
        assert ident.sha256 == sha256(files[kind]) and ident.reference == str(files[kind])


def test_every_format_computes_the_same_function(files: dict[str, Path]) -> None:
    x = inputs(5, seed=3)  # 5 rows: the static program (batch 2) must pad its last chunk
    outputs = {kind: load(kind, files).predict_proba(x) for kind in KINDS}
    assert load("static", files).max_batch_size == 2
    for kind, p in outputs.items():
        np.testing.assert_allclose(p, outputs["module"], atol=1e-6, err_msg=kind)


@pytest.mark.parametrize("kind", ["torchscript", "export", "static", "state_dict"])
def test_audit_agrees_with_white_box(kind: str, files: dict[str, Path]) -> None:
    model = load(kind, files)
    x = inputs(3, seed=1)
    report = fimaudit.audit(model, x, directions=384, seed=0)  # 2d = 384 <= 384: exact coordinate mode
    exact = model.exact_fisher(x)
    for sample, white in zip(report.samples, exact):
        assert sample.method == "exact" and white.method == "jacobian"
        # Float32 outputs and a converged step leave ~1e-3 of finite-difference error.
        assert sample.lambda_max == pytest.approx(white.lambda_max, rel=1e-2)
        assert sample.trace == pytest.approx(white.trace, rel=1e-2)


def test_outputs_detected_and_overridable() -> None:
    probs = fimaudit_torch.TorchModel(seeded(relu_net, 1), input_shape=SHAPE)
    assert probs.output_kind == "probabilities"
    forced = fimaudit_torch.TorchModel(seeded(tanh_net, 1), input_shape=SHAPE, outputs="probabilities")
    with pytest.raises(fimaudit.OutputError, match="logits"):
        forced.predict_proba(inputs(2))  # logits are not probabilities: the declared kind is used


# -- refusing to unpickle -------------------------------------------------------------------------

class Payload:
    """Unpickling this creates a directory: the test's evidence that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_state_dict_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(3), "extra": Payload(marker)}, path)
    with pytest.raises(fimaudit.ModelError, match="refuses to unpickle") as info:
        fimaudit.load_model(path, factory=tanh_net, input_shape=SHAPE)
    assert "GLOBAL posix.mkdir" in info.value.message
    assert not marker.exists()


def test_pt2_with_pickled_sample_inputs_is_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    """torch.export.load alone would fall back to a full unpickle here (and run the payload)."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt2"
    payload = tmp_path / "payload.pt"
    torch.save(Payload(marker), payload)
    with zipfile.ZipFile(files["export"]) as src, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            swap = name.endswith("sample_inputs/model.pt")
            dst.writestr(name, payload.read_bytes() if swap else src.read(name))
    with pytest.raises(fimaudit.ModelError, match="refuses to unpickle"):
        fimaudit.load_model(evil)
    assert not marker.exists()


def _rewrite_pt2(source: Path, target: Path, edit: Callable[[str, bytes], dict[str, bytes]]) -> Path:
    """Copy a .pt2 archive member by member; edit(name, data) returns the members to write instead."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            for out_name, out_data in edit(name, src.read(name)).items():
                dst.writestr(out_name, out_data)
    return target


def _add_constant(entry: dict[str, object], member: str, payload: bytes) -> Callable[[str, bytes], dict[str, bytes]]:
    """An edit adding a constant entry to the constants config and its payload member beside it."""
    def edit(name: str, data: bytes) -> dict[str, bytes]:
        if not name.endswith("constants_config.json"):
            return {name: data}
        config = json.loads(data)
        config["config"]["injected"] = entry
        return {name: json.dumps(config).encode(), f"{name.rsplit('/', 1)[0]}/{member}": payload}
    return edit


def _weight_meta(archive: Path) -> object:
    """The tensor_meta of a real weight, so an injected entry passes torch's own checks."""
    with zipfile.ZipFile(archive) as src:
        name = next(n for n in src.namelist() if n.endswith("weights_config.json"))
        return next(iter(json.loads(src.read(name))["config"].values()))["tensor_meta"]


def _hostile_pt2(variant: str, files: dict[str, Path], root: Path, marker: Path) -> Path:
    """A torch.export archive carrying a pickled payload that creates `marker` if unpickled."""
    payload = pickle.dumps(Payload(marker), protocol=4)
    source, target = files["export"], root / f"{variant}.pt2"
    if variant == "opaque_constant":  # what torch.export.save writes for an opaque object
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        return _rewrite_pt2(source, target, _add_constant(entry, "opaque_obj_0", payload))
    if variant == "opaque_prefix_without_flag":  # torch dispatches to pickle.loads on the prefix alone
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": _weight_meta(source)}
        return _rewrite_pt2(source, target, _add_constant(entry, "opaque_obj_0", payload))
    if variant == "nested_flag_elsewhere":
        doc = json.dumps({"models": [{"deep": {"use_pickle": 1}}]}).encode()
        return _rewrite_pt2(source, target, _add_member("extra/notes.json", doc))
    assert variant == "bare_pickle_member"
    return _rewrite_pt2(source, target, _add_member("extra/blob.bin", payload))


def _add_member(member: str, data: bytes) -> Callable[[str, bytes], dict[str, bytes]]:
    """An edit adding `member` under the archive's root folder (the one holding archive_format)."""
    def edit(name: str, content: bytes) -> dict[str, bytes]:
        if not name.endswith("archive_format"):
            return {name: content}
        return {name: content, name[: -len("archive_format")] + member: data}
    return edit


HOSTILE_PT2 = ["opaque_constant", "opaque_prefix_without_flag", "nested_flag_elsewhere", "bare_pickle_member"]


@pytest.mark.parametrize("suffix", [".pt2", ".pt", ".pth"])
@pytest.mark.parametrize("variant", HOSTILE_PT2)
def test_pt2_with_pickled_constants_is_refused(variant: str, suffix: str, tmp_path: Path, files: dict[str, Path]) -> None:
    """The adapter picks the format from member names, so a renamed archive must be refused too."""
    marker = tmp_path / "code-ran"
    evil = _hostile_pt2(variant, files, tmp_path, marker)
    evil = evil.rename(evil.with_suffix(suffix))
    with pytest.raises(fimaudit.ModelError, match="refuses to unpickle") as info:
        fimaudit.load_model(evil)
    assert "archive member" in info.value.message and info.value.fix
    assert not marker.exists()


def test_cli_refuses_pickled_constants_with_exit_4(tmp_path: Path, files: dict[str, Path]) -> None:
    marker, data = tmp_path / "code-ran", tmp_path / "x.npy"
    np.save(data, inputs(1))
    evil = _hostile_pt2("opaque_constant", files, tmp_path, marker)
    renamed = tmp_path / "evil.pth"
    renamed.write_bytes(evil.read_bytes())
    for path in (evil, renamed):
        res = cli("audit", str(path), "--data", str(data), "-q", "--out", str(tmp_path / "r.json"))
        assert res.returncode == 4, res.stderr
        assert "constants_config.json" in res.stderr and "use_pickle" in res.stderr
        assert not marker.exists()


def test_clean_pt2_archives_pass_inspection(files: dict[str, Path]) -> None:
    from fimaudit_torch.archive import inspect_export_archive

    for kind in ("export", "static"):
        inspect_export_archive(files[kind])  # raises on a false positive


def test_state_dict_needs_a_matching_factory(files: dict[str, Path]) -> None:
    with pytest.raises(fimaudit.UsageError, match="holds no architecture"):
        fimaudit.load_model(files["state_dict"])
    with pytest.raises(fimaudit.ModelError, match="do not fit"):
        fimaudit.load_model(files["state_dict"], factory=relu_net, input_shape=SHAPE)


def test_torchscript_without_recorded_shape(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(seeded(tanh_net, 0)), str(path))
    with pytest.raises(fimaudit.UsageError, match="does not record its input shape"):
        fimaudit.load_model(path)
    assert fimaudit.load_model(path, input_shape=SHAPE).input_spec.shape == SHAPE


# -- white box ------------------------------------------------------------------------------------

def finite_difference_fisher(module: nn.Module, x: np.ndarray, step: float = 1e-6) -> float:
    """λ_max from central differences of log p over every coordinate, in float64, no autograd."""
    double = module.double().eval()
    flat = torch.from_numpy(x.astype(np.float64).reshape(-1))
    softmaxed = isinstance(module[-1], nn.Softmax)

    def log_p(v: torch.Tensor) -> torch.Tensor:
        out = double(v.reshape(1, *x.shape))[0]
        return torch.log(out) if softmaxed else torch.log_softmax(out, 0)

    with torch.no_grad():
        p = torch.exp(log_p(flat))
        cols = []
        for i in range(flat.numel()):
            e = torch.zeros_like(flat)
            e[i] = step
            cols.append((log_p(flat + e) - log_p(flat - e)) / (2 * step))
    a = p.sqrt()[:, None] * torch.stack(cols, dim=1)  # A = diag(√p) J, K × d
    return float(np.linalg.eigvalsh((a @ a.T).numpy())[-1])


@pytest.mark.parametrize(
    "factory, shape", [(tanh_net, SHAPE), (relu_net, SHAPE), (relu_mlp, (3, 4, 4))], ids=["tanh-conv", "relu-conv", "relu-mlp"]
)
def test_white_box_equals_finite_differences(factory: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
    module = seeded(factory, 2)
    model = fimaudit_torch.TorchModel(module, input_shape=shape)
    x = inputs(3, shape, seed=5)
    for row, white in zip(x, model.exact_fisher(x)):
        assert white.method == "jacobian"
        assert white.lambda_max == pytest.approx(finite_difference_fisher(seeded(factory, 2), row), rel=1e-5)


def test_lanczos_agrees_with_jacobian() -> None:
    many = lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 40), nn.Tanh(), nn.Linear(40, 80))  # noqa: E731
    model = fimaudit_torch.TorchModel(seeded(many, 3, scale=2.0), input_shape=(3, 4, 4))
    x = inputs(3, (3, 4, 4), seed=2)
    auto = model.exact_fisher(x)  # 80 classes: Lanczos
    jac = model.exact_fisher(x, method="jacobian")
    assert [r.method for r in auto] == ["lanczos"] * 3
    for a, j in zip(auto, jac):
        assert a.lambda_max == pytest.approx(j.lambda_max, rel=1e-9)
        assert a.trace == pytest.approx(j.trace, rel=1e-9)
    small = fimaudit_torch.TorchModel(seeded(tanh_net, 3), input_shape=SHAPE)
    forced = small.exact_fisher(inputs(2), method="lanczos")
    assert [f.lambda_max for f in forced] == pytest.approx([j.lambda_max for j in small.exact_fisher(inputs(2))], rel=1e-9)


class CastsToFloat32(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = seeded(tanh_net, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


def test_white_box_says_when_float64_is_unavailable() -> None:
    model = fimaudit_torch.TorchModel(torch.jit.script(CastsToFloat32()), input_shape=SHAPE)
    x = inputs(2, seed=4)
    white = model.exact_fisher(x)
    assert [w.method for w in white] == ["jacobian-float32"] * 2
    reference = fimaudit_torch.TorchModel(seeded(tanh_net, 0), input_shape=SHAPE).exact_fisher(x)
    assert [w.lambda_max for w in white] == pytest.approx([r.lambda_max for r in reference], rel=1e-4)


def dense_norm(linear: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> float:
    """‖L‖₂ of a linear map from its full Jacobian matrix (small inputs only)."""
    jac = torch.autograd.functional.jacobian(lambda v: linear(v.reshape(1, *shape)).reshape(-1), torch.zeros(int(np.prod(shape)), dtype=torch.float64))
    return float(torch.linalg.matrix_norm(jac, ord=2))


def test_sanity_bound_for_relu_networks() -> None:
    mlp = seeded(relu_mlp, 4)
    norms = [np.linalg.norm(m.weight.detach().double().numpy(), 2) for m in mlp if isinstance(m, nn.Linear)]
    model = fimaudit_torch.TorchModel(mlp, input_shape=(3, 4, 4))
    assert model.sanity_bound == pytest.approx(0.5 * np.prod(np.square(norms)), rel=1e-10)
    assert model.identity.extra["sequential_bound"] == f"{model.sanity_bound:.6g}"
    exact = model.exact_fisher(inputs(8, (3, 4, 4), seed=6))
    assert max(w.lambda_max for w in exact) <= model.sanity_bound


def test_sanity_bound_for_conv_networks() -> None:
    conv_net = seeded(relu_net, 4)
    model = fimaudit_torch.TorchModel(conv_net, input_shape=SHAPE)
    weight = conv_net[0].weight.detach().double()
    # The conv factor is the norm of the circular convolution on the 10×10 grid that holds the
    # zero-padded 8×8 input: an upper bound on the zero-padded convolution's own norm.
    circular = dense_norm(lambda v: torch.nn.functional.conv2d(torch.nn.functional.pad(v, (1, 1, 1, 1), mode="circular"), weight), (3, 10, 10))
    zero_padded = dense_norm(lambda v: torch.nn.functional.conv2d(v, weight, padding=1), SHAPE)
    assert zero_padded <= circular <= 1.5 * zero_padded
    linear = [np.linalg.norm(m.weight.detach().double().numpy(), 2) for m in conv_net if isinstance(m, nn.Linear)]
    assert model.sanity_bound == pytest.approx(0.5 * circular**2 * np.prod(np.square(linear)), rel=1e-10)
    assert max(w.lambda_max for w in model.exact_fisher(inputs(8, seed=6))) <= model.sanity_bound


def test_conv_factor_with_groups_dilation_and_stride() -> None:
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2).double()
    bound = fimaudit_torch.relu_network_bound(nn.Sequential(conv), (4, 9, 9))
    # Stride 1 and circular on the 13×13 grid (9 + dilated kernel 5 − 1): the convolution it bounds.
    def circular_conv(v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(torch.nn.functional.pad(v, (2, 2, 2, 2), mode="circular"), conv.weight, dilation=2, groups=2)

    circular = dense_norm(circular_conv, (4, 13, 13))
    actual = dense_norm(lambda v: conv(v) - conv(torch.zeros_like(v)), (4, 9, 9))
    assert bound == pytest.approx(0.5 * circular**2, rel=1e-10)
    assert 0.5 * actual**2 <= bound


def test_no_sanity_bound_where_it_does_not_apply(files: dict[str, Path]) -> None:
    batchnorm = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    assert fimaudit_torch.TorchModel(batchnorm, input_shape=(3, 4, 4)).sanity_bound is None
    assert load("torchscript", files).sanity_bound is None  # no Python module structure to read
    assert "sequential_bound" not in load("export", files).identity.extra


# -- declared options and input dims the file leaves open ------------------------------------------

def test_unknown_option_refused_by_torch_adapter(tmp_path: Path) -> None:
    path = fimaudit_torch.save_torchscript(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), tmp_path / "m.pt", (4,))
    with pytest.raises(fimaudit.UsageError, match=r"^the torch adapter does not take the option timeout\.") as info:
        fimaudit.load_model(path, timeout=5)
    assert "factory" in info.value.fix and "input_shape" in info.value.fix
    assert fimaudit.load_model(path, device="cpu").num_classes == 3  # a declared option still passes


def test_torchscript_shape_from_data_and_checked_against_a_recorded_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5))
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(net), str(bare))  # records no input shape
    model = fimaudit.load_model(bare, data_shape=(3, 6, 6))
    assert model.input_spec.shape == (3, 6, 6)
    assert model.identity.extra["input_shape_from"] == "data" and model.identity.sha256 == sha256(bare)
    with pytest.raises(fimaudit.ModelError, match=r"fails on probe inputs of shape \(7,\) \(taken from the audited data\)"):
        fimaudit.load_model(bare, data_shape=(7,))  # a flattened row cannot feed a conv net
    recorded = fimaudit_torch.save_torchscript(net, tmp_path / "recorded.pt", (3, 6, 6))
    with pytest.raises(fimaudit.UsageError, match=r"input_shape \(3, 5, 5\) does not fit the TorchScript file"):
        fimaudit.load_model(recorded, input_shape=(3, 5, 5))
    assert fimaudit.load_model(recorded, data_shape=(108,)).input_spec.shape == (3, 6, 6)


@pytest.mark.parametrize("form", ["module", "torchscript", "export"])
def test_convolutional_networks_get_small_batches_on_the_cpu(form: str, tmp_path: Path) -> None:
    """On the CPU a convolutional network with inputs of 64 KiB or more gets batches of at most 16 inputs
    and 4 MiB, found in a module, a TorchScript file and a torch.export program alike; an MLP on the same
    inputs and a CNN on small ones keep the large batches (docs/benchmarks/batch_size.md)."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.Softmax(1))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 96 * 96, 5), nn.Softmax(1))

    def opened(net: nn.Module, shape: tuple[int, ...], **options: object) -> fimaudit_torch.TorchModel:
        net = net.eval()
        if form == "module":
            return fimaudit_torch.TorchModel(net, input_shape=shape, **options)  # type: ignore[arg-type]
        if form == "torchscript":
            return fimaudit.load_model(fimaudit_torch.save_torchscript(net, tmp_path / f"{id(net)}{shape}.pt", shape), **options)
        path = tmp_path / f"{id(net)}{shape}.pt2"
        torch.export.save(torch.export.export(net, (torch.rand(2, *shape),), dynamic_shapes=({0: torch.export.Dim("batch")},)), path)
        return fimaudit.load_model(path, **options)

    assert opened(conv, (3, 96, 96)).max_batch_size == 16  # 108 KiB an input
    assert opened(conv, (3, 256, 256)).max_batch_size == 5  # 4 MiB of 768 KiB inputs
    assert opened(conv, (3, 96, 96), max_batch_size=40).max_batch_size == 40
    assert opened(conv, (3, 64, 64)).max_batch_size == 1024  # 48 KiB an input
    assert opened(mlp, (3, 96, 96)).max_batch_size == 606  # 64 MiB


def test_torch_export_with_dynamic_height_and_width(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=2, max=64), 3: torch.export.Dim("w", min=2, max=64)}
    path = tmp_path / "dyn.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 8, 8),), dynamic_shapes=(dims,)), path)
    with pytest.raises(fimaudit.UsageError, match=r"leaves input dims open: \(3, \?, \?\)"):
        fimaudit.load_model(path)
    model = fimaudit.load_model(path, input_shape=(3, 9, 7))
    assert model.input_spec.shape == (3, 9, 7) and model.identity.sha256 == sha256(path)


# -- the command line -----------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fimaudit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_cli_audits_torch_files(kind: str, files: dict[str, Path], tmp_path: Path) -> None:
    data, out = tmp_path / "x.npy", tmp_path / "report.json"
    np.save(data, inputs(3, seed=7))
    res = cli("audit", str(files[kind]), "--data", str(data), "--out", str(out), "--directions", "16", "--estimator", "sketch", "-q")
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["model"]["adapter"] == "torch" and report["model"]["sha256"] == sha256(files[kind])
    assert report["summary"]["n"] == 3 and all(s["lambda_max"] > 0 for s in report["samples"])


def test_cli_explains_state_dicts(files: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "x.npy"
    np.save(data, inputs(1))
    res = cli("audit", str(files["state_dict"]), "--data", str(data), "-q", "--out", str(tmp_path / "r.json"))
    assert res.returncode == 2 and "holds no architecture" in res.stderr


# -- white-box mode through the core --------------------------------------------------------------

def test_white_box_mode_from_python_and_cli(files: dict[str, Path], tmp_path: Path) -> None:
    model = fimaudit.load_model(files["export"])
    x = inputs(4, seed=3)
    report = fimaudit.audit(model, x, directions=64, estimator="sketch", white_box=True)
    exact = model.exact_fisher(x)
    assert report.config.white_box
    for sample, white in zip(report.samples, exact):
        assert sample.lambda_max_white_box == pytest.approx(white.lambda_max)
        assert sample.white_box_method == white.method
        lo, hi = sample.lambda_max_ci
        assert sample.lambda_max != sample.lambda_max_white_box  # the black-box figure is kept
        assert lo * 0.5 <= white.lambda_max <= hi * 2  # and it is in the right place
    data, out = tmp_path / "x.npy", tmp_path / "r.json"
    np.save(data, x)
    res = cli("audit", str(files["export"]), "--data", str(data), "--out", str(out), "--directions", "16", "-q", "--white-box")
    assert res.returncode == 0, res.stderr
    assert all(s["lambda_max_white_box"] is not None for s in json.loads(out.read_text())["samples"])


def test_white_box_refused_for_a_black_box_adapter(tmp_path: Path) -> None:
    onnx_model = fimaudit.load_model(ROOT / "examples" / "digits.onnx")
    with pytest.raises(fimaudit.UsageError, match="white-box mode needs a model with gradients"):
        fimaudit.audit(onnx_model, np.zeros((1, 1, 8, 8), np.float32), white_box=True)


_member_names = st.sampled_from(["extra/blob.bin", "data/constants/opaque_obj_3", "data/sample_inputs/x.pkl", "notes.pickle", "x/y/z"])
_protocols = st.integers(min_value=2, max_value=5)
_configs = st.recursive(
    st.one_of(st.booleans(), st.integers(-2, 2), st.text(max_size=4)),
    lambda inner: st.dictionaries(st.sampled_from(["use_pickle", "a", "config", "path_name"]), inner, max_size=3)
    | st.lists(inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    member=_member_names, protocol=_protocols, config=_configs, suffix=st.sampled_from([".pt2", ".pt", ".pth"]),
    as_constant=st.booleans(), flag=st.sampled_from([True, False, 1, "yes", None]),
    prefix=st.sampled_from(["opaque_obj_", "custom_obj_", "constant_"]),
)
def test_generated_hostile_archives_never_run_code(
    member: str, protocol: int, config: object, suffix: str, as_constant: bool, flag: object, prefix: str,
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path],
) -> None:
    """Archives generated around a real torch.export file: a pickled payload added under a random
    member name and protocol, or as a constant whose config entry carries a random use_pickle flag
    and name prefix (torch unpickles opaque constants), beside a random JSON document that may carry
    use_pickle anywhere. Loading either refuses with a ModelError or succeeds; the payload never runs."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "code-ran"
    payload = pickle.dumps(Payload(marker), protocol=protocol)
    doc = json.dumps({"doc": config}).encode()
    if as_constant:
        entry = {"path_name": f"{prefix}0", "is_param": False, "use_pickle": flag, "tensor_meta": None}
        edit = _add_constant(entry, f"{prefix}0", payload)
    else:
        edit = _add_member(member, payload)
    step = _rewrite_pt2(files["export"], root / "a.pt2", edit)
    evil = _rewrite_pt2(step, root / f"b{suffix}", _add_member("extra/generated.json", doc))
    try:
        fimaudit.load_model(evil).close()
    except fimaudit.ModelError as exc:
        assert exc.fix  # a refusal names the member and says what to do
    assert not marker.exists()
