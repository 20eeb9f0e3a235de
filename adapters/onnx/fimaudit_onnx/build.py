"""Build small ONNX classifier graphs from plain numpy weights.

These graphs give fimaudit known-answer models: the same weights feed both the
ONNX file under audit and an exact numpy reference, so any gap between the
black-box Fisher estimate and the truth is attributable to the estimator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OPSET", "IR_VERSION", "mlp_to_onnx", "softmax_linear_to_onnx"]

# Opset 17 is old enough for every current runtime yet has Softmax over an
# arbitrary axis (opset >= 13), which the probability head relies on.
OPSET: int = 17
# IR 8 is the version that introduced opset 17; pinning it (instead of the
# library default, which tracks the newest onnx) keeps files loadable by
# older onnxruntime builds as well as 1.31.
IR_VERSION: int = 8

_ACTIVATIONS: dict[str, str] = {"relu": "Relu", "tanh": "Tanh"}
_OUTPUTS: tuple[str, ...] = ("probabilities", "logits", "sigmoid")
_INPUT_NAME: str = "input"


def _elem_type(dtype: np.dtype) -> int:
    """Map a float numpy dtype to the ONNX tensor element type."""
    if dtype == np.float32:
        return TensorProto.FLOAT
    if dtype == np.float64:
        return TensorProto.DOUBLE
    raise ValueError(f"dtype must be float32 or float64, got {dtype}")


def _check_layers(
    weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], d: int
) -> None:
    """Fail early with a readable message instead of an opaque runtime error."""
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError("need one bias per weight matrix and at least one layer")
    fan_in = d
    for layer, (w, b) in enumerate(zip(weights, biases)):
        if w.ndim != 2 or w.shape[0] != fan_in:
            raise ValueError(
                f"weights[{layer}] has shape {w.shape}; expected ({fan_in}, out)"
            )
        if b.shape != (w.shape[1],):
            raise ValueError(
                f"biases[{layer}] has shape {b.shape}; expected ({w.shape[1]},)"
            )
        fan_in = w.shape[1]


def _dense_nodes(
    x: str, layer: int, out_name: str
) -> tuple[list[onnx.NodeProto], str, str]:
    """MatMul + Add for one layer; returns nodes and the initializer names."""
    w_name, b_name = f"W{layer}", f"b{layer}"
    mm = f"matmul{layer}"
    nodes = [
        helper.make_node("MatMul", [x, w_name], [mm], name=f"MatMul{layer}"),
        helper.make_node("Add", [mm, b_name], [out_name], name=f"Add{layer}"),
    ]
    return nodes, w_name, b_name


def _layer_stack(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    activation: str,
    dtype: np.dtype,
    logits_name: str,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Hidden layers with activations, then a linear layer writing logits_name."""
    # Flatten(axis=1) keeps the (possibly symbolic) batch dimension and
    # collapses every per-sample axis, matching a row-major reshape to (N, d).
    nodes = [helper.make_node("Flatten", [_INPUT_NAME], ["flat"], axis=1, name="Flatten")]
    inits: list[onnx.TensorProto] = []
    h = "flat"
    last = len(weights) - 1
    for layer, (w, b) in enumerate(zip(weights, biases)):
        pre = logits_name if layer == last else f"pre{layer}"
        dense, w_name, b_name = _dense_nodes(h, layer, pre)
        nodes += dense
        inits += [
            numpy_helper.from_array(np.asarray(w, dtype=dtype), w_name),
            numpy_helper.from_array(np.asarray(b, dtype=dtype), b_name),
        ]
        if layer != last:
            h = f"hidden{layer}"
            op = _ACTIVATIONS[activation]
            nodes.append(helper.make_node(op, [pre], [h], name=f"{op}{layer}"))
    return nodes, inits


def _save_single_file(model: onnx.ModelProto, path: Path) -> None:
    """Write weights inline so the model is one self-contained file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=False)


def mlp_to_onnx(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    *,
    activation: str = "relu",
    output: str = "probabilities",
    input_shape: tuple[int, ...],
    dtype: type[np.floating] | np.dtype = np.float32,
    batch: int | None = None,
    path: Path | str | None = None,
) -> onnx.ModelProto:
    """Export an MLP given scikit-learn-style weights (weights[l] is (in, out)).

    Hidden layers apply `activation`; the last layer is linear, followed by
    Softmax over classes when output == "probabilities", or Sigmoid (one output:
    the probability of class 1) when output == "sigmoid". The graph input
    "input" has shape [batch or "N", *input_shape] and is flattened first.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}")
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}")
    np_dtype = np.dtype(dtype)
    elem = _elem_type(np_dtype)
    d = int(np.prod(input_shape))
    _check_layers(weights, biases, d)
    n_classes = int(weights[-1].shape[1])

    logits_name = "logits" if output == "logits" else "logits_raw"
    nodes, inits = _layer_stack(weights, biases, activation, np_dtype, logits_name)
    if output == "probabilities":
        nodes.append(
            helper.make_node("Softmax", [logits_name], [output], axis=-1, name="Softmax")
        )
    if output == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", [logits_name], [output], name="Sigmoid"))

    batch_dim: int | str = "N" if batch is None else int(batch)
    graph = helper.make_graph(
        nodes,
        "fimaudit_mlp",
        [helper.make_tensor_value_info(_INPUT_NAME, elem, [batch_dim, *input_shape])],
        [helper.make_tensor_value_info(output, elem, [batch_dim, n_classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fimaudit",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        _save_single_file(model, Path(path))
    return model


def softmax_linear_to_onnx(
    W: np.ndarray,
    b: np.ndarray,
    input_shape: tuple[int, ...],
    dtype: type[np.floating] | np.dtype = np.float32,
    *,
    output: str = "probabilities",
    batch: int | None = None,
    path: Path | str | None = None,
) -> onnx.ModelProto:
    """Export p = softmax(W x + b) with W of shape (K, d) (one linear layer)."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W must be (K, d), got shape {W.shape}")
    # A single-layer MLP has no hidden activation, so the choice is irrelevant.
    return mlp_to_onnx(
        [W.T],
        [np.asarray(b)],
        activation="relu",
        output=output,
        input_shape=tuple(input_shape),
        dtype=dtype,
        batch=batch,
        path=path,
    )
