"""Reading back what `fimaudit audit` wrote: a bare report, a predicate (report + verdict), or a
signed envelope, which is only read once every given key's signature has verified."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fimaudit.errors import UsageError
from fimaudit.policy import PolicyResult
from fimaudit.report import AuditReport
from fimaudit.signing import AuditPredicate, has_lone_surrogate, verify


@dataclass(frozen=True)
class ReadReport:
    report: AuditReport
    policy: PolicyResult | None = None
    signers: list[str] = field(default_factory=list)  # keyids whose signatures verified


def read_report(path: str | Path, keys: Sequence[Ed25519PublicKey] = ()) -> ReadReport:
    """With keys, verify the envelope at `path` against every one of them first; without, read a
    plain report or predicate (an envelope is refused: its content is not trusted unverified)."""
    if not keys:
        return read_plain(path)
    result = verify(Path(path), list(keys))
    return ReadReport(result.predicate.report, result.predicate.policy, list(result.signers))


def read_plain(path: str | Path) -> ReadReport:
    """An unsigned report or predicate."""
    path = Path(path)
    not_a_report = UsageError(f"{path} is not a fimaudit report.", "pass the JSON report written by fimaudit audit")
    try:
        data = json.loads(path.read_bytes()) if path.is_file() else None
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise not_a_report from exc
    if not isinstance(data, dict):
        raise not_a_report
    if has_lone_surrogate(data):
        # A \ud800 escape parses, but the text cannot be written out again as UTF-8 HTML or JSON.
        raise UsageError(f"{path} holds a string with a lone surrogate escape (such as \\ud800), which is not valid Unicode.",
                         "pass the report exactly as fimaudit audit wrote it")
    if "payloadType" in data:
        raise UsageError(f"{path} is a signed envelope.", "pass --key to verify its signatures as well")
    try:
        if "report" in data:
            predicate = AuditPredicate.model_validate(data)
            return ReadReport(predicate.report, predicate.policy)
        return ReadReport(AuditReport.model_validate(data))
    except ValueError as exc:  # pydantic's ValidationError
        raise not_a_report from exc
