"""Settings of feedback intake: the bounce address, its SMTP listener, and the provider
webhooks' credentials (`HERALD_FEEDBACK__*` once the group is added to `Settings`)."""

from __future__ import annotations

import re

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
    smtp_max_message_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    """Larger bounces are refused with 552 (announced as SIZE, RFC 1870)."""
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
    sns_certificate_hosts: str = r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"
    """Hosts a SigningCertURL may name (https only): AWS's documented pattern."""

    @field_validator("ses_topic_arns")
    @classmethod
    def _arns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arn in value:
            if not _SNS_TOPIC_ARN.match(arn):
                raise ValueError(
                    f"{arn!r} is not an SNS topic ARN (arn:aws:sns:region:account:name)"
                )
        return value
