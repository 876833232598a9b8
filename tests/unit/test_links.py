"""Links: signed one-click unsubscribe URLs and UTM tagging."""

from __future__ import annotations

import html as html_lib
from urllib.parse import parse_qs, urlsplit

import pytest

from service import tokens
from service.errors import InvalidLink, RenderError
from service.events.model import Recipient
from service.render.links import LinkPolicy, check_links, decorate, unsubscribe_url, with_utm

R = Recipient(
    user_id="u 1/é", email="a@example.com", display_name=None, locale="en", time_zone="UTC"
)


KEYS = tokens.Keys(current="k2", secrets={"k2": b"key two", "k1": b"key one"})
EXPIRES = 2_000_000_000


def test_unsubscribe_url_is_quoted_and_carries_a_token_that_verifies() -> None:
    """Event data cannot break out of the URL, and the token verifies for exactly this link."""
    url = unsubscribe_url(
        "https://x.example/u?user={user_id}&n={notification}&t={token}",
        KEYS,
        R,
        "activity.mention",
        "activity",
        EXPIRES,
    )
    q = parse_qs(urlsplit(url).query)
    assert ["u 1/é"] == q["user"]
    assert "u%201%2F%C3%A9" in url
    (token,) = q["t"]
    assert token.startswith("v1.k2.2000000000.")
    claims = tokens.verify(
        KEYS, token, user_id="u 1/é", notification="activity.mention", category="activity", now=0
    )
    assert ("k2", EXPIRES) == (claims.key_id, claims.expires_at)
    hostile = Recipient(
        user_id="x\r\nBcc: y",
        email="a@example.com",
        display_name=None,
        locale="en",
        time_zone="UTC",
    )
    assert "\r" not in unsubscribe_url("https://x.example/{user_id}", None, hostile, "n", "c", 0)


def test_a_token_template_without_a_key_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="no key"):
        unsubscribe_url("https://x.example/?t={token}", None, R, "n", "c", EXPIRES)


@pytest.mark.parametrize(
    ("href", "allow_http", "hosts", "problem"),
    [
        ("javascript:alert(document.cookie)", False, (), "not an absolute https URL"),
        ("JavaScript:alert(1)", True, (), "not an absolute https or http URL"),
        ("data:text/html,<script>", False, (), "not an absolute https URL"),
        ("http://shop.example/a", False, (), "not an absolute https URL"),
        ("https://shop.example/a\r\nInjected", False, (), "white space"),
        ("https://shop.example/a b", False, (), "white space"),
        ("https://shop.example@evil.example/", False, (), "names a user"),
        ("//evil.example/", False, (), "not an absolute https URL"),
        ("https://evil.example/", False, ("shop.example",), "not an allowed host"),
        ("https://shop.example.evil.example/", False, ("shop.example",), "not an allowed host"),
    ],
)
def test_a_link_that_is_not_an_allowed_https_url_fails_the_mail(
    href: str, allow_http: bool, hosts: tuple[str, ...], problem: str
) -> None:
    html = f'<p><a class="b" href="{html_lib.escape(href)}">go</a></p>'
    with pytest.raises(InvalidLink, match=problem) as info:
        check_links(html, LinkPolicy(allow_http=allow_http, hosts=hosts))
    assert "invalid_link" == info.value.reason


@pytest.mark.parametrize(
    ("html", "policy"),
    [
        ('<a href="https://shop.example/o?id=1&amp;x=2">o</a>', LinkPolicy()),
        ('<a href="https://www.shop.example/">o</a>', LinkPolicy(hosts=("shop.example",))),
        ('<a href="http://shop.example/">o</a>', LinkPolicy(allow_http=True)),
        (
            '<a href="mailto:help@shop.example">m</a><img src="https://cdn.example/l.png">',
            LinkPolicy(),
        ),
    ],
)
def test_links_that_are_allowed_pass(html: str, policy: LinkPolicy) -> None:
    check_links(html, policy)


def test_an_image_source_is_a_link_too() -> None:
    with pytest.raises(InvalidLink, match="src"):
        check_links('<img src="http://tracker.example/p.gif">', LinkPolicy())


def test_utm_decoration_never_reads_a_url_as_a_pattern() -> None:
    """A URL holding what `re.sub` would read as a group reference is written as it is."""
    url = r"https://shop.example/p/\1/\g<0>"
    html = f'<a href="{url}">x</a>'
    _, t = decorate(html, f"see {url}\n", {"utm_medium": "email"}, set())
    assert f"see {url}?utm_medium=email\n" == t


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
