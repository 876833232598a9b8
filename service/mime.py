"""Composition: rendered parts plus envelope become one RFC 5322 message, safely."""

from __future__ import annotations

import email.policy
import email.utils
import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage

from service.errors import HeaderInjectionError, InvalidRecipientError
from service.rendering import Rendered
from service.routing import Notification
from service.settings import MailSettings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ADDR = re.compile(r"^[^@\s\"(),:;<>\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
"""Deliberately plain addr-spec: dot-atom local part and a hostname; quoted forms are refused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Email:
    """A message ready for SMTP: envelope plus wire bytes."""

    message_id: str
    envelope_from: str
    envelope_to: str
    data: bytes
    """CRLF-terminated RFC 5322 bytes, as DATA sends them."""


def message_id(key: str, domain: str) -> str:
    """Deterministic, so a resend of the same notification carries the same Message-ID."""
    return f"<{key}@{domain}>"


def _checked_name(value: str | None, what: str) -> str:
    if value is None:
        return ""
    if _CONTROL.search(value):
        raise HeaderInjectionError(f"{what} holds a control character (CR/LF?)")
    return value


def _checked_address(value: str) -> str:
    if _CONTROL.search(value) or not _ADDR.match(value):
        raise InvalidRecipientError("recipient address is not a valid addr-spec")
    return value


def compose(n: Notification, r: Rendered, mail: MailSettings, now: datetime) -> Email:
    """Build the multipart/alternative message; refuses any header value with CR/LF."""
    to_addr = _checked_address(n.recipient.email)
    domain = mail.message_id_domain or mail.from_address.rsplit("@", 1)[-1]
    mid = message_id(n.idempotency_key, domain)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = Address(display_name=mail.from_name, addr_spec=mail.from_address)
    msg["To"] = Address(
        display_name=_checked_name(n.recipient.display_name, "display name"), addr_spec=to_addr
    )
    if mail.reply_to:
        msg["Reply-To"] = mail.reply_to
    msg["Subject"] = _checked_name(r.subject, "subject")
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = mid
    # RFC 3834: tells auto-responders (vacation replies) not to answer.
    msg["Auto-Submitted"] = "auto-generated"
    if r.unsubscribe_url is not None:
        # RFC 8058 one-click: mailbox providers POST to the URL; only optional mail has it.
        msg["List-Unsubscribe"] = f"<{_checked_name(r.unsubscribe_url, 'unsubscribe URL')}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(r.text, subtype="plain", charset="utf-8")
    msg.add_alternative(r.html, subtype="html", charset="utf-8")
    # After set_content, which clears every Content-* header of the message.
    msg["Content-Language"] = r.locale
    try:
        data = msg.as_bytes()
    except (ValueError, UnicodeError) as exc:
        raise InvalidRecipientError(f"message cannot be serialised: {exc}") from exc
    return Email(message_id=mid, envelope_from=mail.from_address, envelope_to=to_addr, data=data)
