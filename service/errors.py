"""Herald's exception tree; each class says whether trying again can help.

HeraldError                        retryable: class attribute, never guessed by callers
├── ConfigError                    start-up stops; message names file, key and fix
├── RecordError                    one record is bad; it goes to the dead-letter topic
│   ├── DecodeError                bytes are not a known Avro event
│   ├── RoutingError               no route, or a condition/recipient cannot be evaluated
│   ├── RenderError                a template failed (missing variable, syntax, sandbox)
│   └── HeaderInjectionError       CR/LF or another control character bound for a header
├── DependencyUnavailable          retryable: a service Herald needs is out of reach; wait
│   ├── SchemaRegistryUnavailable
│   └── StoreUnavailable           the idempotency store; sending without it could duplicate
├── DeliveryError                  SMTP said no or could not be reached; carries the reply
│   ├── TransientDeliveryError     4xx, timeout, connection lost: retry later
│   │   └── SmtpUnavailable        breaker open: wait for the server, do not count a try
│   ├── PermanentDeliveryError     5xx: never retry
│   │   └── InvalidRecipientError  not an address any server could take
│   └── DeliveryUnknownError       connection lost after DATA was sent (RFC 1047): never retry
├── TransactionFailed              retryable: outcomes and offsets aborted together
└── ProducerFenced                 fatal: another instance owns our transactional id
"""

from __future__ import annotations


class HeraldError(Exception):
    """Base of every error Herald raises on purpose."""

    retryable: bool = False
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


class DecodeError(RecordError):
    reason = "decode_error"


class RecordTooLarge(DecodeError):
    reason = "record_too_large"


class RoutingError(RecordError):
    reason = "routing_error"


class RenderError(RecordError):
    reason = "render_error"


class HeaderInjectionError(RecordError):
    reason = "header_injection"


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
    ) -> None:
        super().__init__(message)
        self.code = code
        self.enhanced_code = enhanced_code
        self.text = text
        self.attempts = 1
        """SMTP attempts made before giving up; set by the mailer."""
        self.server_wide = False
        """The server as a whole failed (unreachable, 421, AUTH), not this message."""


class TransientDeliveryError(DeliveryError):
    retryable = True
    reason = "smtp_transient"


class SmtpUnavailable(TransientDeliveryError):
    """The breaker is open: the server failed repeatedly; sending now would only burn tries."""

    reason = "smtp_unavailable"


class PermanentDeliveryError(DeliveryError):
    reason = "smtp_permanent"


class DeliveryUnknownError(DeliveryError):
    """The message may have been accepted; resending blindly could deliver it twice."""

    reason = "reply_lost"


class InvalidRecipientError(PermanentDeliveryError):
    """The address cannot be written to a header or an RCPT TO; no server can accept it."""

    reason = "invalid_address"


class DependencyUnavailable(HeraldError):
    """Not the record's fault: wait for the dependency and try the same record again."""

    retryable = True
    reason = "dependency_unavailable"


class SchemaRegistryUnavailable(DependencyUnavailable):
    reason = "registry_unavailable"


class StoreUnavailable(DependencyUnavailable):
    reason = "idempotency_store_unavailable"


class TransactionFailed(HeraldError):
    """The transaction was aborted; nothing in it is visible and the offsets did not move."""

    retryable = True
    reason = "transaction_aborted"


class ProducerFenced(HeraldError):
    """Another instance took over this transactional id, or the producer hit a fatal error."""

    reason = "producer_fenced"
