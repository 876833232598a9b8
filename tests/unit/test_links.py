"""Links: signed one-click unsubscribe URLs and UTM tagging."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

from service.events.model import Recipient
from service.render.links import decorate, unsubscribe_url, with_utm

R = Recipient(
    user_id="u 1/é", email="a@example.com", display_name=None, locale="en", time_zone="UTC"
)


def test_unsubscribe_url_is_quoted_and_signed() -> None:
    """Event data cannot break out of the URL, and the token verifies with the secret."""
    url = unsubscribe_url(
        "https://x.example/u?user={user_id}&n={notification}&t={token}",
        b"k",
        R,
        "activity.mention",
        "activity",
    )
    q = parse_qs(urlsplit(url).query)
    assert ["u 1/é"] == q["user"]
    assert "u%201%2F%C3%A9" in url
    expected = hmac.new(b"k", "u 1/é\x1factivity.mention\x1factivity".encode(), hashlib.sha256)
    assert [expected.hexdigest()] == q["t"]
    hostile = Recipient(
        user_id="x\r\nBcc: y",
        email="a@example.com",
        display_name=None,
        locale="en",
        time_zone="UTC",
    )
    assert "\r" not in unsubscribe_url("https://x.example/{user_id}", None, hostile, "n", "c")


def test_utm_added_without_overriding_existing_parameters() -> None:
    url = with_utm(
        "https://x.example/p?a=1&utm_source=own", {"utm_source": "herald", "utm_medium": "email"}
    )
    assert {"a": ["1"], "utm_source": ["own"], "utm_medium": ["email"]} == parse_qs(
        urlsplit(url).query
    )


def test_decorate_tags_html_and_the_same_urls_in_text_but_not_the_kept_one() -> None:
    html = (
        '<a href="https://shop.example/o?id=1&amp;x=2">o</a> '
        '<a href="https://shop.example/unsub">u</a> <a href="mailto:s@shop.example">m</a>'
    )
    text = "Order:\nhttps://shop.example/o?id=1&x=2\nUnsubscribe: https://shop.example/unsub\n"
    h, t = decorate(html, text, {"utm_medium": "email"}, {"https://shop.example/unsub"})
    assert 'href="https://shop.example/o?id=1&amp;x=2&amp;utm_medium=email"' in h
    assert 'href="https://shop.example/unsub"' in h
    assert 'href="mailto:s@shop.example"' in h
    assert "https://shop.example/o?id=1&x=2&utm_medium=email\n" in t
    assert "Unsubscribe: https://shop.example/unsub\n" in t
    assert (html, text) == decorate(html, text, {}, set())
