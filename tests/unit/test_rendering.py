"""Rendering: both locales, fallback, escaping, and missing variables failing loudly."""

from __future__ import annotations

import email
import email.policy
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import babel.numbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jinja2 import Environment, StrictUndefined, UndefinedError
from jinja2.filters import do_wordwrap
from jinja2.sandbox import SandboxedEnvironment

from service.app import Loaded, load
from service.errors import ConfigError, RenderError
from service.flow.messages import build
from service.render.renderer import PARTS, Rendered, Renderer, _Sandbox
from service.render.wrap import wordwrap as _wordwrap
from service.routing import route
from service.settings import BrandSettings, MailSettings
from tests.conftest import ROOT, event_from_example, project_settings


def _render(
    loaded: Loaded, event_type: str, renderer: Renderer | None = None, **recipient: object
) -> Rendered:
    event = event_from_example(loaded, event_type, **recipient)
    n = next(n for n in route(event, loaded.table) if n.condition_met)
    return (renderer or loaded.renderer).render(n)


ROUTES = [
    (event_type, r.spec.template)
    for event_type, routes in load(project_settings()).table.routes.items()
    for r in routes
]


@pytest.mark.parametrize(("event_type", "template"), ROUTES)
@pytest.mark.parametrize("locale", ["en", "fr"])
def test_every_notification_renders_in_both_locales(
    loaded: Loaded, event_type: str, template: str, locale: str
) -> None:
    """Each shipped template renders subject, inlined HTML and a real text part; optional mail
    (and only optional mail) carries the unsubscribe link in both parts."""
    event = event_from_example(loaded, event_type, locale=locale)
    n = next(n for n in route(event, loaded.table) if n.template == template)
    # The recipient may be another record of the event (e.g. the old address): speak its language.
    n = replace(n, condition_met=True, recipient=replace(n.recipient, locale=locale))
    r = loaded.renderer.render(n)
    assert locale == r.locale
    if n.category.optional:
        assert r.unsubscribe_url is not None
        assert r.unsubscribe_url in r.text
        assert r.unsubscribe_url.replace("&", "&amp;") in r.html
    else:
        assert r.unsubscribe_url is None
    assert r.subject
    assert "\n" not in r.subject
    assert r.html.lstrip().lower().startswith("<!doctype html>")
    assert "<style" not in r.html.split("</head>")[1]  # body styles are inlined
    assert 'style="' in r.html
    assert "<" not in r.text.replace("<https", "")  # text is text, not an HTML dump
    assert len(r.text) > 200


def test_french_formats_money_and_dates(loaded: Loaded) -> None:
    """Amounts and dates follow the recipient's locale and time zone."""
    r = _render(loaded, "order.confirmed")
    assert "Votre commande A-10293 est confirmée" == r.subject
    assert "42,85\xa0€" in r.text
    assert "Bonjour Camille Martin," in r.text
    en = _render(loaded, "order.confirmed", locale="en-US")
    assert "€42.85" in en.text
    assert "Your order A-10293 is confirmed" == en.subject


def test_times_are_shown_in_the_recipient_zone(loaded: Loaded) -> None:
    """22:40:58 UTC is 17:40 in New York; the zone is named."""
    r = _render(loaded, "login.suspicious", time_zone="America/New_York", locale="en-US")
    assert "5:40\u202fPM EST" in r.text or "5:40 PM EST" in r.text


def test_locale_fallback_chain(loaded: Loaded) -> None:
    """fr-CA falls back to fr, an unknown language to the default."""
    assert ["fr", "en"] == loaded.renderer.locale_chain("fr-CA")
    assert ["en"] == loaded.renderer.locale_chain("de-DE")
    assert "fr" == _render(loaded, "user.signed_up", locale="fr_CA").locale
    assert "en" == _render(loaded, "user.signed_up", locale="de").locale


def test_greeting_without_display_name(loaded: Loaded) -> None:
    r = _render(loaded, "user.signed_up", display_name=None)
    assert "Hello," in r.text or "Hi," in r.text
    assert "None" not in r.text


def test_event_data_is_escaped_not_executed(loaded: Loaded) -> None:
    """Markup and template syntax in event data arrive as text: autoescape, never source."""
    r = _render(loaded, "user.signed_up", display_name="<script>alert(1)</script> {{ 7*7 }}")
    assert "<script>" not in r.html
    assert "&lt;script&gt;" in r.html
    assert "{{ 7*7 }}" in r.text
    assert "49" not in r.text.split("\n")[0]


def test_a_line_break_in_a_subject_from_event_data_adds_no_header(loaded: Loaded) -> None:
    """A line break smuggled into a subject would start a new header: the subject is only
    shown, so the receipt goes out, the break a space, and no Bcc header."""
    event = event_from_example(loaded, "order.confirmed")
    payload = dict(event.payload)
    payload["order_number"] = "A-1\r\nBcc: victim@example.com"
    event = type(event)(**{**{f: getattr(event, f) for f in event.__slots__}, "payload": payload})
    (n,) = route(event, loaded.table)
    message = build(loaded.renderer, MailSettings(), n, datetime(2026, 12, 4, tzinfo=UTC))
    parsed = email.message_from_bytes(message.email.data, policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert "A-1 Bcc: victim@example.com" in parsed["Subject"]


def test_missing_variable_fails_loudly(loaded: Loaded, tmp_path: Path) -> None:
    """A template naming a field the event lacks raises RenderError (StrictUndefined)."""
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    subject = tmp_path / "templates" / "en" / "account_activation" / "subject.txt"
    subject.write_text("Welcome {{ payload.coupon_code }}")
    renderer = Renderer(tmp_path / "templates", BrandSettings())
    with pytest.raises(RenderError, match="coupon_code"):
        _render(loaded, "user.signed_up", renderer=renderer, locale="en")


def test_sandbox_blocks_unsafe_attribute_access(loaded: Loaded, tmp_path: Path) -> None:
    """Templates cannot reach Python internals."""
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    subject = tmp_path / "templates" / "en" / "account_activation" / "subject.txt"
    subject.write_text("{{ payload.__class__.__mro__ }}")
    renderer = Renderer(tmp_path / "templates", BrandSettings())
    with pytest.raises(RenderError):
        _render(loaded, "user.signed_up", renderer=renderer, locale="en")


_WRAP_TEXT = st.lists(
    st.sampled_from([*"ab-é .,\t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000", "x" * 30, "word ", "  "]),
    max_size=120,
).map("".join)


@settings(max_examples=1500, deadline=None)
@example("word a", 4, True, False, None)  # a space where a line breaks is dropped
@example("      word a", 3, False, False, None)  # ... but not before the first line
@example("word \xa0 b", 5, False, False, None)  # an NBSP word is dropped like a space
@example("ab  cd\n\nef", 2, True, False, "\r\n")  # long words split; blank paragraphs
@given(
    text=_WRAP_TEXT,
    width=st.integers(min_value=1, max_value=80),
    break_long_words=st.booleans(),
    break_on_hyphens=st.booleans(),
    wrapstring=st.sampled_from([None, "\n", "\r\n  "]),
)
def test_wordwrap_filter_wraps_exactly_as_jinjas(
    text: str, width: int, break_long_words: bool, break_on_hyphens: bool, wrapstring: str | None
) -> None:
    """Property: the fast `wordwrap` gives Jinja's (textwrap's) output for any text, width and
    options: whitespace runs, Unicode spaces textwrap does not break at, words longer than a
    line, paragraphs and blank lines."""
    env = Environment(autoescape=True)
    args = (width, break_long_words, wrapstring, break_on_hyphens)
    assert do_wordwrap(env, text, *args) == _wordwrap(env, text, *args)


def test_text_templates_use_the_fast_wordwrap(loaded: Loaded) -> None:
    """The filter the text parts call is the fast one (a regression would cost 0.6 ms a mail)."""
    template = loaded.renderer._env.get_template("en/order_receipt/body.txt")
    assert _wordwrap is template.environment.filters["wordwrap"]


def test_template_lookup_reads_the_tree_once_at_load(loaded: Loaded, tmp_path: Path) -> None:
    """Which locale has which template is read at load, not stat'ed per mail: once compiled,
    a template renders with the directory gone; fallback still follows the locale chain."""
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    shutil.rmtree(tmp_path / "templates" / "fr" / "account_activation")
    renderer = Renderer(tmp_path / "templates", BrandSettings())
    first = _render(loaded, "user.signed_up", renderer=renderer, locale="fr-CA")
    assert "en" == first.locale  # fr lacks the template: the chain's next locale
    shutil.rmtree(tmp_path / "templates")
    assert first == _render(loaded, "user.signed_up", renderer=renderer, locale="fr-CA")


_NAMES = st.sampled_from(["items", "keys", "get", "__class__", "__len__", "mro", "amount", "x"])


@settings(max_examples=300, deadline=None)
@given(
    data=st.dictionaries(_NAMES, st.integers() | st.text(max_size=3), max_size=5),
    name=_NAMES,
    nested=st.booleans(),
)
def test_dict_fields_read_exactly_as_in_jinjas_sandbox(
    data: dict[str, object], name: str, nested: bool
) -> None:
    """Property: `x.name` on a dict gives what Jinja's own sandbox gives, whether the key is
    there or not, shadows a dict method, or names something unsafe."""
    path = f"d.inner.{name}" if nested else f"d.{name}"
    source = "{{ " + path + " }}"
    context = {"d": {"inner": data} if nested else data}

    def outcome(env: SandboxedEnvironment) -> str:
        try:
            return "ok:" + env.from_string(source).render(context)
        except UndefinedError as exc:
            return f"undefined:{exc}"
        except Exception as exc:  # the sandbox's SecurityError, a TypeError...
            return f"{type(exc).__name__}:{exc}"

    kwargs = {"undefined": StrictUndefined, "autoescape": True}
    assert outcome(_Sandbox(**kwargs)) == outcome(SandboxedEnvironment(**kwargs))


def test_warm_compiles_every_template_before_the_first_mail(loaded: Loaded) -> None:
    """After `warm()`, no template is compiled while mail is rendered."""
    renderer = Renderer(ROOT / "templates", BrandSettings(), links=project_settings().links)
    parts = sum(len(renderer._found[loc]) for loc in renderer.locales) * len(PARTS)
    assert renderer.warm() > parts  # the parts, and the layouts and macros they extend
    compiled: list[str | None] = []
    for env in (renderer._env, renderer._preinlined_env):
        original = env.compile

        def spy(
            source: str,
            name: str | None = None,
            *args: object,
            original: Callable[..., object] = original,
        ) -> object:
            compiled.append(name)
            return original(source, name, *args)

        # A spy in the place of a method: it does not repeat jinja2's overloads of compile.
        env.compile = spy  # type: ignore[method-assign,assignment]
    for event_type, _ in ROUTES:
        for locale in ("en", "fr"):
            _render(loaded, event_type, renderer=renderer, locale=locale)
    assert compiled == []


def test_warm_loads_the_formats_of_every_template_locale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Babel reads a locale's data on first use; `warm()` makes that use, not the first mail."""
    formatted: list[str] = []
    real: Callable[..., str] = babel.numbers.format_currency

    def spy(*args: Any, locale: Any, **kwargs: Any) -> str:
        formatted.append(str(locale))
        return str(real(*args, locale=locale, **kwargs))

    monkeypatch.setattr(babel.numbers, "format_currency", spy)
    renderer = Renderer(ROOT / "templates", BrandSettings())
    renderer.warm()
    assert sorted(renderer.locales) == sorted(formatted)


def test_warm_names_the_template_that_does_not_compile(tmp_path: Path) -> None:
    """A syntax error stops start-up with the file and line, not the first mail of that type."""
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    text = tmp_path / "templates" / "fr" / "account_activation" / "body.txt"
    text.write_text("Bonjour\n{% if %}\n")
    renderer = Renderer(tmp_path / "templates", BrandSettings())
    with pytest.raises(ConfigError) as caught:
        renderer.warm()
    assert str(text) in str(caught.value)
    assert "line 2" in str(caught.value)
