"""The layout's stylesheet as the pre-inliner needs it: what its rules can style, and the
style css_inline gives an element (asked of css_inline itself, once per kind of element).

Only plain type, class and id selectors are understood; anything else is listed in `complex`
for the pre-inliner to judge. `@media` blocks stay in the document and are not inlined.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import css_inline

from service.errors import MarkupUnsafe
from service.render.scanner import UNSUPPORTED, Tag, unquoted

NOT_PROBED = UNSUPPORTED | {
    *("html", "head", "title", "style", "image", "select", "option", "optgroup", "textarea"),
    *("frameset", "frame", "iframe", "xmp", "noembed", "noframes", "meta", "base", "col"),
    *("colgroup", "caption"),
}
"""Elements the probe does not model: a stylesheet that could style one keeps per-message
inlining for the template."""
_TABLE_PART = {
    "td": "<table><tbody><tr>{}</tr></tbody></table>",
    "th": "<table><tbody><tr>{}</tr></tbody></table>",
    "tr": "<table><tbody>{}</tbody></table>",
    "tbody": "<table>{}</table>",
    "thead": "<table>{}</table>",
    "tfoot": "<table>{}</table>",
}
_SIMPLE = re.compile(r"(\*|[a-zA-Z][a-zA-Z0-9]*)?((?:[.#][a-zA-Z_-][a-zA-Z0-9_-]*)*)")
_HTML_SPACE = re.compile(r"[ \t\n\f\r]+")


class Stylesheet:
    """The root layout's `<style>` elements, rendered, and what they style."""

    def __init__(self, sheet: tuple[tuple[bool, str], ...], inliner: css_inline.CSSInliner) -> None:
        """`sheet`: each style element's rendered CSS, and whether it is kept in the mail
        (`data-css-inline="keep"`)."""
        self.sheet = sheet
        self._inliner = inliner
        self._types: set[str] = set()
        self._classes: set[str] = set()
        self._ids: set[str] = set()
        self.universal = False
        self.complex: list[str] = []
        """Selectors that are not a plain type, class or id."""
        self._parse_sheet(sheet)

    @property
    def types(self) -> set[str]:
        """Element names the rules select."""
        return self._types

    def _parse_sheet(self, sheet: tuple[tuple[bool, str], ...]) -> None:
        for _, css in sheet:
            for sel in selectors(css):
                m = _SIMPLE.fullmatch(sel)
                if m is None or not sel:
                    self.complex.append(sel)
                    continue
                kind, rest = m.groups()
                if kind == "*" and not rest:
                    self.universal = True
                elif kind and kind != "*":
                    self._types.add(kind.lower())
                for part in re.findall(r"[.#][^.#]+", rest):
                    (self._classes if part[0] == "." else self._ids).add(part[1:])
        self._head = "".join(
            ('<style data-css-inline="keep">' if keep else "<style>") + css + "</style>"
            for keep, css in sheet
        )

    def could_match(self, tag: Tag) -> bool:
        """Whether a rule may select `tag` (asked of the probe where its attributes hold Jinja
        or character references)."""
        if self.universal or tag.name in self._types:
            return True
        cls, ident = tag.attrs.get("class"), tag.attrs.get("id")
        # A character reference could spell a class: ask the probe, it decodes as HTML does.
        return bool(
            (cls and (cls.jinja or "&" in (cls.value or "")))
            or (cls and set(_HTML_SPACE.split(cls.value or "")) & self._classes)
            or (ident and (ident.jinja or "&" in (ident.value or "") or ident.value in self._ids))
        )

    def probe(
        self, tag: str, cls: str | None, ident: str | None, style: str | None, keep: str | None
    ) -> str | None:
        """The style css_inline gives the element: the attributes go into the probe as written,
        so that html5ever decodes them as it would in the mail."""
        values = zip(
            ("class", "id", "style", "data-css-inline"), (cls, ident, style, keep), strict=True
        )
        attrs = "".join(
            f" {k}={q}{v}{q}"
            for k, v in values
            if v is not None
            for q in ["'" if '"' in v else '"']
        )
        element = f"<{tag} data-herald-probe{attrs}>"
        if tag == "body":
            body = element
        else:
            body = "<body>" + _TABLE_PART.get(tag, "{}").format(f"{element}</{tag}>")
        parser = _ProbeParser()
        parser.feed(self._inliner.inline(f"<!DOCTYPE html><html><head>{self._head}</head>{body}"))
        parser.close()
        if not parser.found:
            raise MarkupUnsafe(f"probe of <{tag}> lost")
        return parser.style


def selectors(css: str) -> list[str]:
    """Selectors of the style rules css_inline inlines: @media blocks are kept, not inlined."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out: list[str] = []
    i, n = 0, len(css)
    while i < n:
        j = unquoted(css, i, lambda k: css[k] in "{;}")
        prelude = css[i:j].strip()
        if j >= n or css[j] != "{":
            if prelude or (j < n and css[j] == "}"):
                raise MarkupUnsafe(f"CSS not understood near {prelude[:40]!r}")
            i = j + 1
            continue
        depth, k = 0, j
        while k < n:
            depth += {"{": 1, "}": -1}.get(css[k], 0)
            k += 1
            if depth == 0:
                break
        if prelude.startswith("@"):
            if not prelude.lower().startswith("@media"):
                raise MarkupUnsafe(f"CSS at-rule {prelude.split()[0]}")
        else:
            out.extend(s.strip() for s in prelude.split(","))
        i = k
    return out


class _ProbeParser(HTMLParser):
    """The style attribute css_inline gave the probed element."""

    def __init__(self) -> None:
        super().__init__()
        self.found = False
        self.style: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.found and any(k == "data-herald-probe" for k, _ in attrs):
            self.found, self.style = True, dict(attrs).get("style")
