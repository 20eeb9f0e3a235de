"""fimaudit: black-box audits of a classifier's sensitivity via the input Fisher information."""
from __future__ import annotations

__version__ = "0.2.0"

from fimaudit.errors import (  # noqa: E402
    AdapterNotFoundError,
    DataError,
    EstimationError,
    FimauditError,
    ModelError,
    OutputError,
    PolicyError,
    QueryError,
    UsageError,
)
from fimaudit.model import CallableModel, InputSpec, ModelIdentity, ProbabilityModel  # noqa: E402
from fimaudit.registry import load_model  # noqa: E402
from fimaudit.report import AuditReport, SampleResult, Summary  # noqa: E402
from fimaudit.runner import audit  # noqa: E402

from fimaudit.attestation import AuditPredicate, Subject, VerificationResult, attest, sign, verify  # noqa: E402
from fimaudit.comparison import Comparison, compare  # noqa: E402
from fimaudit.dsse import SignatureError  # noqa: E402
from fimaudit.keys import KeyFileError  # noqa: E402
from fimaudit.policy import PolicyCheck, PolicyResult, load_policy  # noqa: E402

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
    "SampleResult",
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
    "sign",
    "verify",
]
