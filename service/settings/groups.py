"""The groups of Herald's settings (kafka, smtp, mail, links, …), each validated on its own."""

from __future__ import annotations

import ipaddress
import re
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator


class _Refused(ValueError):
    """A validator's refusal that knows the fix, which `load_settings` puts in its ConfigError
    in place of the generic one."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list."""
    group_id: str = "herald"
    client_id: str = "herald"
    topic_prefix: str = ""
    """Prepended to every topic Herald reads or writes, e.g. `staging.` for a shared cluster."""
    results_topic: str = "notification.outcomes"
    dead_letter_topic: str = "herald.dead-letter"
    own_topic_partitions: int = Field(default=3, ge=1)
    """Partitions of the results, dead-letter and retry topics when Herald creates them."""
    transactional_id: str | None = None
    """Unique per instance and stable across its restarts; default `<group_id>-<hostname>`."""
    transaction_timeout_ms: int = Field(default=20_000, ge=1_000)
    """The broker aborts a transaction left open this long (e.g. by a crash or a stuck
    client), which also bounds how long readers of the results topic can be held up."""
    results_encoding: Literal["single-object", "confluent"] = "single-object"
    """Wire format of outcome records; `confluent` registers the schema under `<topic>-value`."""
    session_timeout_ms: int = Field(default=45_000, ge=1_000)
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    statistics_interval_ms: int = Field(default=5_000, ge=0)
    """How often librdkafka reports consumer lag to the metrics; 0 turns it off."""
    config: dict[str, str] = Field(default_factory=dict)
    """Extra librdkafka properties (security.protocol, sasl.*, …), applied to every client."""
    secret_config: dict[str, SecretStr] = Field(default_factory=dict)
    """Like `config`, for values that must never be logged (sasl.password, ssl.key.password)."""

    def librdkafka(self) -> dict[str, str | int | float | bool]:
        """Connection properties shared by the consumer and the producer."""
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
        }
        conf.update(self.config)
        conf.update({k: v.get_secret_value() for k, v in self.secret_config.items()})
        return conf


class RegistrySettings(_Group):
    url: str | None = None
    """Confluent-compatible Schema Registry; needed only for topics with `encoding: confluent`."""
    basic_auth_user_info: SecretStr | None = None
    """`user:password` for the registry."""


class SmtpSettings(_Group):
    host: str = "127.0.0.1"
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    """`starttls` (port 587) or `implicit` (port 465); `none` only for a local capture server."""
    validate_certs: bool = True
    ca_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    pool_size: int = Field(default=4, ge=1, le=256)
    """Persistent connections kept open to the server."""
    express_slots: int = Field(default=1, ge=0, le=255)
    """Connections of the pool only express mail may use (see `processing.express_priority`),
    so a password reset never waits for bulk mail to finish its DATA. Below `pool_size`."""
    max_attempts: int = Field(default=3, ge=1, le=20)
    """In-process tries for a transient failure before it moves to the retry topics."""
    retry_backoff_ms: int = Field(default=200, ge=0)
    """First backoff; doubles per attempt, with full jitter."""
    local_hostname: str | None = None
    """Name sent in EHLO; defaults to the machine's FQDN."""
    breaker_threshold: int = Field(default=5, ge=1)
    """Consecutive server-wide failures (refused connection, 421, AUTH) that open the breaker."""
    breaker_cooldown_s: float = Field(default=10.0, gt=0)
    """While open, consumption pauses; after this a single probe may try again."""

    @field_validator("express_slots")
    @classmethod
    def _below_pool_size(cls, value: int, info: ValidationInfo) -> int:
        pool = info.data.get("pool_size")
        if pool is not None and value >= pool:
            raise ValueError(f"must be below smtp.pool_size ({pool}), or bulk mail gets none")
        return value

    @field_validator("username", "password")
    @classmethod
    def _no_credentials_in_clear(cls, value: object, info: ValidationInfo) -> object:
        host = info.data.get("host", "")
        if value is not None and info.data.get("tls") == "none" and not _loopback(host):
            raise _Refused(
                f"with HERALD_SMTP__TLS=none the credentials would cross the network to "
                f"{host} in clear",
                "set HERALD_SMTP__TLS=starttls (port 587) or implicit (port 465); `none` "
                "takes credentials only for a relay on this host (127.0.0.1, ::1, localhost)",
            )
        return value


def _loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`, as written: a name is not resolved, since what it
    resolves to can change after the check."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _addr_spec(value: str | None) -> str | None:
    """A plain addr-spec (no display name, no CR/LF): it goes into headers and MAIL FROM."""
    if value is None:
        return None
    from email.headerregistry import Address

    try:
        parsed = Address(addr_spec=value)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not an email address: {exc}") from exc
    if not parsed.domain or any(c in value for c in "\r\n<> "):
        raise ValueError("not a plain email address such as no-reply@example.com")
    return value


_HEADER_BREAKERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 controls, DEL, and the Unicode line and paragraph separators: CR/LF would end the
header and start another (`Bcc:`), and some parsers break lines at NEL (U+0085), U+2028 and
U+2029 too."""
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MIN_HASH_SECRET = 32
"""Characters of `mail.recipient_hash_secret`: a short key can be found by guessing it against
a digest of a known address."""


def _display_name(value: str) -> str:
    if found := _HEADER_BREAKERS.search(value):
        raise _Refused(
            f"holds the control character U+{ord(found.group()):04X}, which could end the "
            "From header and start another",
            "set HERALD_MAIL__FROM_NAME to a name on one line, without control characters",
        )
    return value


def _domain_name(value: str | None) -> str | None:
    """Letters, digits and hyphens in dot-separated labels (RFC 1123), at most 253 in all.

    A Unicode name is refused rather than converted: Python's own `idna` codec implements
    IDNA 2003, which maps some names (`ß`, `ς`) to other domains than IDNA 2008 does.
    """
    if value is None:
        return None
    if not value.isascii():
        raise _Refused(
            "is not ASCII",
            "give the domain's IDNA form (xn--…), as `idn2` or the registrar shows it, in "
            "HERALD_MAIL__MESSAGE_ID_DOMAIN",
        )
    if len(value) > 253 or not all(_LABEL.fullmatch(label) for label in value.split(".")):
        raise _Refused(
            "is not a domain name",
            "set HERALD_MAIL__MESSAGE_ID_DOMAIN to a domain of yours such as mail.example.com "
            "(letters, digits, hyphens and dots), or unset it to use FROM_ADDRESS's",
        )
    return value


class MailSettings(_Group):
    from_address: str = "no-reply@example.com"
    from_name: str = "Herald"
    reply_to: str | None = None
    message_id_domain: str | None = None
    """Right-hand side of Message-ID; defaults to the domain of `from_address`."""
    recipient_in_outcomes: Literal["masked", "hashed"] = "masked"
    """How the recipient appears on the results topic: `j***@example.com`, or an
    HMAC-SHA-256 of the lower-cased address keyed with `recipient_hash_secret`."""
    recipient_hash_secret: SecretStr | None = Field(default=None, validate_default=True)
    """Key of the hashed recipient; required with `hashed`. Without a key, a digest of an
    address is reversed by hashing a list of addresses."""
    default_locale: str = "en"
    """End of every locale fallback chain; templates must exist for it."""
    relay_metadata: Literal["none", "postmark"] = "none"
    """`postmark`: the Message-ID also as Postmark metadata (`X-PM-Metadata-herald-message-id`),
    which Postmark returns in its webhooks, so its bounces and complaints name the mail."""
    max_message_bytes: int = Field(default=10_485_760, ge=65_536)
    """A composed message larger than this fails (`too_large`) instead of being sent; a relay
    that advertises a smaller SIZE (RFC 1870) is held to that."""

    _check_addresses = field_validator("from_address", "reply_to")(_addr_spec)
    _check_name = field_validator("from_name")(_display_name)
    _check_domain = field_validator("message_id_domain")(_domain_name)

    @property
    def id_domain(self) -> str:
        """The domain of Herald's Message-IDs: `message_id_domain`, else `from_address`'s."""
        return self.message_id_domain or self.from_address.rsplit("@", 1)[-1]

    @field_validator("recipient_hash_secret")
    @classmethod
    def _key_for_hashes(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        hashed = info.data.get("recipient_in_outcomes") == "hashed"
        if hashed and value is None:
            raise _Refused(
                "is required with HERALD_MAIL__RECIPIENT_IN_OUTCOMES=hashed",
                "set HERALD_MAIL__RECIPIENT_HASH_SECRET to a random key of at least "
                f"{MIN_HASH_SECRET} characters (`openssl rand -hex 32`) and keep it, or use "
                "HERALD_MAIL__RECIPIENT_IN_OUTCOMES=masked",
            )
        if value is not None and len(value.get_secret_value()) < MIN_HASH_SECRET:
            raise _Refused(
                f"is shorter than {MIN_HASH_SECRET} characters",
                "set it to a random key such as `openssl rand -hex 32` prints",
            )
        return value


class BrandSettings(_Group):
    product_name: str = "Herald Demo"
    logo_url: str | None = None
    logo_width: int = Field(default=160, ge=1, le=600)
    logo_height: int = Field(default=40, ge=1, le=600)
    primary_color: str = Field(default="#1a56db", pattern=r"^#[0-9a-fA-F]{6}$")
    support_email: str = "support@example.com"
    postal_address: str = "1 Example Street, 75000 Paris, France"
    website_url: str = "https://example.com"


UNSUBSCRIBE_FIELDS = frozenset({"user_id", "notification", "category", "token"})


class LinkSettings(_Group):
    unsubscribe_url: str = (
        "https://example.com/unsubscribe?user={user_id}&list={notification}&token={token}"
    )
    """One-click unsubscribe URL of optional mail (RFC 8058): {user_id}, {notification},
    {category} and {token} are filled in, URL-quoted. With any optional route it must hold
    {token}, so a link cannot be forged."""
    unsubscribe_secret: SecretStr | None = None
    """Key that signs new tokens (HMAC-SHA256); required with any optional route."""
    unsubscribe_key_id: str = Field(default="k1", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    """Id of that key, written into each token, so keys can rotate."""
    unsubscribe_previous_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """Earlier keys by id (JSON), which still verify the links they signed until these expire."""
    unsubscribe_token_days: int = Field(default=400, ge=31, le=3650)
    """How long a link works; CAN-SPAM wants an opt-out to work 30 days after sending."""
    allow_http: bool = False
    """Let links in mail be plain `http` too; by default every link must be `https`."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Hosts links may point to (a name covers its subdomains); empty allows any. A route's
    `link_hosts` replaces it for that route."""
    utm: dict[str, str] = Field(default_factory=dict)
    """UTM parameters added to every link, e.g. {"utm_source": "herald", "utm_medium": "email"};
    a route's `utm` adds to or overrides them, and `utm_campaign` defaults to its type."""

    @field_validator("unsubscribe_url")
    @classmethod
    def _unsubscribe_url(cls, value: str) -> str:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        if unknown := fields - UNSUBSCRIBE_FIELDS:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}}: use {sorted(UNSUBSCRIBE_FIELDS)}"
            )
        if not value.startswith("https://"):
            raise ValueError("must be an https URL (RFC 8058)")
        return value

    @field_validator("unsubscribe_previous_keys")
    @classmethod
    def _key_ids(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", k)]
        if bad:
            raise ValueError(f"key ids are 1-32 letters, digits, '-' or '_': {bad[0]!r}")
        return value


class HttpSettings(_Group):
    host: str = "127.0.0.1"
    """Interface for /metrics, /healthz and /readyz; `0.0.0.0` in a container."""
    port: int = Field(default=9464, ge=0, le=65535)


class ProcessingSettings(_Group):
    max_in_flight: int = Field(default=256, ge=1)
    """Records being processed at once; past it the partitions are paused."""
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """How long SIGTERM, or a partition revocation, waits for in-flight records before
    cancelling them and handing them back uncommitted."""
    commit_interval_ms: int = Field(default=200, ge=10)
    """How often finished records' outcomes and offsets are committed in one transaction."""
    express_priority: Literal["critical", "high", "off"] = "critical"
    """Topics with a route of this priority or above are read by a consumer of their own (in
    the same group) with its own in-flight budget and transactions, and their mail jumps the
    SMTP queue: a bulk backlog never queues ahead of them. `off`: one consumer for all."""
    express_max_in_flight: int = Field(default=32, ge=1)
    """Records of the express topics being processed at once."""
    render_workers: int = Field(default=0, ge=0, le=64)
    """Processes that render and compose mail beside the event loop, on other cores. 0: on
    the loop. One per spare core pays off when a single instance has cores to itself."""
    render_timeout_s: float = Field(default=10.0, gt=0)
    """With render workers: how long one mail may take before its worker is stopped and the
    notification fails (`render_timeout`)."""
    max_internal_attempts: int = Field(default=3, ge=1, le=10)
    """Tries of a step that fails with an unforeseen exception before its record (or
    notification) is dead-lettered as `internal_error`."""
    max_string_chars: int = Field(default=4_096, ge=256)
    """Longest string a record may hold (any field); a longer one refuses the record
    (`too_large`) before any template or header work."""
    max_array_items: int = Field(default=200, ge=1)
    """Most items an array or map of a record may hold: templates loop over them, and a mail
    with more lines than that is no mail anyone reads."""
    max_record_bytes: int = Field(default=1_048_576, ge=1024)
    """Larger records are dead-lettered unread (`record_too_large`): an event that big is a
    producer's bug, and rendering it would hold up every other record for seconds."""


class IdempotencySettings(_Group):
    backend: Literal["sqlite", "redis"] = "sqlite"
    """`sqlite`: embedded, one instance per group. `redis`: shared by every instance."""
    path: Path = Path("var/idempotency.sqlite3")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    retention_h: int = Field(default=168, ge=1)
    """How long a notification's key is remembered; redeliveries older than this resend."""


class RetrySettings(_Group):
    topic: str = "herald.retry"
    """Base name of the retry topics, one per delay: `herald.retry.60s`, `herald.retry.600s`, …"""
    delays_s: list[int] = Field(default_factory=lambda: [60, 600, 3600], min_length=1)
    """Wait before each retry round; after the last, the notification fails."""
    max_age_s: int = Field(default=86_400, ge=1)
    """A notification older than this (since the event) fails instead of retrying again."""


class LogSettings(_Group):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"
