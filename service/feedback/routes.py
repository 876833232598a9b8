"""The provider webhooks as starlette routes, `POST /feedback/{provider}`: check the
signature, parse, publish, and answer 200 only once Kafka has every record.

401 for a failed signature or credentials, 403 for an SNS topic not allowed, 400 for a body
that does not parse, 413 for one too large, 503 when Kafka (or AWS's certificate host) does not
answer, so the provider tries again later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from service.errors import DependencyUnavailable, FeedbackError
from service.feedback.model import Feedback
from service.feedback.publisher import FeedbackPublisher
from service.feedback.signatures import (
    SnsCertificates,
    check_basic_auth,
    check_mailgun_signature,
    check_sendgrid_signature,
    check_sns_signature,
)
from service.feedback.webhooks import (
    MAX_BODY_BYTES,
    load_json,
    mailgun_feedback,
    postmark_feedback,
    sendgrid_feedback,
    ses_feedback,
)
from service.settings.feedback import FeedbackSettings

log = structlog.get_logger("herald.feedback")
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
Handler = Callable[[Request, bytes], Awaitable[list[Feedback]]]


class _TooLarge(Exception):
    """The body is over MAX_BODY_BYTES: 413."""


class _Forbidden(Exception):
    """Authentic, maybe, but not from a source this Herald takes: 403."""


class FeedbackWebhooks:
    """The four providers' endpoints, publishing through one FeedbackPublisher."""

    def __init__(
        self,
        settings: FeedbackSettings,
        publisher: FeedbackPublisher,
        *,
        certificates: SnsCertificates | None = None,
    ) -> None:
        """`certificates`: where SNS signing certificates come from (an https GET by default)."""
        self._settings = settings
        self._publisher = publisher
        self._certificates = certificates or SnsCertificates()
        self._handlers: dict[str, Handler] = {
            "ses": self._ses,
            "postmark": self._postmark,
            "sendgrid": self._sendgrid,
            "mailgun": self._mailgun,
        }

    @property
    def routes(self) -> list[Route]:
        return [
            Route(
                f"/feedback/{name}", self._endpoint(name), methods=["POST"], name=f"feedback_{name}"
            )
            for name in self._handlers
        ]

    def router(self) -> Router:
        return Router(routes=self.routes)

    def _endpoint(self, provider: str) -> Callable[[Request], Awaitable[Response]]:
        handler = self._handlers[provider]

        async def endpoint(request: Request) -> Response:
            bound = log.bind(provider=provider)
            try:
                body = await _body(request)
                items = await handler(request, body)
                await self._publisher.publish(items)
            except _TooLarge:
                return _answer(413, f"over {MAX_BODY_BYTES} bytes")
            except _Forbidden as exc:
                bound.warning("feedback webhook refused", error=str(exc))
                return _answer(403, str(exc))
            except FeedbackError as exc:
                bound.warning("feedback webhook refused", error=str(exc))
                return _answer(401 if exc.unauthenticated else 400, str(exc))
            except DependencyUnavailable as exc:
                bound.warning("feedback webhook not published", error=str(exc))
                return _answer(503, "not published; try again later")
            kinds = sorted({i.kind.value for i in items})
            bound.info("feedback webhook published", records=len(items), kinds=kinds)
            return JSONResponse({"published": len(items)})

        return endpoint

    async def _ses(self, _: Request, body: bytes) -> list[Feedback]:
        envelope = load_json(body)
        if not isinstance(envelope, dict):
            raise FeedbackError("SNS: the body is not a JSON object")
        if envelope.get("TopicArn") not in self._settings.ses_topic_arns:
            raise _Forbidden("SNS: the topic is not in feedback.ses_topic_arns")
        pem = await self._certificates.pem(envelope.get("SigningCertURL"))
        check_sns_signature(envelope, pem)
        if envelope.get("Type") == "SubscriptionConfirmation":
            await self._certificates.confirm(envelope.get("SubscribeURL"))
            log.info("SNS subscription confirmed", topic=envelope.get("TopicArn"))
            return []
        if envelope.get("Type") != "Notification":
            return []
        return ses_feedback(envelope)

    async def _postmark(self, request: Request, body: bytes) -> list[Feedback]:
        s = self._settings
        password = s.postmark_password.get_secret_value() if s.postmark_password else None
        check_basic_auth(request.headers.get("authorization"), s.postmark_user, password)
        return postmark_feedback(body)

    async def _sendgrid(self, request: Request, body: bytes) -> list[Feedback]:
        key = self._settings.sendgrid_public_key
        check_sendgrid_signature(
            body,
            request.headers.get(SENDGRID_SIGNATURE),
            request.headers.get(SENDGRID_TIMESTAMP),
            key.get_secret_value() if key else None,
        )
        return sendgrid_feedback(body)

    async def _mailgun(self, _: Request, body: bytes) -> list[Feedback]:
        payload = load_json(body)
        if not isinstance(payload, dict):
            raise FeedbackError("Mailgun: the body is not a JSON object")
        key = self._settings.mailgun_signing_key
        check_mailgun_signature(payload.get("signature"), key.get_secret_value() if key else None)
        return mailgun_feedback(payload)


async def _body(request: Request) -> bytes:
    """The request body, read no further than MAX_BODY_BYTES."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(status: int, error: str) -> Response:
    headers = {"WWW-Authenticate": 'Basic realm="herald"'} if status == 401 else None
    return JSONResponse({"error": error}, status_code=status, headers=headers)
