"""Routing: the declarative table that maps an event to the notifications it causes.

The table (YAML, `deploy/routing.yaml` by default) is validated once at start-up; errors name
the file, the key and the fix. `route()` is then a pure function of the event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.errors import ConfigError, RoutingError
from service.events.budget import audience
from service.events.model import Event, Recipient


class Category(StrEnum):
    """Why a mail is sent; decides whether the recipient may opt out of it."""

    TRANSACTIONAL = "transactional"
    SECURITY = "security"
    ACCOUNT = "account"
    ACTIVITY = "activity"
    REPORT = "report"
    REMINDER = "reminder"
    MARKETING = "marketing"

    @property
    def optional(self) -> bool:
        """Optional mail respects consent and carries one-click unsubscribe (RFC 8058)."""
        return self not in _MAKE_OR_BREAK

    @property
    def commercial(self) -> bool:
        """Commercial mail is sent only to those who opted in."""
        return self is Category.MARKETING


_MAKE_OR_BREAK = frozenset({Category.TRANSACTIONAL, Category.SECURITY, Category.ACCOUNT})


class Consent(StrEnum):
    """How a category is held to the recipient's choices."""

    NONE = "none"
    """Never consulted: transactional, security and account mail."""
    OPT_OUT = "opt_out"
    """Sent unless the user opted out (of all optional mail, the category or the type)."""
    REQUIRED = "required"
    """Sent only after an opt-in to the category or the type."""


def default_consent(category: Category) -> Consent:
    if category.commercial:
        return Consent.REQUIRED
    return Consent.OPT_OUT if category.optional else Consent.NONE


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    def at_least(self, other: Priority) -> bool:
        return _RANK[self] >= _RANK[other]


_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


_NAME = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
_TEMPLATE = r"^[a-z][a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RouteSpec(_Strict):
    """One notification an event causes."""

    type: str = Field(pattern=_NAME)
    template: str = Field(pattern=_TEMPLATE)
    category: Category
    priority: Priority = Priority.NORMAL
    recipient: str = "recipient"
    """Dotted path to a recipient record: `recipient`, or e.g. `payload.invitee`."""
    when: str | None = None
    """Jinja2 expression over `payload`, `recipient`, `event_type`; the route applies if true."""
    utm: dict[str, str] = Field(default_factory=dict)
    """UTM parameters for this notification's links, over `links.utm`."""
    link_hosts: list[str] = Field(default_factory=list)
    """Hosts this notification's links may point to, in place of `links.allowed_hosts`."""

    @field_validator("recipient")
    @classmethod
    def _recipient_path(cls, v: str) -> str:
        head = v.split(".", 1)[0]
        if head not in ("recipient", "payload"):
            raise ValueError("must be `recipient` or a path under `payload.`")
        return v


class CapSpec(_Strict):
    """At most `max` mails of the category per recipient in any window of `per`."""

    max: int = Field(ge=1)
    per: str = Field(pattern=r"^[1-9][0-9]*[smhd]$")
    """A duration: `90m`, `24h`, `7d`."""

    @property
    def seconds(self) -> int:
        return int(self.per[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[self.per[-1]]


class CategorySpec(_Strict):
    """How one category is held to consent and caps."""

    consent: Consent | None = None
    """Defaults by category: `none` for make-or-break mail, `opt_out` for optional mail,
    `required` for commercial mail."""
    cap: CapSpec | None = None


class EventSpec(_Strict):
    """An event type: where it arrives, how it is encoded, what it causes."""

    topic: str | None = None
    """Defaults to the event type."""
    schema_: str = Field(alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    encoding: Literal["single-object", "confluent"] = "single-object"
    notifications: list[RouteSpec] = Field(min_length=1)


class TableSpec(_Strict):
    version: Literal[1]
    categories: dict[Category, CategorySpec] = Field(default_factory=dict)
    events: dict[str, EventSpec] = Field(min_length=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryRule:
    """The consent rule and cap in force for a category."""

    consent: Consent
    cap: CapSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """A validated route with its condition compiled."""

    spec: RouteSpec
    condition: Callable[..., Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingTable:
    path: Path
    events: Mapping[str, EventSpec]
    routes: Mapping[str, tuple[Route, ...]]
    categories: Mapping[Category, CategoryRule]

    def topic_of(self, event_type: str) -> str:
        return self.events[event_type].topic or event_type

    def express_events(self, threshold: Priority | None) -> frozenset[str]:
        """Event types with a route of `threshold` priority or above (none without one)."""
        if threshold is None:
            return frozenset()
        return frozenset(
            event_type
            for event_type, routes in self.routes.items()
            if any(r.spec.priority.at_least(threshold) for r in routes)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One mail to send (or to account for) because of one event."""

    type: str
    template: str
    category: Category
    priority: Priority
    recipient: Recipient
    idempotency_key: str
    """Stable across redeliveries: event id + notification type + recipient."""
    condition_met: bool
    """False when the route's `when` rejected the event: the notification ends suppressed."""
    utm: Mapping[str, str]
    """The route's UTM parameters (the renderer adds the global ones)."""
    link_hosts: tuple[str, ...] = ()
    """Hosts the route allows links to; empty for the global list."""
    event: Event


_FIX_BY_ERROR = {
    "missing": "add this key",
    "extra_forbidden": "remove this key or correct its spelling",
    "literal_error": "use one of the allowed values",
    "enum": "use one of the allowed values",
    "string_pattern_mismatch": "use lower-case names separated by dots or underscores",
    "too_short": "list at least one entry",
}

_EXPRESSIONS = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def load_table(path: Path) -> RoutingTable:
    """Read and validate the table; any problem is a ConfigError naming file, key and fix."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            str(path),
            "routing_file",
            "file not found",
            "create it (see deploy/routing.yaml) or set HERALD_ROUTING_FILE",
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "(syntax)", f"not valid YAML: {exc}", "fix the YAML") from exc
    try:
        spec = TableSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _dotted(err["loc"])
        raise ConfigError(
            str(path),
            key or "(top level)",
            err["msg"],
            _FIX_BY_ERROR.get(err["type"], "see the table format in docs/routing.md"),
        ) from exc

    routes: dict[str, tuple[Route, ...]] = {}
    seen_types: dict[str, str] = {}
    for event_type, event in spec.events.items():
        compiled = []
        for i, r in enumerate(event.notifications):
            key = f"events.{event_type}.notifications[{i}]"
            if r.type in seen_types:
                raise ConfigError(
                    str(path),
                    f"{key}.type",
                    f"notification type {r.type!r} is already used at {seen_types[r.type]}",
                    "give each route its own notification type",
                )
            seen_types[r.type] = key
            compiled.append(Route(spec=r, condition=_compile(r.when, path, f"{key}.when")))
        routes[event_type] = tuple(compiled)
    categories = {c: _category_rule(c, spec.categories.get(c), path) for c in Category}
    return RoutingTable(path=path, events=spec.events, routes=routes, categories=categories)


def _category_rule(category: Category, spec: CategorySpec | None, path: Path) -> CategoryRule:
    """The category's rule; a rule that would let a preference stop make-or-break mail, or
    send commercial mail without an opt-in, is refused."""
    consent = (spec.consent if spec else None) or default_consent(category)
    key = f"categories.{category}.consent"
    if not category.optional and consent is not Consent.NONE:
        raise ConfigError(
            str(path), key, f"{category} mail must not depend on preferences", "use `none`"
        )
    if category.optional and consent is Consent.NONE:
        raise ConfigError(
            str(path), key, f"{category} mail is optional and must honour consent", "use `opt_out`"
        )
    if category.commercial and consent is not Consent.REQUIRED:
        raise ConfigError(
            str(path), key, "commercial mail needs the recipient's opt-in", "use `required`"
        )
    return CategoryRule(consent=consent, cap=spec.cap if spec else None)


def _compile(expr: str | None, path: Path, key: str) -> Callable[..., Any] | None:
    if expr is None:
        return None
    try:
        return _EXPRESSIONS.compile_expression(expr, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ConfigError(
            str(path),
            key,
            f"not a valid expression: {exc.message}",
            "write a Jinja2 expression such as `payload.total.amount_minor > 0`",
        ) from exc


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker of a dict key that failed: the key is named
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def idempotency_key(event_id: str, notification_type: str, email: str) -> str:
    """128-bit hex digest; holds no address, so it may appear in logs and outcomes."""
    material = f"{event_id}\x1f{notification_type}\x1f{email.strip().lower()}"
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def route(event: Event, table: RoutingTable) -> list[Notification]:
    """Every notification the table gives for this event, suppressed ones included."""
    routes = table.routes.get(event.event_type)
    if not routes:
        raise RoutingError(f"no route for event type {event.event_type!r}")
    context = {
        "payload": event.payload,
        "recipient": _recipient_dict(event.recipient),
        "event_type": event.event_type,
        "event_id": event.event_id,
    }
    out = []
    for r in routes:
        spec = r.spec
        met = _holds(r, context)
        try:
            recipient = _resolve_recipient(event, spec.recipient)
        except RoutingError:
            if met:
                raise
            # A route that does not apply may point at data the event lacks, e.g. no gift
            # recipient; its suppressed outcome is keyed on the event's own recipient.
            recipient = event.recipient
        out.append(
            Notification(
                type=spec.type,
                template=spec.template,
                category=spec.category,
                priority=spec.priority,
                recipient=recipient,
                idempotency_key=idempotency_key(event.event_id, spec.type, recipient.email),
                condition_met=met,
                utm=spec.utm,
                link_hosts=tuple(spec.link_hosts),
                event=event,
            )
        )
    return out


def _holds(r: Route, context: Mapping[str, Any]) -> bool:
    if r.condition is None:
        return True
    try:
        return bool(r.condition(**context))
    except Exception as exc:  # an undefined field, a type error in a comparison, the sandbox
        raise RoutingError(
            f"condition of route {r.spec.type!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _recipient_dict(r: Recipient) -> dict[str, Any]:
    return {
        "user_id": r.user_id,
        "email": r.email,
        "display_name": r.display_name,
        "locale": r.locale,
        "time_zone": r.time_zone,
    }


def _resolve_recipient(event: Event, path: str) -> Recipient:
    if path == "recipient":
        return event.recipient
    node: Any = event.payload
    for part in path.split(".")[1:]:
        if not isinstance(node, Mapping) or part not in node:
            raise RoutingError(f"recipient path {path!r} not found in the event")
        node = node[part]
    if not isinstance(node, Mapping) or not node.get("email"):
        raise RoutingError(f"recipient path {path!r} does not lead to a recipient with an email")
    r = event.recipient
    locale, zone, notes = audience(node.get("locale"), node.get("time_zone"), r.locale, r.time_zone)
    return Recipient(
        user_id=str(node.get("user_id") or ""),
        email=node["email"],
        display_name=node.get("display_name"),
        locale=locale,
        time_zone=zone,
        notes=notes,
    )
