"""The public listener's pure parts: the one-click form, the page's language, the link's shape."""

from __future__ import annotations

import httpx
import pytest

from service.errors import ConfigError
from service.public import form, pages
from service.public.link import LinkShape, shape, values
from service.settings import LinkSettings

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def _encoded(data: dict[str, str], *, multipart: bool) -> tuple[str, bytes]:
    """Content type and body as a real HTTP client encodes the form."""
    files = {"attachment": ("a.txt", b"ignored", "text/plain")} if multipart else None
    request = httpx.Request("POST", "https://example.com/", data=data, files=files)
    return request.headers["content-type"], request.read()


@pytest.mark.parametrize("multipart", [False, True])
def test_both_form_encodings_of_rfc_8058_are_read(multipart: bool) -> None:
    """RFC 8058 allows either encoding; the field is found in both, files are skipped."""
    content_type, body = _encoded({**ONE_CLICK, "page": "1"}, multipart=multipart)
    fields = form.fields(content_type, body)
    assert {**ONE_CLICK, "page": "1"} == fields
    assert form.is_one_click(fields)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=one-click"),
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click-Please"),
        ("application/x-www-form-urlencoded", b"Unsubscribe=One-Click"),
        ("application/x-www-form-urlencoded", b""),
        ("application/x-www-form-urlencoded", "List-Unsubscribe=One-Click\xe9".encode()),
        ("application/json", b'{"List-Unsubscribe": "One-Click"}'),
        ("text/plain", b"List-Unsubscribe=One-Click"),
        ("multipart/form-data; boundary=x", b"List-Unsubscribe=One-Click"),
        ("", b"List-Unsubscribe=One-Click"),
    ],
)
def test_anything_but_the_exact_one_click_field_is_not_one_click(
    content_type: str, body: bytes
) -> None:
    assert not form.is_one_click(form.fields(content_type, body))


def test_too_many_fields_are_not_a_form() -> None:
    body = "&".join(f"f{i}=x" for i in range(50)).encode() + b"&List-Unsubscribe=One-Click"
    assert form.fields("application/x-www-form-urlencoded", body) is None


@pytest.mark.parametrize(
    ("explicit", "accept", "expected"),
    [
        (None, None, "en"),
        (None, "fr-FR,fr;q=0.9,en;q=0.8", "fr"),
        (None, "de-DE, en;q=0.5, fr;q=0.7", "fr"),
        (None, "fr;q=0, en", "en"),
        (None, "de, it", "en"),
        (None, "en;q=abc, fr;q=0.1", "fr"),
        ("fr_CA", "en", "fr"),
        ("de", "fr", "fr"),
        ("", "fr", "fr"),
    ],
)
def test_the_page_language_is_the_links_then_the_browsers_then_english(
    explicit: str | None, accept: str | None, expected: str
) -> None:
    assert expected == form.locale(explicit, accept)


def test_the_default_unsubscribe_url_is_served_at_its_path_and_query() -> None:
    link = shape(LinkSettings().unsubscribe_url)
    assert (
        LinkShape(
            path="/unsubscribe",
            query={"user": "user_id", "list": "notification", "token": "token"},
        )
        == link
    )
    found = values(link, {}, {"user": "u-1", "list": "activity.mention", "token": "t"})
    assert found is not None
    assert ("u-1", "activity.mention", None, "t") == (
        found.user_id,
        found.notification,
        found.category,
        found.token,
    )
    assert values(link, {}, {"user": "u-1", "list": "activity.mention"}) is None
    assert values(link, {}, {"user": "", "list": "activity.mention", "token": "t"}) is None
    assert values(link, {}, {"user": "u" * 600, "list": "a", "token": "t"}) is None


def test_placeholders_in_the_path_become_path_parameters() -> None:
    link = shape("https://mail.example.com/u/{user_id}/{notification}/{category}/{token}?x=1")
    assert LinkShape(path="/u/{user_id}/{notification}/{category}/{token}", query={}) == link
    found = values(link, {"user_id": "u", "notification": "n", "category": "c", "token": "t"}, {})
    assert found is not None
    assert "c" == found.category


@pytest.mark.parametrize(
    "template",
    [
        "https://example.com/unsubscribe?user={user_id}&list={notification}",
        "https://example.com/unsubscribe?user=id-{user_id}&list={notification}&t={token}",
        "https://example.com/unsubscribe?user={user_id}&list={notification}&t={token}&u={user_id}",
        "https://example.com/unsubscribe?user={user_id}&list={email}&t={token}",
    ],
)
def test_a_url_the_listener_cannot_read_back_is_refused_at_start(template: str) -> None:
    with pytest.raises(ConfigError, match="public listener cannot serve"):
        shape(template)


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_every_page_exists_in_both_languages_and_escapes_what_it_shows(lang: str) -> None:
    assert set(pages.MESSAGES["en"]) == set(pages.MESSAGES[lang])
    page = pages.render("confirm", lang, category="<b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in page.html
    assert "<b>" not in page.html
    assert f'<html lang="{lang}">' in page.html
    assert f"<style>{pages.STYLE}</style>" in page.html  # unescaped, so its CSP hash holds
