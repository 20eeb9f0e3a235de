"""PyTorch adapter for fimaudit: TorchScript (.pt/.ts), torch.export (.pt2), state_dicts and live modules.

`fimaudit.load_model("net.pt2")`, `fimaudit.load_model("w.pth", factory=MyNet, input_shape=(3, 32, 32))`,
or `fimaudit_torch.TorchModel(module, input_shape=(3, 32, 32))`. `TorchModel.exact_fisher(x)` is the
white-box reference (docs/adapters.md); `TorchModel.lambda_max_bound()` and `local_lambda_max_bound(x, r)`
bound λ_max from the module's graph (`fimaudit_torch.graph_bound`; docs/math.md, "Bounds from the graph").
Those functions are not re-exported here: the name `graph_bound` is its submodule's, which Python binds on
this package whenever the submodule is imported, so a lazy export of that name would not stay a function.

This module stays light: every fimaudit.load_model call imports all registered adapters, so torch
is imported only when a torch model is actually loaded.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fimaudit.adapter import SimpleAdapter

if TYPE_CHECKING:
    from fimaudit_torch.bound import relu_network_bound
    from fimaudit_torch.files import save_torchscript
    from fimaudit_torch.model import TorchModel
    from fimaudit_torch.whitebox import WhiteBoxFisher

__all__ = ["TorchModel", "WhiteBoxFisher", "adapter", "load", "relu_network_bound", "save_torchscript"]

SUFFIXES = (".pt", ".ts", ".pt2", ".pth")

# What `load` takes; fimaudit.load_model refuses anything else before torch is imported.
OPTIONS = {
    "factory": "a callable building the nn.Module whose weights a state_dict file (.pth) holds",
    "input_shape": "one input's shape without the batch axis, where the file records none (CLI: --input-shape)",
    "data_shape": "one input's shape in the audited data, used where the file records none",
    "outputs": "declare the outputs: probabilities or logits (default: detected)",
    "output_name": "the key (dict outputs) or index (tuple outputs) of the class scores",
    "max_batch_size": "most inputs per forward call (default: from the input size, at most 1024; on the CPU "
                      "at most 16 for a convolutional network with inputs of 64 KiB or more)",
    "device": "torch device to run on, e.g. cpu or cuda:1 (default: CUDA when available)",
}

# Public name -> submodule that defines it, imported on first access.
_LAZY = {
    "TorchModel": "fimaudit_torch.model",
    "WhiteBoxFisher": "fimaudit_torch.whitebox",
    "relu_network_bound": "fimaudit_torch.bound",
    "save_torchscript": "fimaudit_torch.files",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fimaudit_torch' has no attribute {name!r}")


def load(reference: str, **options: Any) -> TorchModel:
    """Load a model file; see fimaudit_torch.model.load_file for the options."""
    from fimaudit_torch.model import load_file

    return load_file(reference, **options)


adapter = SimpleAdapter(name="torch", package="fimaudit-torch", loader=load, suffixes=SUFFIXES, options=OPTIONS)
