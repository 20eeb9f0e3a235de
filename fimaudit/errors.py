"""The exception tree. Every failure a user can cause is one of these, with the fix spelled out.

FimauditError
├── UsageError          bad arguments or configuration                 (exit 2)
├── DataError           audited inputs unusable: shape, NaN, empty      (exit 3)
├── KeyFileError        key files: missing, unreadable, wrong kind, locked (exit 3)
├── ModelError          model cannot be loaded or described             (exit 4)
│   ├── AdapterNotFoundError  no installed adapter handles the reference
│   └── OutputError     outputs not valid probabilities (or logits)
├── QueryError          a query failed after retries                    (exit 5)
├── SignatureError      envelope malformed or not verified               (exit 5)
├── ReproductionError   a report did not reproduce: another model, or samples that differ (exit 5)
├── EstimationError     an estimate or its recording failed: names the sample (exit 6)
└── PolicyError         the policy file itself is wrong                 (exit 2)
"""
from __future__ import annotations

# The exit codes of the `fimaudit` command, written once: the CLI's help and README.md's table
# are checked against this (tests/test_errors.py).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "the audit ran but a `--policy` failed (also `verify --require-pass` when the signed verdict is not a pass)",
    2: "usage error (bad option, bad policy file)",
    3: "bad input data or key file",
    4: "model cannot be loaded, or its outputs are not valid probabilities/logits",
    5: "a query failed after retries, a signature did not verify, or a report did not reproduce (`fimaudit reproduce`)",
    6: "an estimate failed on one sample (a fimaudit bug: the message names the sample; a journal keeps the finished ones)",
    130: "interrupted",
}


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


class KeyFileError(FimauditError):
    """A key file is missing, unreadable, of the wrong kind, or locked."""

    exit_code = 3


class ModelError(FimauditError):
    exit_code = 4


class AdapterNotFoundError(ModelError):
    pass


class OutputError(ModelError):
    pass


class QueryError(FimauditError):
    exit_code = 5


class SignatureError(FimauditError):
    """An envelope is malformed, or does not verify against the given keys."""

    exit_code = 5


class ReproductionError(FimauditError):
    """`fimaudit reproduce` found the report does not hold: the model is not the audited one, the
    report's selection or digests do not match its data, or re-computed samples differ."""

    exit_code = 5


class PolicyError(FimauditError):
    exit_code = 2


class EstimationError(FimauditError):
    """An estimator (or the recording of its result) failed on one sample; names the sample."""

    exit_code = 6
