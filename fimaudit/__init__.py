"""fimaudit: black-box audits of a classifier's sensitivity via the input Fisher information."""
from __future__ import annotations

from fimaudit._version import __version__
from fimaudit.adapter import InputSpec, ModelIdentity, ProbabilityModel
from fimaudit.comparison import Comparison, compare
from fimaudit.distributed import RayOptions
from fimaudit.errors import (
    AdapterNotFoundError,
    DataError,
    EstimationError,
    FimauditError,
    ModelError,
    OutputError,
    PolicyError,
    QueryError,
    ReproductionError,
    UsageError,
)
from fimaudit.model import CallableModel
from fimaudit.policy import PolicyCheck, PolicyResult, load_policy
from fimaudit.registry import load_model
from fimaudit.report import AuditReport, Reproduction, SampleResult, Selection, Summary
from fimaudit.reproduction import ReproductionResult, reproduce
from fimaudit.runner import audit
from fimaudit.signing import (
    AuditPredicate,
    KeyFileError,
    SignatureError,
    Subject,
    VerificationResult,
    attest,
    sign,
    verify,
)

__all__ = [
    "AdapterNotFoundError",
    "AuditPredicate",
    "AuditReport",
    "CallableModel",
    "Comparison",
    "DataError",
    "EstimationError",
    "FimauditError",
    "InputSpec",
    "KeyFileError",
    "ModelError",
    "ModelIdentity",
    "OutputError",
    "PolicyCheck",
    "PolicyError",
    "PolicyResult",
    "ProbabilityModel",
    "QueryError",
    "RayOptions",
    "Reproduction",
    "ReproductionError",
    "ReproductionResult",
    "SampleResult",
    "Selection",
    "SignatureError",
    "Subject",
    "Summary",
    "UsageError",
    "VerificationResult",
    "__version__",
    "attest",
    "audit",
    "compare",
    "load_model",
    "load_policy",
    "reproduce",
    "sign",
    "verify",
]
