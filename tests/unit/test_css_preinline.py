"""CSS inlined once per template at load gives the documents css_inline gave on every message.

Equivalence, precisely: two HTML strings are the same document when html5ever (the HTML5
parser css_inline uses) parses each and serialises the tree back, and `html.parser` then reads
the same sequence of doctype, start tags, end tags, text (character references decoded,
adjacent text merged) and comments from both, each start tag with the same attributes and
values; only attribute order may differ (css_inline moves `class` first). Style attributes are
compared as whole strings: same declarations, same order, same spelling.
"""

from __future__ import annotations

import shutil
from collections.abc import MutableMapping
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import css_inline
import pytest

from service.app import Loaded, load
from service.errors import RenderError
from service.render.links import decorate
from service.render.renderer import Renderer
from service.routing import Notification, route
from service.settings import Settings
from service.tools.preview import Page
from tests.conftest import ROOT, event_from_example, project_settings

_NORMALISER = css_inline.CSSInliner(
    inline_style_tags=False,
    keep_style_tags=True,
    keep_link_tags=True,
    keep_at_rules=True,
    load_remote_stylesheets=False,
)


class _Tokens(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[tuple[Any, ...]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tokens.append(("start", tag, tuple(sorted(attrs))))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self.tokens.append(("end", tag))

    def handle_data(self, data: str) -> None:
        if self.tokens and self.tokens[-1][0] == "text":
            data = self.tokens.pop()[1] + data
        self.tokens.append(("text", data))

    def handle_comment(self, data: str) -> None:
        self.tokens.append(("comment", data))

    def handle_decl(self, decl: str) -> None:
        self.tokens.append(("doctype", decl))


def document(html: str) -> list[tuple[Any, ...]]:
    """The tree an HTML5 parser builds from `html`, as a comparable token list."""
    tokens = _Tokens()
    tokens.feed(_NORMALISER.inline(html))
    tokens.close()
    return tokens.tokens


def _renderers(settings: Settings, templates: Path | None = None) -> tuple[Renderer, Renderer]:
    """(pre-inlined, per-message) renderers over the same templates and settings."""
    args = (
        templates or settings.templates_dir,
        settings.brand,
        settings.mail.default_locale,
        settings.links,
    )
    return Renderer(*args), Renderer(*args, inline_css_at_load=False)


def _notification(loaded: Loaded, event_type: str, template: str, **recipient: Any) -> Notification:
    event = event_from_example(loaded, event_type, **recipient)
    n = next(n for n in route(event, loaded.table) if n.template == template)
    return replace(n, condition_met=True, recipient=replace(n.recipient, **recipient))


def _assert_same_mail(new: Renderer, old: Renderer, n: Notification) -> None:
    a, b = new.render(n), old.render(n)
    assert document(b.html) == document(a.html)
    assert (b.subject, b.text, b.locale, b.unsubscribe_url) == (
        a.subject,
        a.text,
        a.locale,
        a.unsubscribe_url,
    )


ROUTES = [
    (event_type, r.spec.template)
    for event_type, routes in load(project_settings()).table.routes.items()
    for r in routes
]
RECIPIENTS = [
    {},
    {"display_name": None},
    # Characters Jinja and html5ever escape differently, and template syntax as data.
    {"display_name": 'O\'Brien & <Sons> "Ltd" {{ 7*7 }}\xa0'},
]
SETTINGS = {
    "default": {},
    # The layout's logo branch (an <img class="logo"> with Jinja in its style attribute), a
    # brand colour in the stylesheet, and UTM tagging of every link after inlining.
    "logo-utm": {
        "brand": {
            "logo_url": "https://cdn.example.com/logo.png?v=1&w=2",
            "logo_width": 140,
            "primary_color": "#0b6e4f",
            "product_name": "Ünïcode & Co",
        },
        "links": {"utm": {"utm_source": "herald", "utm_medium": "email"}},
    },
}


@pytest.fixture(scope="module")
def renderers() -> dict[str, tuple[Renderer, Renderer]]:
    return {name: _renderers(project_settings(**s)) for name, s in SETTINGS.items()}


def test_every_shipped_template_is_inlined_at_load(loaded: Loaded) -> None:
    """No shipped template falls back to per-message inlining (which would cost 0.6 ms)."""
    templates = {
        f"{p.parent.parent.name}/{p.parent.name}"
        for p in (ROOT / "templates").glob("*/*/body.html")
    }
    assert {} == loaded.renderer.css_fallbacks
    assert templates == loaded.renderer.css_inlined_at_load


@pytest.mark.parametrize("variant", SETTINGS)
@pytest.mark.parametrize("recipient", RECIPIENTS, ids=["example", "no-name", "hostile-name"])
@pytest.mark.parametrize("locale", ["en", "fr"])
@pytest.mark.parametrize(("event_type", "template"), ROUTES)
def test_preinlined_mail_is_the_document_per_message_inlining_made(
    loaded: Loaded,
    renderers: dict[str, tuple[Renderer, Renderer]],
    event_type: str,
    template: str,
    locale: str,
    recipient: dict[str, Any],
    variant: str,
) -> None:
    """Every template, locale and example event: the same HTML document, subject and text."""
    new, old = renderers[variant]
    assert f"{locale}/{template}" in new.css_inlined_at_load
    _assert_same_mail(
        new, old, _notification(loaded, event_type, template, locale=locale, **recipient)
    )


def _mutated(tmp_path: Path, edits: dict[str, tuple[str, str]]) -> Path:
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    for file, (old, new) in edits.items():
        path = tmp_path / "templates" / file
        source = path.read_text(encoding="utf-8")
        assert old in source, (file, old)
        path.write_text(source.replace(old, new, 1), encoding="utf-8")
    return tmp_path / "templates"


RECEIPT = "en/order_receipt/body.html"
ANCHOR = "<h1>Thanks for your order!</h1>"
MUTATIONS = {
    # Supported: styled at render time from the rendered attributes, or plainly static.
    "jinja-if-in-class": (
        False,
        {RECEIPT: (ANCHOR, f'{ANCHOR}<p class="{{% if payload.lines %}}muted{{% endif %}}">x</p>')},
    ),
    "jinja-in-style-of-styled-element": (
        False,
        {RECEIPT: (ANCHOR, f'{ANCHOR}<p class="notice" style="color: {{{{ "red" }}}};">x</p>')},
    ),
    "upper-case-and-single-quotes": (False, {RECEIPT: (ANCHOR, f"{ANCHOR}<P CLASS='muted'>x</P>")}),
    "styled-tags-in-a-conditional-comment": (
        False,
        {RECEIPT: (ANCHOR, f'{ANCHOR}<!--[if mso]><p class="muted">{{{{ 1 }}}}</p><![endif]-->')},
    ),
    "statements-between-table-rows": (
        False,
        {
            RECEIPT: (
                ANCHOR,
                f'{ANCHOR}<table>{{% for l in payload.lines %}}<tr><td class="num">'
                f"{{{{ l.name }}}}</td></tr>{{% endfor %}}</table>",
            )
        },
    ),
    # Unsupported: detected at load, per-message inlining kept for the template.
    "jinja-between-attributes": (
        True,
        {RECEIPT: (ANCHOR, f'{ANCHOR}<p {{% if payload.lines %}}class="muted"{{% endif %}}>x</p>')},
    ),
    "markup-in-the-title-block": (
        True,
        {RECEIPT: ("{% block title %}", '{% block title %}<span class="muted">x</span>')},
    ),
    "stray-end-tag": (True, {RECEIPT: (ANCHOR, f"{ANCHOR}</p>")}),
    "safe-event-data": (True, {RECEIPT: (ANCHOR, f"{ANCHOR}{{{{ payload.order_number|safe }}}}")}),
    "style-in-a-child": (True, {RECEIPT: (ANCHOR, f"{ANCHOR}<style>.x {{ color: red }}</style>")}),
    "markup-through-a-filter": (
        True,
        {
            RECEIPT: (
                "{{ ui.address(payload.shipping_address)|trim }}",
                "{{ ui.address(payload.shipping_address)|upper }}",
            )
        },
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_template_is_inlined_at_load_only_when_that_is_safe(
    loaded: Loaded, tmp_path: Path, name: str
) -> None:
    """Each case is either inlined at load or, when it breaks an assumption of that, found at
    load and inlined per message; either way the mail is the document it was."""
    falls_back, edits = MUTATIONS[name]
    new, old = _renderers(project_settings(), _mutated(tmp_path, edits))
    assert falls_back == ("en/order_receipt" in new.css_fallbacks), new.css_fallbacks
    assert falls_back != ("en/order_receipt" in new.css_inlined_at_load)
    assert "fr/order_receipt" in new.css_inlined_at_load  # only the template concerned
    _assert_same_mail(
        new, old, _notification(loaded, "order.confirmed", "order_receipt", locale="en")
    )


def test_each_template_left_to_per_message_inlining_is_logged_with_why(
    tmp_path: Path, log_entries: list[MutableMapping[str, Any]]
) -> None:
    """One warning a template when the Renderer is built, at start-up, naming the reason."""
    edits = {RECEIPT: MUTATIONS["jinja-between-attributes"][1][RECEIPT]}
    Renderer(_mutated(tmp_path, edits), project_settings().brand)
    assert [
        {
            "event": "css inlined per mail, not at load",
            "template": "en/order_receipt",
            "reason": "Jinja between attributes",
            "log_level": "warning",
        }
    ] == log_entries


def test_a_stylesheet_with_a_descendant_selector_falls_back_everywhere(
    loaded: Loaded, tmp_path: Path
) -> None:
    """`.card p` styles an element by where it is, which a template alone cannot tell."""
    edits = {"_layout.html": (".muted {", ".card p { color: #000000; }\n.muted {")}
    new, old = _renderers(project_settings(), _mutated(tmp_path, edits))
    assert frozenset() == new.css_inlined_at_load
    assert "en/order_receipt" in new.css_fallbacks
    _assert_same_mail(
        new, old, _notification(loaded, "order.confirmed", "order_receipt", locale="fr")
    )


def test_utm_tagging_reads_hrefs_as_jinja_writes_them() -> None:
    """Without css_inline re-serialising it, an href keeps Jinja's escapes (&#39;, &#34;):
    the URL is tagged as the mail client will read it, and the text part's copy with it."""
    html = '<a href="https://shop.example/p?q=it&#39;s&amp;x=&#34;1&#34;">p</a>'
    text = 'https://shop.example/p?q=it\'s&x="1"\n'
    h, t = decorate(html, text, {"utm_medium": "email"}, set())
    tagged = "https://shop.example/p?q=it%27s&x=%221%22&utm_medium=email"
    assert f'<a href="{tagged.replace("&", "&amp;")}">p</a>' == h
    assert f"{tagged}\n" == t


def test_the_gallery_preheader_is_the_same_however_the_filler_is_spelt(
    loaded: Loaded, renderers: dict[str, tuple[Renderer, Renderer]]
) -> None:
    """The layout's filler after the preheader stays `&#847;&zwnj;&nbsp;` as templates write
    it, where css_inline wrote characters: the gallery shows the preheader alone either way."""
    n = _notification(loaded, "order.confirmed", "order_receipt", locale="en")
    new, old = (r.render(n) for r in renderers["default"])
    assert "&#847;&zwnj;&nbsp;" in new.html
    assert "\u034f\u200c&nbsp;" in old.html
    pages = [
        Page(file="p", event_type="order.confirmed", notification=n, locale="en", rendered=r)
        for r in (new, old)
    ]
    preheader = "Thanks for your order! Total paid: €42.85. Here is your receipt."
    assert [preheader, preheader] == [p.preheader for p in pages]


def test_a_template_jinja_cannot_parse_is_reported_by_render_as_before(
    loaded: Loaded, tmp_path: Path
) -> None:
    """The analysis at load never stops Herald: the broken template is left to per-message
    inlining, and rendering it raises the RenderError it always did."""
    edits = {RECEIPT: (ANCHOR, f"{ANCHOR}{{% if %}}")}
    new, _ = _renderers(project_settings(), _mutated(tmp_path, edits))
    assert "TemplateSyntaxError" in new.css_fallbacks["en/order_receipt"]
    with pytest.raises(RenderError, match="TemplateSyntaxError"):
        new.render(_notification(loaded, "order.confirmed", "order_receipt", locale="en"))
