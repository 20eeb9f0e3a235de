"""fimaudit: black-box audits of a classifier's sensitivity via the input Fisher information."""
from __future__ import annotations

__version__ = "0.1.0"

from fimaudit.errors import (  # noqa: E402
    AdapterNotFoundError,
    DataError,
    FimauditError,
    ModelError,
    OutputError,
    QueryError,
    UsageError,
)
from fimaudit.model import CallableModel, InputSpec, ModelIdentity, ProbabilityModel  # noqa: E402
from fimaudit.registry import load_model  # noqa: E402
from fimaudit.report import AuditReport, SampleResult, Summary  # noqa: E402
from fimaudit.runner import audit  # noqa: E402

__all__ = [
    "AdapterNotFoundError",
    "AuditReport",
    "CallableModel",
    "DataError",
    "FimauditError",
    "InputSpec",
    "ModelError",
    "ModelIdentity",
    "OutputError",
    "ProbabilityModel",
    "QueryError",
    "SampleResult",
    "Summary",
    "UsageError",
    "__version__",
    "audit",
    "load_model",
]
