"""What a one-click POST says (RFC 8058 §3.2), and which language a page is shown in.

RFC 8058 POSTs carry one field, `List-Unsubscribe=One-Click`, in either form encoding; the
standard library reads both from a body already capped in size, so no form library is needed.
Pure functions over bytes and header values.
"""

from __future__ import annotations

from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl

ONE_CLICK = ("List-Unsubscribe", "One-Click")
"""The field and value of RFC 8058 §3.2, both compared exactly."""
PAGE_FIELD = "page"
"""Hidden field of the confirmation page's form: its POST is answered with a page."""
LOCALES = ("en", "fr")
"""Languages of the pages; the first is the fallback."""
_MAX_FIELDS = 20


def fields(content_type: str, body: bytes) -> dict[str, str] | None:
    """The form's fields (the first value of each name); None if the body is not a form."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(
                body.decode("ascii"), keep_blank_values=True, max_num_fields=_MAX_FIELDS
            )
        except (UnicodeDecodeError, ValueError):
            return None
        out: dict[str, str] = {}
        for name, value in pairs:
            out.setdefault(name, value)
        return out
    if mime == "multipart/form-data":
        return _multipart(content_type, body)
    return None


def _multipart(content_type: str, body: bytes) -> dict[str, str] | None:
    """Fields of a multipart/form-data body (RFC 7578), read by the stdlib MIME parser."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message: Message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        return None
    parts = message.get_payload()
    if not isinstance(parts, list) or len(parts) > _MAX_FIELDS:
        return None
    out: dict[str, str] = {}
    for part in parts:
        if not isinstance(part, Message):
            return None
        if part.get_content_disposition() != "form-data" or part.get_filename() is not None:
            continue
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        try:
            out.setdefault(name, payload.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return out


def is_one_click(form: dict[str, str] | None) -> bool:
    """Whether the form asks to unsubscribe, as RFC 8058 spells it."""
    return form is not None and form.get(ONE_CLICK[0]) == ONE_CLICK[1]


def locale(explicit: str | None, accept_language: str | None) -> str:
    """The page's language: the link's own `locale`, else the best Accept-Language, else en."""
    if explicit:
        primary = explicit.replace("_", "-").split("-", 1)[0].lower()
        if primary in LOCALES:
            return primary
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate((accept_language or "").split(",")[:_MAX_FIELDS]):
        tag, _, params = item.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        primary = tag.strip().split("-", 1)[0].lower()
        if primary in LOCALES and weight > 0:
            ranked.append((-weight, index, primary))
    return min(ranked)[2] if ranked else LOCALES[0]
