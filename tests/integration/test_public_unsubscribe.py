"""One-click unsubscribe on the public listener, against the real broker: a real HTTP client,
and Debian's chromium driven by playwright. Links are made as mail carries them
(`service.render.links.unsubscribe_url`), with the host swapped for the listener's."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import confluent_kafka
import httpx
import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)
from playwright.async_api import async_playwright

from service.app import Loaded
from service.events.model import Recipient
from service.kafka.admin import ensure_state_topics, state_topics
from service.metrics import Metrics
from service.outcomes.records import decode_outcome
from service.public import PublicServer, start_public
from service.public.app import SECURITY_HEADERS
from service.render.links import unsubscribe_url
from service.render.renderer import unsubscribe_keys
from service.settings import Settings
from service.stores.codec import StateCodec
from service.stores.consent import PREFERENCE_SCHEMA, Preference, PreferenceCodec
from service.testing import SmtpServer, free_port
from service.tokens import Keys
from tests.addresses import LogTap
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for
from tests.integration.test_policy_stage import _event

NOTIFICATION, CATEGORY = "activity.mention", "activity"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    settings: Settings
    server: PublicServer
    keys: Keys
    codec: PreferenceCodec
    metrics: Metrics

    def link(self, user_id: str, *, expires_at: int | None = None, keys: Keys | None = None) -> str:
        """The link a mail to `user_id` carries, pointed at this listener."""
        recipient = Recipient(
            user_id=user_id,
            email="ada@example.com",
            display_name=None,
            locale="en",
            time_zone="UTC",
        )
        url = unsubscribe_url(
            self.settings.links.unsubscribe_url,
            keys or self.keys,
            recipient,
            NOTIFICATION,
            CATEGORY,
            expires_at if expires_at is not None else int(time.time()) + 86_400,
        )
        assert url.startswith("https://example.com/")
        return url.replace("https://example.com", f"http://127.0.0.1:{self.server.port}", 1)

    def records(self) -> list[tuple[bytes, Preference]]:
        """Every record of the preferences topic, read up to its end offsets."""
        topic = self.settings.kafka.topic_prefix + self.settings.policy.preferences_topic
        c = confluent_kafka.Consumer(
            {"bootstrap.servers": self.settings.kafka.bootstrap_servers, "group.id": "unused"}
        )
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            ends = {
                p: c.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)
                for p in parts
            }
            left = {p: hi for p, (lo, hi) in ends.items() if hi > lo}
            c.assign([confluent_kafka.TopicPartition(topic, p, ends[p][0]) for p in left])
            out: list[tuple[bytes, Preference]] = []
            deadline = time.monotonic() + 30
            while left:
                assert time.monotonic() < deadline, f"could not read up to {left}"
                m = c.poll(0.2)
                if m is None or m.error() is not None:
                    continue
                key, value, offset = m.key(), m.value(), m.offset()
                assert key is not None
                assert value is not None
                assert offset is not None
                out.append((key, self.codec.decode(value)))
                if offset + 1 >= left.get(m.partition() or 0, 0):
                    left.pop(m.partition() or 0, None)
            return out
        finally:
            c.close()


def _categories(loaded: Loaded) -> dict[str, str]:
    """Notification type → category of the optional routes, as the wiring passes them."""
    return {
        r.spec.type: r.spec.category.value
        for routes in loaded.table.routes.values()
        for r in routes
        if r.spec.category.optional
    }


@pytest.fixture
async def listener(make_settings: Any, loaded: Loaded) -> AsyncIterator[Listener]:
    settings: Settings = make_settings(public={"host": "127.0.0.1", "port": 0})
    ensure_state_topics(settings)
    keys = unsubscribe_keys(settings.links)
    assert keys is not None
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        server = await start_public(
            settings, keys, loaded.store, metrics, _categories(loaded), stack
        )
        assert server is not None
        yield Listener(
            settings=settings,
            server=server,
            keys=keys,
            codec=PreferenceCodec(StateCodec(loaded.store, PREFERENCE_SCHEMA)),
            metrics=metrics,
        )


def test_the_state_topics_are_created_compacted(make_settings: Any) -> None:
    """Preferences and suppressions keep the latest record per key; a second call is a no-op."""
    settings: Settings = make_settings()
    assert state_topics(settings) == ensure_state_topics(settings)
    assert [] == ensure_state_topics(settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in state_topics(settings)]
    for future in admin.describe_configs(resources).values():
        assert "compact" == future.result(timeout=30)["cleanup.policy"].value


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False, timeout=30)


def _check(response: httpx.Response, status: int) -> None:
    """The status, never a redirect, and the security headers on every answer."""
    assert status == response.status_code, response.text
    assert SECURITY_HEADERS == {k: response.headers[k] for k in SECURITY_HEADERS}


async def test_a_one_click_post_records_the_opt_out_before_answering(
    listener: Listener, herald_log_output: LogTap
) -> None:
    """200 once the broker has it, in either form encoding; repeated, it is written again."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    url = listener.link(user)
    async with _client() as client:
        first = await client.post(url, data=ONE_CLICK)
        second = await client.post(url, data=ONE_CLICK, files={"f": ("a.txt", b"x")})
    for response in (first, second):
        _check(response, 200)
        assert response.headers["content-type"].startswith("text/plain")
    records = listener.records()
    assert 2 == len(records)
    for key, pref in records:
        assert f"{user}\x1fcategory:{CATEGORY}".encode() == key
        assert (user, f"category:{CATEGORY}", False, "one_click") == (
            pref.user_id,
            pref.scope,
            pref.subscribed,
            pref.source,
        )
    unsubscribed = listener.metrics.public_requests.labels("unsubscribe", "unsubscribed")
    assert 2.0 == unsubscribed._value.get()
    # Herald's lines, not those of this test's own HTTP client (httpx logs each URL).
    logged = [
        line
        for line in herald_log_output.take().splitlines()
        if line.startswith("{") and json.loads(line).get("logger") not in ("httpx", "httpcore")
    ]
    assert any("unsubscribe request" in line for line in logged)
    token = url.rsplit("token=", 1)[1]
    assert [] == [line for line in logged if user in line or token in line]


@pytest.mark.parametrize(
    ("change", "status", "result"),
    [
        ("tampered", 403, "forged"),
        ("another_user", 403, "forged"),
        ("unknown_key", 403, "forged"),
        ("expired", 410, "expired"),
        ("missing_token", 400, "bad_request"),
        ("unknown_list", 410, "unknown_list"),
    ],
)
async def test_a_link_that_does_not_verify_changes_nothing(
    listener: Listener, change: str, status: int, result: str
) -> None:
    """Refused with a 4xx page or text, and no record published, on GET and POST alike."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    url = listener.link(user)
    if change == "tampered":
        url = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    elif change == "another_user":
        url = url.replace(f"user={user}", "user=someone-else")
    elif change == "unknown_key":
        url = listener.link(user, keys=Keys(current="k9", secrets={"k9": b"not Herald's key"}))
    elif change == "expired":
        url = listener.link(user, expires_at=int(time.time()) - 1)
    elif change == "missing_token":
        url = url.split("&token=", 1)[0]
    elif change == "unknown_list":
        url = url.replace(f"list={NOTIFICATION}", "list=security.password_reset")
    async with _client() as client:
        post = await client.post(url, data=ONE_CLICK)
        get = await client.get(url, headers={"accept-language": "fr"})
    _check(post, status)
    _check(get, status)
    assert get.headers["content-type"].startswith("text/html")
    assert "<form" not in get.text
    assert '<html lang="fr">' in get.text
    assert 2.0 == listener.metrics.public_requests.labels("unsubscribe", result)._value.get()
    assert [] == listener.records()


async def test_get_shows_the_confirmation_page_and_changes_nothing(listener: Listener) -> None:
    """A scanner following the link only gets a page with the button; in French if asked."""
    url = listener.link(f"user-{uuid.uuid4().hex[:8]}")
    async with _client() as client:
        en = await client.get(url)
        fr = await client.get(url, headers={"accept-language": "fr-FR,fr;q=0.9"})
        head = await client.head(url)
    for response in (en, fr, head):
        _check(response, 200)
    assert '<form method="post">' in en.text
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in en.text
    assert ">Unsubscribe</button>" in en.text
    assert ">Me désabonner</button>" in fr.text
    assert [] == listener.records()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"List-Unsubscribe=One-Click-Now", "application/x-www-form-urlencoded"),
        (b"", "application/x-www-form-urlencoded"),
        (b'{"List-Unsubscribe": "One-Click"}', "application/json"),
    ],
)
async def test_a_post_that_is_not_one_click_is_a_400_and_changes_nothing(
    listener: Listener, body: bytes, content_type: str
) -> None:
    url = listener.link(f"user-{uuid.uuid4().hex[:8]}")
    async with _client() as client:
        response = await client.post(url, content=body, headers={"content-type": content_type})
    _check(response, 400)
    assert [] == listener.records()


async def test_a_body_over_the_limit_is_refused_unread(listener: Listener) -> None:
    url = listener.link(f"user-{uuid.uuid4().hex[:8]}")
    padding = "x" * 10_000
    async with _client() as client:
        response = await client.post(url, data={**ONE_CLICK, "padding": padding})
    _check(response, 413)
    assert [] == listener.records()


async def test_a_choice_the_broker_does_not_take_is_a_503(
    make_settings: Any, loaded: Loaded
) -> None:
    """No broker answers: the delivery times out in librdkafka, the page says to try again."""
    settings: Settings = make_settings(
        public={"port": 0}, kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    )
    keys = unsubscribe_keys(settings.links)
    assert keys is not None
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        server = await start_public(
            settings,
            keys,
            loaded.store,
            metrics,
            _categories(loaded),
            stack,
            publish_timeout_ms=500,
        )
        assert server is not None
        codec = PreferenceCodec(StateCodec(loaded.store, PREFERENCE_SCHEMA))
        dead = Listener(settings=settings, server=server, keys=keys, codec=codec, metrics=metrics)
        async with _client() as client:
            response = await client.post(
                dead.link("user-1"),
                data={**ONE_CLICK, "page": "1"},
                headers={"accept-language": "fr"},
            )
    _check(response, 503)
    assert "Veuillez réessayer" in response.text
    assert 1.0 == metrics.public_requests.labels("unsubscribe", "unavailable")._value.get()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("chromium is not installed: run `make system-deps`")


@pytest.mark.parametrize(
    ("locale", "button", "done"),
    [("fr-FR", "Me désabonner", "Vous êtes désabonné(e)"), ("en-GB", "Unsubscribe", "You are")],
)
async def test_in_chromium_the_button_unsubscribes_and_says_so(
    listener: Listener, locale: str, button: str, done: str
) -> None:
    """Debian's chromium, headless, under the page's own CSP: the page in the browser's
    language, its button posts the one-click form, the answer is the confirmation page."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = await browser.new_page(locale=locale)
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text) if m.type == "error" else None)
            shown = await page.goto(listener.link(user))
            assert shown is not None
            assert 200 == shown.status
            assert [] == listener.records()
            assert button == (await page.locator("button#unsubscribe").inner_text()).strip()
            async with page.expect_navigation() as navigation:
                await page.locator("button#unsubscribe").click()
            answer = await navigation.value
            assert answer is not None
            assert 200 == answer.status
            assert answer.request.redirected_from is None
            assert (await page.locator("h1").inner_text()).startswith(done)
            assert 0 == await page.locator("form").count()
            assert [] == violations  # a CSP violation (the style's hash) would be reported
        finally:
            await browser.close()
    records = listener.records()
    assert [(user, False)] == [(pref.user_id, pref.subscribed) for _, pref in records]


async def test_the_link_a_mail_carries_stops_the_next_optional_mail_only(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """End to end through a running Herald: a mention goes out with List-Unsubscribe; a POST
    to that link on Herald's own public listener records the opt-out; the next mention to the
    user ends SUPPRESSED/opted_out while a password reset to them is sent."""
    settings = make_settings()
    create_topics(settings)
    user, email = f"u-{uuid.uuid4().hex[:8]}", "clicker@example.com"
    produce(settings, [_event(loaded, "comment.mentioned", user, email)])
    async with running(settings) as herald:
        await read_topic(settings, "notification.outcomes", 1)
        [mail] = [m for m in smtp.received if email in m.envelope_to]
        header = mail.message["List-Unsubscribe"]
        assert "List-Unsubscribe=One-Click" == mail.message["List-Unsubscribe-Post"]
        link = str(header).strip("<>")
        assert link.startswith("https://example.com/")
        local = link.replace("https://example.com", f"http://127.0.0.1:{herald.public_port}", 1)
        async with _client() as client:
            _check(await client.post(local, data=ONE_CLICK), 200)
        state = herald.policy
        assert state is not None
        await wait_for(lambda: state.tables.choices(user), what="the opt-out followed")
        produce(
            settings,
            [
                _event(loaded, "comment.mentioned", user, email),
                _event(loaded, "password.reset_requested", user, email),
            ],
        )
        later = await read_topic(settings, "notification.outcomes", 3)
    outcomes = sorted(
        (o["notification_type"], o["status"], o["reason"] or "")
        for o in (decode_outcome(m.value(), loaded.store) for m in later)
    )
    assert [
        ("activity.mention", "SENT", ""),
        ("activity.mention", "SUPPRESSED", "opted_out"),
        ("security.password_reset", "SENT", ""),
    ] == outcomes
