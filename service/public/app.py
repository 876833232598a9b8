"""The public ASGI app: one-click unsubscribe (RFC 8058) at the link's own path, and /healthz.

GET shows a confirmation page and changes nothing (mail scanners follow links); POST with
`List-Unsubscribe=One-Click` records the opt-out and answers 200 once the broker has it. Every
answer carries the same strict security headers; no log line holds a user id or a token.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tokens
from service.errors import InvalidToken, PreferencesUnavailable
from service.metrics import Metrics
from service.public import form, pages
from service.public.link import LinkShape, LinkValues, values
from service.stores.consent import Preference, category_scope, preference_key

log = structlog.get_logger("herald.public")
SOURCE = "one_click"
"""`source` of the preferences this listener writes."""
MAX_BODY = 4096
"""Largest request body read: a one-click form is under 100 bytes, the page's under 200."""
SECURITY_HEADERS = {
    "content-security-policy": pages.CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}
STATUS = {
    "page": 200,
    "unsubscribed": 200,
    "bad_request": 400,
    "not_one_click": 400,
    "forged": 403,
    "expired": 410,
    "unknown_list": 410,
    "too_large": 413,
    "unavailable": 503,
}
"""The status of each result of the unsubscribe route."""

Publish = Callable[[Preference], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What the unsubscribe route decided, before it is written as a response."""

    result: str
    """A key of STATUS, and the `result` label of herald_public_requests_total."""
    lang: str
    page: bool
    """An HTML page (the GET, the page's own form, an error); else a short text/plain body."""
    category: str | None = None


class PublicApp:
    """The routes, bound to the link's shape, the keys, the optional categories and a publisher."""

    def __init__(
        self,
        *,
        link: LinkShape,
        keys: tokens.Keys,
        categories: Mapping[str, str],
        publish: Publish,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        """`categories`: notification type → category, of optional mail only, for links that
        do not carry {category}; a category not among its values is never opted out of.
        `routes`: more endpoints on this listener (the provider webhooks)."""
        self._link = link
        self._keys = keys
        self._categories = dict(categories)
        self._optional = frozenset(categories.values())
        self._publish = publish
        self._metrics = metrics
        self._clock = clock
        self._routes = tuple(routes)

    def asgi(self) -> ASGIApp:
        """The Starlette app, wrapped so every response carries the security headers."""
        app = Starlette(
            routes=[
                Route(self._link.path, self._unsubscribe, methods=["GET", "POST"]),
                Route("/healthz", self._healthz, methods=["GET"]),
                *self._routes,
            ],
            exception_handlers={404: self._not_found, 405: self._not_allowed},
        )
        return SecurityHeaders(app)

    async def _healthz(self, request: Request) -> Response:
        self._metrics.public_requests.labels("healthz", "ok").inc()
        return PlainTextResponse("ok\n")

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        self._metrics.public_requests.labels("other", "not_found").inc()
        return PlainTextResponse("not found\n", status_code=404)

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        self._metrics.public_requests.labels("other", "method_not_allowed").inc()
        headers = exc.headers if isinstance(exc, HTTPException) else None
        return PlainTextResponse("method not allowed\n", status_code=405, headers=headers)

    async def _unsubscribe(self, request: Request) -> Response:
        answer = await self._answer(request)
        self._metrics.public_requests.labels("unsubscribe", answer.result).inc()
        status = STATUS[answer.result]
        log.info("unsubscribe request", method=request.method, result=answer.result, status=status)
        if not answer.page:
            text = "unsubscribed\n" if answer.result == "unsubscribed" else answer.result + "\n"
            return PlainTextResponse(text, status_code=status)
        kind = {"page": "confirm", "unsubscribed": "done"}.get(answer.result, answer.result)
        page = pages.render(kind, answer.lang, category=answer.category)
        return HTMLResponse(page.html, status_code=status)

    async def _answer(self, request: Request) -> Answer:
        """Decide: check the link, then the token, then (POST) the body, then publish."""
        query = request.query_params
        fields: dict[str, str] | None = None
        if request.method == "POST":
            body = await _body(request)
            if body is None:
                lang = form.locale(query.get("locale"), request.headers.get("accept-language"))
                return Answer(result="too_large", lang=lang, page=False)
            fields = form.fields(request.headers.get("content-type", ""), body)
        chosen = (fields or {}).get("locale") or query.get("locale")
        lang = form.locale(chosen, request.headers.get("accept-language"))
        page = request.method != "POST" or (fields or {}).get(form.PAGE_FIELD) == "1"
        link = values(self._link, request.path_params, query)
        if link is None:
            return Answer(result="bad_request", lang=lang, page=page)
        category = link.category or self._categories.get(link.notification)
        if category is None or category not in self._optional:
            return Answer(result="unknown_list", lang=lang, page=page)
        refused = self._refused(link, category)
        if refused is not None:
            return Answer(result=refused, lang=lang, page=page)
        if request.method != "POST":
            return Answer(result="page", lang=lang, page=True, category=category)
        if not form.is_one_click(fields):
            return Answer(result="not_one_click", lang=lang, page=page)
        scope = category_scope(category)
        try:
            preference_key(link.user_id, scope)
        except ValueError:  # a user id no key can hold (the unit separator)
            return Answer(result="bad_request", lang=lang, page=page)
        preference = Preference(
            user_id=link.user_id,
            scope=scope,
            subscribed=False,
            updated_at=datetime.fromtimestamp(self._clock(), UTC),
            source=SOURCE,
        )
        try:
            await self._publish(preference)
        except PreferencesUnavailable as exc:
            log.warning("unsubscribe not recorded", error=str(exc))
            return Answer(result="unavailable", lang=lang, page=page)
        return Answer(result="unsubscribed", lang=lang, page=page, category=category)

    def _refused(self, link: LinkValues, category: str) -> str | None:
        """None for a genuine, live token of this link; else the result that refuses it."""
        try:
            tokens.verify(
                self._keys,
                link.token,
                user_id=link.user_id,
                notification=link.notification,
                category=category,
                now=int(self._clock()),
            )
        except InvalidToken as exc:
            return "expired" if exc.expired else "forged"
        return None


async def _body(request: Request) -> bytes | None:
    """The request body, or None past MAX_BODY (by Content-Length or as it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
    except ClientDisconnect:
        return b""
    return b"".join(chunks)


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, 404s and 405s included."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        self._names = {k.encode() for k in SECURITY_HEADERS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k not in self._names]
                message = {**message, "headers": kept + self._headers}
            await send(message)

        await self._app(scope, receive, send_with_headers)
