"""Herald's exception tree; the attributes an error is made with drive the decision table.

HeraldError              retryable · server_wide · outcome_known · dead_letter · foreseen · reason
├── ConfigError                      start-up stops; the message names file, key and fix
├── RecordError                      dead_letter: the record's own data; redrive it after a fix
│   ├── DecodeError                  the bytes are not a known Avro event
│   │   └── RecordTooLarge           over processing.max_record_bytes: refused unread
│   ├── RecordOverBudget             a string or array over its limit: refused before any work
│   ├── RoutingError                 no route, or a condition or recipient path fails
│   ├── RouteRemoved                 a retry ticket names a route the table lacks
│   ├── MalformedTicket              a retry record whose herald.* headers do not read
│   ├── RenderError                  a template failed on the event's data
│   └── HeaderInjectionError         CR/LF or another control character bound for a header
├── DependencyUnavailable            retryable, server_wide: wait for it, then the same step again
│   ├── SchemaRegistryUnavailable
│   ├── StoreUnavailable             the idempotency store; sending without it could duplicate
│   └── PreferencesUnavailable       the preferences topic did not take a choice: ask again
├── DeliveryError                    the relay refused or failed; carries its reply
│   ├── TransientDeliveryError       retryable: 4xx, a timeout, a connection lost before DATA
│   │   ├── StaleConnection          a pooled connection failed its first command: reconnect
│   │   └── SmtpUnavailable          server_wide: the breaker is open, the relay left alone
│   ├── PermanentDeliveryError       5xx: never retried
│   │   ├── InvalidRecipientError    an address no server could take
│   │   ├── MessageTooLarge          over mail.max_message_bytes, or the relay's SIZE (RFC 1870)
│   │   └── SmtpUtf8Unsupported      a UTF-8 address, and the relay offers no SMTPUTF8
│   └── DeliveryUnknownError         not outcome_known: lost after DATA (RFC 1047), never resent
├── InvalidLink                      a link in a mail that is not an allowed https URL: FAILED
├── RenderTimeout                    a render worker took over its time for one mail: FAILED
├── InvalidToken                     an unsubscribe token that is forged, foreign or expired
├── InternalError                    a bug or an unforeseen failure: tried again a few times,
│                                    then the record is dead-lettered (`internal_error`)
├── TransactionFailed                retryable: outcomes and offsets aborted together
├── ProducerFenced                   fatal: another instance owns this transactional id
├── ConsumerFailed                   fatal: the consumer cannot go on
├── FeedbackError                    a bounce, complaint or webhook that does not read: refused
└── MarkupUnsafe                     a template's CSS cannot be inlined at load: inlined per mail

Attributes are class-level, except `server_wide`, which a `DeliveryError` is made with (a 421
or a refused connection is the relay's, a 450 the message's). Nothing changes them afterwards.
"""

from __future__ import annotations


class HeraldError(Exception):
    """Base of every error Herald raises on purpose."""

    retryable: bool = False
    """Trying the same step again can succeed."""
    server_wide: bool = False
    """A dependency failed as a whole (registry, store, relay), not this record: wait for it."""
    outcome_known: bool = True
    """False when the step may have taken effect although it failed (RFC 1047)."""
    dead_letter: bool = False
    """The record's own data is at fault: its bytes go to the dead-letter topic."""
    foreseen: bool = True
    """False for InternalError: nothing in the record or a dependency explains it."""
    reason: str = "error"
    """Machine-readable cause, as written to outcomes and dead-letter headers."""


class ConfigError(HeraldError):
    """Configuration cannot work; raised before anything is consumed."""

    reason = "config_error"

    def __init__(self, file: str, key: str, problem: str, fix: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"{file}: {key}: {problem}. Fix: {fix}")


class RecordError(HeraldError):
    """A record that can never succeed as it is; redrive it after a fix."""

    dead_letter = True


class DecodeError(RecordError):
    reason = "decode_error"


class RecordTooLarge(DecodeError):
    reason = "record_too_large"


class RecordOverBudget(RecordError):
    """A field of the record is larger than the work Herald agrees to do for one record."""

    reason = "too_large"


class RoutingError(RecordError):
    reason = "routing_error"


class RouteRemoved(RecordError):
    """A retry round for a notification type the routing table lacks."""

    reason = "route_removed"


class MalformedTicket(RecordError):
    """A record on a retry topic whose headers are not what Herald writes."""

    reason = "malformed_ticket"


class RenderError(RecordError):
    reason = "render_error"


class HeaderInjectionError(RecordError):
    reason = "header_injection"


class DependencyUnavailable(HeraldError):
    """Not the record's fault: wait for the dependency and try the same record again."""

    retryable = True
    server_wide = True
    reason = "dependency_unavailable"


class SchemaRegistryUnavailable(DependencyUnavailable):
    reason = "registry_unavailable"


class StoreUnavailable(DependencyUnavailable):
    reason = "idempotency_store_unavailable"


class PreferencesUnavailable(DependencyUnavailable):
    """The broker did not acknowledge a consent choice; the public listener answers 503."""

    reason = "preferences_unavailable"


class DeliveryError(HeraldError):
    """The mail server refused or could not be reached."""

    reason = "smtp_error"

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        enhanced_code: str | None = None,
        text: str | None = None,
        server_wide: bool | None = None,
    ) -> None:
        """`server_wide`: the relay as a whole failed (unreachable, 421, AUTH); defaults to
        the class's own answer."""
        super().__init__(message)
        self.code = code
        self.enhanced_code = enhanced_code
        self.text = text
        if server_wide is not None:
            self.server_wide = server_wide


class TransientDeliveryError(DeliveryError):
    retryable = True
    reason = "smtp_transient"


class StaleConnection(TransientDeliveryError):
    """The first command on a pooled connection failed: the relay may have timed it out.
    Nothing of the message was sent, so a fresh connection may try at once."""


class SmtpUnavailable(TransientDeliveryError):
    """The breaker is open: the server failed repeatedly; sending now would only burn tries."""

    server_wide = True
    reason = "smtp_unavailable"


class PermanentDeliveryError(DeliveryError):
    reason = "smtp_permanent"


class DeliveryUnknownError(DeliveryError):
    """The message may have been accepted; resending blindly could deliver it twice."""

    outcome_known = False
    reason = "reply_lost"


class InvalidRecipientError(PermanentDeliveryError):
    """The address cannot be written to a header or an RCPT TO; no server can accept it."""

    reason = "invalid_address"


class InvalidLink(HeraldError):
    """A link the mail would carry is not an absolute https URL to an allowed host."""

    reason = "invalid_link"


class RenderTimeout(HeraldError):
    """A render worker took longer than `processing.render_timeout_s` for one mail."""

    reason = "render_timeout"


class InvalidToken(HeraldError):
    """An unsubscribe token that does not verify, or has expired; nothing is changed."""

    reason = "invalid_token"

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired
        if expired:
            self.reason = "expired_token"


class InternalError(HeraldError):
    """Anything but a HeraldError while handling a record; the original is its `__cause__`."""

    foreseen = False
    reason = "internal_error"


class MessageTooLarge(PermanentDeliveryError):
    """The composed message is larger than Herald or the relay takes."""

    reason = "too_large"


class SmtpUtf8Unsupported(PermanentDeliveryError):
    """The address needs SMTPUTF8 (RFC 6531) and the relay does not offer it."""

    reason = "smtputf8_unsupported"


class TransactionFailed(HeraldError):
    """The transaction was aborted; nothing in it is visible and the offsets did not move."""

    retryable = True
    reason = "transaction_aborted"


class ProducerFenced(HeraldError):
    """Another instance took over this transactional id, or the producer hit a fatal error."""

    reason = "producer_fenced"


class ConsumerFailed(HeraldError):
    """The consumer cannot go on (a fatal Kafka error, a fenced producer): exit non-zero."""

    reason = "consumer_failed"


class FeedbackError(HeraldError):
    """A report of what happened after the relay accepted a mail (a DSN, an ARF report, a
    provider's webhook) that cannot be read or whose signature does not verify; not retried."""

    reason = "feedback_error"

    def __init__(self, message: str, *, unauthenticated: bool = False) -> None:
        """`unauthenticated`: the report's signature or credentials failed, not its content."""
        super().__init__(message)
        self.unauthenticated = unauthenticated


class MarkupUnsafe(HeraldError):
    """A template's markup breaks an assumption of inlining CSS at load: it inlines per mail."""

    reason = "markup_unsafe"
