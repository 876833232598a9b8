"""Signed provider payloads for the feedback tests: keys made here, signatures as each provider
makes them, so the service's checks run unchanged on them."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from service.feedback.signatures import sns_string_to_sign

DATA = "tests/data/feedback"
TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:herald-ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
MAILGUN_KEY = "key-test-only-mailgun-signing"


def rsa_certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A fresh RSA key and a self-signed certificate for it, as PEM (SNS signs with such)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def sns_envelope(
    key: rsa.RSAPrivateKey, message: dict[str, Any], *, version: str = "2", **fields: Any
) -> dict[str, Any]:
    """An SNS Notification carrying `message`, signed as SNS signs it."""
    envelope: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": "b3f6a1c2-0000-4000-8000-000000000001",
        "TopicArn": TOPIC_ARN,
        "Message": json.dumps(message),
        "Timestamp": "2026-11-19T10:15:04.123Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
        **fields,
    }
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
    signature = key.sign(sns_string_to_sign(envelope), padding.PKCS1v15(), algorithm)
    envelope["Signature"] = base64.b64encode(signature).decode()
    return envelope


def ses_bounce(bounce_type: str = "Permanent", *, headers: bool = True) -> dict[str, Any]:
    mail: dict[str, Any] = {
        "timestamp": "2026-11-19T10:15:00.000Z",
        "messageId": "0102018c-ses-own-id-000000",
        "source": "orders@mail.example.net",
        "destination": ["nobody@example.org"],
    }
    if headers:
        mail["headersTruncated"] = False
        mail["headers"] = [
            {"name": "From", "value": "orders@mail.example.net"},
            {"name": "Message-ID", "value": "<a1b2c3d4e5f60718293a4b5c6d7e8f90@mail.example.net>"},
        ]
        mail["commonHeaders"] = {"messageId": "<ignored-when-headers@mail.example.net>"}
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": "nobody@example.org",
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 <nobody@example.org> user unknown",
                }
            ],
            "timestamp": "2026-11-19T10:15:03.000Z",
            "feedbackId": "0102018c-feedback-0001",
        },
        "mail": mail,
    }


def sendgrid_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key and its public half as SendGrid shows it: base64 DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, base64.b64encode(der).decode()


def sendgrid_sign(key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: str) -> str:
    return base64.b64encode(key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


def sendgrid_events() -> list[dict[str, Any]]:
    now = int(time.time())
    return [
        {
            "email": "nobody@example.org",
            "timestamp": now,
            "event": "bounce",
            "type": "bounce",
            "status": "5.1.1",
            "reason": "550 5.1.1 <nobody@example.org>: user unknown",
            "smtp-id": "<a1b2c3d4e5f60718293a4b5c6d7e8f90@mail.example.net>",
            "sg_event_id": "sg-event-bounce-1",
            "sg_message_id": "sg-own-id.filter0001",
        },
        {
            "email": "blocked@example.com",
            "timestamp": now,
            "event": "bounce",
            "type": "blocked",
            "status": "4.7.1",
            "reason": "421 try later",
            "sg_event_id": "sg-event-blocked-2",
        },
        {"email": "a@example.com", "timestamp": now, "event": "open", "sg_event_id": "sg-3"},
        {
            "email": "angry@example.com",
            "timestamp": now,
            "event": "spamreport",
            "sg_event_id": "sg-event-spam-4",
        },
        {
            "email": "happy@example.com",
            "timestamp": now,
            "event": "delivered",
            "response": "250 OK",
            "smtp-id": "<11112222333344445555666677778888@mail.example.net>",
            "sg_event_id": "sg-event-delivered-5",
        },
    ]


def mailgun_payload(
    event: str = "failed", severity: str | None = "permanent", *, key: str = MAILGUN_KEY
) -> dict[str, Any]:
    ts, token = str(int(time.time())), "0f3c6d2e9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f"
    data: dict[str, Any] = {
        "event": event,
        "id": f"mg-{event}-0001",
        "timestamp": time.time(),
        "recipient": "nobody@example.org",
        "message": {"headers": {"message-id": "a1b2c3d4e5f60718293a4b5c6d7e8f90@mail.example.net"}},
        "delivery-status": {"code": 550, "message": "5.1.1 <nobody@example.org> unknown"},
    }
    if severity:
        data["severity"] = severity
    return {
        "signature": {
            "timestamp": ts,
            "token": token,
            "signature": hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest(),
        },
        "event-data": data,
    }
