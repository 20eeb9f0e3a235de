"""Where an endpoint is: parsing `triton://` URLs, and the extra headers a request carries."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal, NoReturn
from urllib.parse import urlsplit

from fimaudit.errors import UsageError

Protocol = Literal["http", "grpc"]

# scheme -> (protocol, TLS, default port). Triton's own defaults are 8000 (HTTP) and 8001 (gRPC);
# TLS endpoints normally sit behind a proxy on 443.
SCHEMES: dict[str, tuple[Protocol, bool, int]] = {
    "triton": ("http", False, 8000),
    "triton+http": ("http", False, 8000),
    "triton+https": ("http", True, 443),
    "triton+grpc": ("grpc", False, 8001),
    "triton+grpcs": ("grpc", True, 443),
}

# The environment variable read for extra request headers (e.g. a bearer token) unless the
# caller names another. Headers are never part of the URL, so never part of a report.
HEADER_ENV = "FIMAUDIT_TRITON_HEADERS"

_URL_FORM = "triton[+grpc|+https|+grpcs]://HOST[:PORT]/MODEL[/VERSION]"

# What replaces a secret (a header value, a URL's password) in every message fimaudit prints.
REDACTED = "***"
# The password of `scheme://user:password@host`: from the first ':' of the userinfo to the last '@'
# before the path, so a password holding '@' or ':' is still covered whole.
_URL_PASSWORD = re.compile(r"(//[^/:@?#]*:)[^/?#]*@")


@dataclass(frozen=True)
class Endpoint:
    """One model on one server, as named by a URL."""

    protocol: Protocol
    ssl: bool
    host: str
    port: int
    model: str
    version: str  # "" lets the server pick (its version policy; usually the newest)
    scheme: str

    @property
    def address(self) -> str:
        """host:port as tritonclient wants it (no scheme); IPv6 literals keep their brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The canonical reference: explicit port, no credentials, no query."""
        tail = f"/{self.version}" if self.version else ""
        return f"{self.scheme}://{self.address}/{self.model}{tail}"


def parse_url(reference: str) -> Endpoint:
    """Split a triton URL into an Endpoint, or raise UsageError saying what is wrong with it."""
    parts = urlsplit(reference)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        _bad(reference, f"the scheme '{scheme}' is not one of {', '.join(SCHEMES)}")
    if parts.username or parts.password:
        # Credentials in a URL would be copied into the report's model reference.
        _bad(reference, "it holds credentials", f"drop them and put the header in {HEADER_ENV} instead")
    if parts.query or parts.fragment:
        _bad(reference, "it has a query or fragment; options are passed separately")
    protocol, ssl, default_port = SCHEMES[scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        _bad(reference, "its port is not a number between 0 and 65535")
    segments = [s for s in parts.path.split("/") if s]
    if not parts.hostname or not 1 <= len(segments) <= 2:
        _bad(reference, "it needs a host and a model name")
    version = segments[1] if len(segments) == 2 else ""
    if version and not version.isdigit():
        _bad(reference, f"the model version '{version}' is not a whole number")
    return Endpoint(protocol, ssl, parts.hostname, int(port), segments[0], version, scheme)


def redact_url(reference: str) -> str:
    """`reference` with the password of any `user:password@` replaced by "***"."""
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", reference)


def _bad(reference: str, why: str, fix: str = "") -> NoReturn:
    # Every refusal repeats the URL; a password in it must not reach the terminal or a CI log.
    raise UsageError(f"the Triton URL '{redact_url(reference)}' is not usable: {why}.", fix or f"write it as {_URL_FORM}")


def headers_from_env(variable: str = HEADER_ENV) -> dict[str, str]:
    """Extra request headers from an environment variable: one `Name: value` per line.

    Names are lowercased because gRPC metadata keys must be lowercase (HTTP ignores case).
    The error for a malformed entry names the variable and the line number, never its value.
    """
    text = os.environ.get(variable, "")
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or not value.strip() or any(c.isspace() for c in name):
            raise UsageError(
                f"line {number} of the environment variable {variable} is not a header of the form 'Name: value'.",
                f"set {variable} to lines like 'Authorization: Bearer <token>'",
            )
        headers[name] = value.strip()
    return headers
