"""Settings of DKIM signing (RFC 6376): off unless `domain` is set."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from service.settings.groups import _Refused

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
"""A DNS label of the selector's or domain's name; `_` too, as in `_domainkey`."""
_FIELD_NAME = re.compile(r"[!-9;-~]+")
"""RFC 5322 2.2 ftext: printable ASCII but the colon."""

DEFAULT_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
"""What `h=` lists, of those a mail has: what a reader sees, and the RFC 8058 pair a mailbox
provider acts on, which RFC 8058 3.1 requires the signature to cover."""


def _dns_name(value: str | None, var: str) -> str | None:
    if value is None:
        return None
    if not value.isascii() or not all(_LABEL.fullmatch(part) for part in value.split(".")):
        raise _Refused(
            "is not an ASCII DNS name",
            f"set {var} to letters, digits, hyphens and dots (a Unicode domain in its "
            "IDNA form, xn--…)",
        )
    return value.lower()


class DkimSettings(BaseModel):
    """DKIM-Signature on every mail, when `domain` is set; the key is checked at start-up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain: str | None = None
    """The signing domain (d=); setting it turns signing on. It must be the From address's
    domain or a parent of it, so the signature aligns for DMARC (RFC 7489 3.1.1)."""
    selector: str | None = None
    """s=: the key's public half is published at `<selector>._domainkey.<domain>`."""
    key_file: Path | None = None
    """PEM file of the private key: RSA, 1024 bits or more (2048 recommended), or Ed25519."""
    private_key: SecretStr | None = None
    """The private key's PEM text itself, from the secrets directory (a file named
    HERALD_DKIM__PRIVATE_KEY) or the environment; instead of `key_file`."""
    headers: list[str] = Field(default_factory=lambda: list(DEFAULT_HEADERS))
    """Header fields signed, of those a mail has; `From` must be among them (RFC 6376 5.4)."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return _dns_name(value, "HERALD_DKIM__DOMAIN")

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str | None) -> str | None:
        return _dns_name(value, "HERALD_DKIM__SELECTOR")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        if bad := [h for h in value if not _FIELD_NAME.fullmatch(h)]:
            raise _Refused(
                f"{bad[0]!r} is not a header field name",
                "list header names such as From, Subject (JSON), or unset it for the default",
            )
        if "from" not in {h.lower() for h in value}:
            raise _Refused(
                "does not list From, which every DKIM signature must cover (RFC 6376 5.4)",
                "add From to HERALD_DKIM__HEADERS, or unset it for the default",
            )
        if "dkim-signature" in {h.lower() for h in value}:
            raise _Refused(
                "lists DKIM-Signature, which a signature cannot cover",
                "remove it from HERALD_DKIM__HEADERS",
            )
        return value
