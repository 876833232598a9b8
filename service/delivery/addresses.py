"""Addresses and cosmetic header text, as event data gives them and as SMTP and RFC 5322 take
them.

An address is strict: a dot-atom local part of 64 octets at most, a domain of 255 at most in
labels of letters, digits and hyphens (a Unicode domain is IDNA-encoded, UTS #46), the whole
254 at most (RFC 5321 4.5.3.1, RFC 5322 3.4.1). A local part outside ASCII is allowed and needs
a relay that offers SMTPUTF8 (RFC 6531). Cosmetic text (a display name, a subject) is only
shown, so it never stops a mail: controls and bidirectional overrides are removed, runs of
white space become one space, and it is cut to a length.
"""

from __future__ import annotations

import re

import idna

from service.errors import InvalidRecipientError

LOCAL_MAX_OCTETS = 64
DOMAIN_MAX_OCTETS = 255
ADDRESS_MAX_OCTETS = 254
DISPLAY_NAME_MAX_CHARS = 200
SUBJECT_MAX_CHARS = 400

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"(?:{_ATEXT}|[^\x00-\x7f])+(?:\.(?:{_ATEXT}|[^\x00-\x7f])+)*")
"""RFC 5322 dot-atom; with RFC 6531, any non-ASCII character is atext too."""
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_UNSHOWABLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)
"""C0 and C1 controls (white space aside), the zero-width space, bidirectional marks,
embeddings, overrides and isolates (Unicode TR #9), the BOM and interlinear annotation
characters. The zero-width (non-)joiners stay: emoji sequences and some scripts need them."""
_WHITE = re.compile(r"\s+")


def checked_address(address: str) -> str:
    """The address with its domain in ASCII; InvalidRecipientError if no server could take it."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidRecipientError("recipient address has no local part or no domain")
    if not _DOT_ATOM.fullmatch(local) or _UNSHOWABLE.search(local):
        raise InvalidRecipientError("recipient local part is not a dot-atom (RFC 5322 3.4.1)")
    if len(local.encode()) > LOCAL_MAX_OCTETS:
        raise InvalidRecipientError(f"recipient local part is over {LOCAL_MAX_OCTETS} octets")
    ascii_domain = _ascii_domain(domain)
    if len(f"{local}@{ascii_domain}".encode()) > ADDRESS_MAX_OCTETS:
        raise InvalidRecipientError(f"recipient address is over {ADDRESS_MAX_OCTETS} octets")
    return f"{local}@{ascii_domain}"


def _ascii_domain(domain: str) -> str:
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidRecipientError("recipient domain is not a valid IDN") from exc
    labels = domain.split(".")
    if len(domain) > DOMAIN_MAX_OCTETS:
        raise InvalidRecipientError(f"recipient domain is over {DOMAIN_MAX_OCTETS} octets")
    if len(labels) < 2:
        raise InvalidRecipientError("recipient domain is not a fully qualified host name")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidRecipientError("recipient domain is not letters, digits and hyphens")
    return domain


def cosmetic(text: str | None, limit: int) -> str:
    """`text` made safe to show in a header: nothing that could end or reorder the line, one
    space for any white space, at most `limit` characters (an ellipsis marks the cut)."""
    if not text:
        return ""
    shown = _WHITE.sub(" ", _UNSHOWABLE.sub("", text[: 4 * limit])).strip()
    return shown if len(shown) <= limit else shown[: limit - 1].rstrip() + "…"
