"""The exception tree. Every failure a user can cause is one of these, with the fix spelled out.

FimauditError
├── UsageError          bad arguments or configuration                 (exit 2)
├── DataError           audited inputs unusable: shape, NaN, empty      (exit 3)
├── KeyFileError        key files (defined in fimaudit.keys)            (exit 3)
├── ModelError          model cannot be loaded or described             (exit 4)
│   ├── AdapterNotFoundError  no installed adapter handles the reference
│   └── OutputError     outputs not valid probabilities (or logits)
├── QueryError          a query failed after retries                    (exit 5)
├── SignatureError      envelope malformed or not verified (fimaudit.dsse) (exit 5)
├── EstimationError     an estimate or its recording failed: names the sample (exit 6)
└── PolicyError         the policy file itself is wrong                 (exit 2)
"""
from __future__ import annotations


class FimauditError(Exception):
    """Base of every error fimaudit raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, fix: str = "") -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)


class UsageError(FimauditError):
    exit_code = 2


class DataError(FimauditError):
    exit_code = 3


class ModelError(FimauditError):
    exit_code = 4


class AdapterNotFoundError(ModelError):
    pass


class OutputError(ModelError):
    pass


class QueryError(FimauditError):
    exit_code = 5


class PolicyError(FimauditError):
    exit_code = 2


class EstimationError(FimauditError):
    """An estimator (or the recording of its result) failed on one sample; names the sample."""

    exit_code = 6
