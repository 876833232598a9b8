"""Messages: notifications rendered, composed and (with DKIM) signed into SMTP-ready mail, on
the loop or (see `workers.py`) in worker processes, byte for byte the same but for the
signature's timestamp."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from service.delivery.dkim import Signer
from service.delivery.mime import Email, Letter, compose
from service.events.model import Event, Recipient
from service.outcomes.records import now
from service.render.renderer import Rendered, Renderer
from service.routing import Notification
from service.settings import BrandSettings, LinkSettings, MailSettings


@dataclass(frozen=True, slots=True)
class Message:
    """A notification's mail, and the locale its templates were taken from."""

    email: Email
    locale: str


@dataclass(frozen=True, slots=True)
class Recipe:
    """What a worker needs to build the same mail this process would."""

    templates_dir: Path
    brand: BrandSettings
    default_locale: str
    links: LinkSettings
    mail: MailSettings
    signer: Signer | None = None

    def renderer(self) -> Renderer:
        return Renderer(self.templates_dir, self.brand, self.default_locale, self.links)


class Messages(Protocol):
    async def build(self, n: Notification, at: datetime | None = None) -> Message:
        """Render and compose, dated `at` (now); RecordError or DeliveryError for what the
        event cannot make."""

    async def close(self) -> None: ...


def letter_for(n: Notification, rendered: Rendered) -> Letter:
    """The notification's addressing and its rendered parts, as delivery takes them."""
    return Letter(
        key=n.idempotency_key,
        to_address=n.recipient.email,
        to_name=n.recipient.display_name,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        language=rendered.locale,
        unsubscribe_url=rendered.unsubscribe_url,
    )


def build(
    renderer: Renderer,
    mail: MailSettings,
    n: Notification,
    at: datetime,
    signer: Signer | None = None,
) -> Message:
    """Render, compose and sign: the pure work between a notification and its wire bytes."""
    rendered = renderer.render(n)
    email = compose(letter_for(n, rendered), mail, at)
    if signer is not None:
        email = signer.sign_email(email)
    return Message(email, rendered.locale)


class LocalMessages:
    """On the event loop: no process to start, and right when every core is taken anyway."""

    def __init__(
        self, renderer: Renderer, mail: MailSettings, signer: Signer | None = None
    ) -> None:
        self.renderer = renderer
        self._mail = mail
        self.signer = signer

    async def build(self, n: Notification, at: datetime | None = None) -> Message:
        return build(self.renderer, self._mail, n, at or now(), self.signer)

    async def close(self) -> None:
        return None


_RECIPIENT = tuple(f.name for f in fields(Recipient))
_EVENT = tuple(f.name for f in fields(Event) if f.name != "recipient")
_NOTIFICATION = tuple(f.name for f in fields(Notification) if f.name not in ("recipient", "event"))


def pack(n: Notification) -> tuple[Any, ...]:
    """The notification as plain values, without the consumed record's bytes (rendering never
    reads them): cheaper to pickle than the frozen dataclasses themselves."""
    e = n.event
    return (
        [getattr(n, k) for k in _NOTIFICATION],
        [getattr(n.recipient, k) for k in _RECIPIENT],
        [getattr(e, k) for k in _EVENT],
        None if e.recipient is n.recipient else [getattr(e.recipient, k) for k in _RECIPIENT],
    )


def unpack(packed: tuple[Any, ...]) -> Notification:
    plain, recipient, event, event_recipient = packed
    r = Recipient(**dict(zip(_RECIPIENT, recipient, strict=True)))
    er = r
    if event_recipient is not None:
        er = Recipient(**dict(zip(_RECIPIENT, event_recipient, strict=True)))
    e = Event(**dict(zip(_EVENT, event, strict=True)), recipient=er)
    return Notification(**dict(zip(_NOTIFICATION, plain, strict=True)), recipient=r, event=e)
