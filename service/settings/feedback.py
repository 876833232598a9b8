"""Settings of feedback: intake (the bounce address, its SMTP listener, the provider webhooks'
credentials) and what the feedback processor suppresses (`HERALD_FEEDBACK__*`)."""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

_SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}$")


class FeedbackSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    verp_prefix: str = Field(default="bounces", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """Local part before `+<token>` of the VERP envelope sender: `bounces+<token>@domain`."""
    bounce_domain: str | None = None
    """Domain of the bounce address; the SMTP listener takes mail for it only (550 otherwise).
    Required to start the listener."""
    smtp_host: str = "127.0.0.1"
    """Interface of the bounce listener; `0.0.0.0` behind the MX that forwards to it."""
    smtp_port: int = Field(default=2526, ge=0, le=65535)
    """0 picks a free port (tests)."""
    max_report_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    """Larger reports are refused: by the listener with 552 (announced as SIZE, RFC 1870), by
    `herald feedback` as unreadable."""
    publish_timeout_s: float = Field(default=30.0, gt=0)
    """How long a report waits for Kafka's acknowledgement before it is answered 451 or 503."""
    postmark_user: str | None = None
    """HTTP basic auth user Postmark's webhook is configured with; unset refuses Postmark."""
    postmark_password: SecretStr | None = None
    sendgrid_public_key: SecretStr | None = None
    """The Event Webhook's verification key (base64 DER or PEM, ECDSA P-256); unset refuses
    SendGrid."""
    mailgun_signing_key: SecretStr | None = None
    """Mailgun's HTTP webhook signing key; unset refuses Mailgun."""
    ses_topic_arns: tuple[str, ...] = ()
    """SNS topics whose SES notifications are taken; empty refuses SES."""
    suppress_hard_bounces: bool = True
    """A hard bounce suppresses the address for every mail (scope ALL, reason hard_bounce)."""
    suppress_complaints: bool = True
    """A complaint suppresses the address for optional mail (scope OPTIONAL, reason complaint)."""
    soft_bounce_limit: int = Field(default=3, ge=1, le=1000)
    """This many distinct soft bounces of one address within the window suppress it for a
    while (scope ALL, reason soft_bounces)."""
    soft_bounce_window_h: int = Field(default=72, ge=1, le=24 * 365)
    """The rolling window soft bounces are counted in, in hours."""
    soft_bounce_suppress_days: int = Field(default=7, ge=1, le=3650)
    """How long the soft-bounce suppression lasts, in days."""

    @field_validator("sendgrid_public_key")
    @classmethod
    def _p256(cls, value: SecretStr | None) -> SecretStr | None:
        """Refused at start-up rather than at the first webhook: a key that does not load."""
        if value is None:
            return value
        text = value.get_secret_value().strip()
        try:
            if "-----BEGIN" in text:
                key = serialization.load_pem_public_key(text.encode())
            else:
                key = serialization.load_der_public_key(base64.b64decode(text))
        except (ValueError, binascii.Error) as exc:
            raise ValueError("is not a public key in PEM or base64 DER") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError("is not an ECDSA P-256 key (SendGrid's Event Webhook key)")
        return value

    @field_validator("ses_topic_arns")
    @classmethod
    def _arns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arn in value:
            if not _SNS_TOPIC_ARN.match(arn):
                raise ValueError(
                    f"{arn!r} is not an SNS topic ARN (arn:aws:sns:region:account:name)"
                )
        return value
