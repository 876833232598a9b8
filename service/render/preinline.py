"""CSS inlined into each HTML template's source once, at load, rather than into every mail.

The layout's live rules are plain type, class and id selectors, so the style an element gets
depends only on its tag and its class, id and style attributes: `Preinliner` asks css_inline for
it once per start tag of the template source and writes it into the tag, instead of css_inline
re-parsing every rendered body. Jinja stays out of any HTML parser, so none of it can be moved
(foster-parented table rows, Outlook's conditional comments); an attribute that holds Jinja gets
its style at render time, cached. What this relies on is checked per template at load: a
template that breaks it keeps per-mail inlining, and `Preinliner.reasons` says why.
tests/unit/test_css_preinline.py proves both give the same document. `scanner.py` finds the
tags, and `stylesheet.py` reads the CSS.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any

import css_inline
from jinja2 import BaseLoader, Environment, meta, nodes
from markupsafe import Markup

from service.errors import MarkupUnsafe
from service.render.scanner import (
    Refs,
    Tag,
    TemplateMarkup,
    check_markup,
    expression_refs,
    family,
    literal_markup,
    read_markup,
)
from service.render.stylesheet import NOT_PROBED, Stylesheet

_ATTR_SELECTOR = re.compile(r"\[\s*([^\s~|^$*=\]]+)")
_LITERAL_TAG = re.compile(r"<([a-zA-Z][^\s/>]*)([^>]*)>")
_STYLE_CALL = "_herald_style"
"""Global the rewritten templates call for the style of an element whose attributes hold Jinja."""


class _Counter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1


def _attr_text(value: str) -> str:
    """A value for `attr="…"` in template source: `{` escaped too, so Jinja never sees it."""
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("{", "&#123;")


def _raw(value: object) -> str | None:
    """An attribute's value as written in the rendered HTML, character references and all."""
    return None if value is None else str(value)


class Preinliner:
    """Template sources with the layout's CSS inlined into their tags, once, at load."""

    def __init__(
        self, env: Environment, brand: dict[str, Any], inliner: css_inline.CSSInliner
    ) -> None:
        self._env = env
        self._brand = brand
        self._inliner = inliner
        self._normaliser = css_inline.CSSInliner(
            inline_style_tags=False,
            keep_style_tags=True,
            keep_link_tags=True,
            keep_at_rules=True,
            load_remote_stylesheets=False,
        )
        self._files: dict[str, TemplateMarkup] = {}
        self._asts: dict[str, nodes.Template] = {}
        self._refs_cache: dict[str, Refs] = {}
        self._literal_cache: dict[str, set[str]] = {}
        self._stylesheets: dict[str, str | None] = {}
        self._done: dict[str, str | MarkupUnsafe] = {}
        """Rewritten source of each file, or why it cannot be."""
        self.sources: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        """Why each template that keeps per-message inlining does."""
        self._sheet: Stylesheet | None = None
        self.style = lru_cache(maxsize=4096)(self._probe)
        """Inline style of an element from its tag, class, id, style, data-css-inline."""
        self._attribute = lru_cache(maxsize=4096)(self._style_markup)

    def add(self, name: str) -> bool:
        """Prepare `name` and every file it uses; False if it must be inlined per message."""
        try:
            self._add(name)
        except MarkupUnsafe as exc:
            self.reasons[name] = str(exc)
            return False
        except Exception as exc:  # whatever it is, per-message inlining is right
            # A template Jinja cannot compile fails here too; render() reports it.
            self.reasons[name] = f"{type(exc).__name__}: {exc}"
            return False
        return True

    def loader(self, files: BaseLoader) -> BaseLoader:
        """`files`, with the templates added so far rewritten; their environment needs
        `globals` too."""
        return _Preinlined(self.sources, files)

    @property
    def globals(self) -> dict[str, Callable[..., Markup]]:
        """What the rewritten templates call at render time."""
        return {_STYLE_CALL: self.style_attribute}

    def _add(self, name: str) -> None:
        chain, names = family(name, self._ast)
        files = [self._file(n) for n in names]
        root = self._file(chain[-1])
        if any(f.styles for f in files if f is not root):
            raise MarkupUnsafe("a <style> outside the root layout")
        if self._stylesheets.setdefault(chain[-1], self._stylesheet(chain[-1], root)) is not None:
            raise MarkupUnsafe(self._stylesheets[chain[-1]])
        literal_attrs = set().union(*(self._literals(n) for n in names))
        present = literal_attrs.union(*(f.attr_names for f in files))
        for sel in self._stylesheet_rules().complex:
            dead = any(
                a.lower() not in present for a in _ATTR_SELECTOR.findall(re.sub(r"\(.*\)", "", sel))
            )
            if not dead:
                raise MarkupUnsafe(f"selector {sel!r} is not a plain type, class or id")
        check_markup(files, self._refs)
        for n in names:
            done = self._done.get(n)
            if done is None:
                try:
                    done = self._rewrite(n, root=n == chain[-1])
                except MarkupUnsafe as exc:
                    done = exc
                self._done[n] = done
            if isinstance(done, MarkupUnsafe):
                raise done
        self.sources.update((n, str(self._done[n])) for n in names)

    def _ast(self, name: str) -> nodes.Template:
        if name not in self._asts:
            source = self._source(name)
            self._asts[name] = self._env.parse(source, name)
        return self._asts[name]

    def _source(self, name: str) -> str:
        assert self._env.loader is not None
        return self._env.loader.get_source(self._env, name)[0]

    def _file(self, name: str) -> TemplateMarkup:
        if name not in self._files:
            self._files[name] = read_markup(self._env, name, self._source(name))
        return self._files[name]

    def _stylesheet(self, name: str, root: TemplateMarkup) -> str | None:
        """Render the root layout's style elements (the first layout seen is the one used);
        why they cannot be, if so."""
        if name in self._stylesheets:
            return self._stylesheets[name]
        try:
            self._read_stylesheet(name, root)
        except MarkupUnsafe as exc:
            return str(exc)
        return None

    def _read_stylesheet(self, name: str, root: TemplateMarkup) -> None:
        sheet = []
        for tag, close, _ in root.styles:
            keep = {k: a.value and html.unescape(a.value) for k, a in tag.attrs.items()}
            if not tag.top or keep not in ({}, {"data-css-inline": "keep"}):
                raise MarkupUnsafe("a <style> inside a Jinja statement, or with attributes")
            css = root.source[tag.end : close]
            if any(tag.end <= s < close and root.source[s + 1] == "%" for s, _ in root.spans):
                raise MarkupUnsafe("a Jinja statement inside <style>")
            if not meta.find_undeclared_variables(self._env.parse(css)) <= {"brand"}:
                raise MarkupUnsafe("the stylesheet depends on more than brand settings")
            # `+` keeps trim_blocks/lstrip_blocks off at the seams, as in the layout itself.
            wrapped = "{% autoescape true +%}" + css + "{%+ endautoescape %}"
            try:
                rendered = self._env.from_string(wrapped).render(brand=self._brand)
            except Exception as exc:  # whatever it is, the CSS cannot be known at load
                raise MarkupUnsafe(f"stylesheet: {type(exc).__name__}: {exc}") from exc
            sheet.append((bool(keep), rendered))
        if self._sheet is None:
            self._sheet = Stylesheet(tuple(sheet), self._inliner)
        elif self._sheet.sheet != tuple(sheet):
            raise MarkupUnsafe(f"{name} has another stylesheet than the first layout")

    def _literals(self, name: str) -> set[str]:
        """Markup the template makes from literals (`"<br>"|safe`) must need no styles; the
        attribute names it has."""
        if name not in self._literal_cache:
            self._literal_cache[name] = self._read_literals(name)
        return self._literal_cache[name]

    def _read_literals(self, name: str) -> set[str]:
        names: set[str] = set()
        for value in literal_markup(self._ast(name)):
            for tag, attrs in _LITERAL_TAG.findall(value):
                found = set(re.findall(r"([^\s=/]+)\s*(?:=|\s|$)", attrs.lower()))
                sheet = self._stylesheet_rules()
                if tag.lower() in sheet.types or sheet.universal or found & {"class", "id"}:
                    raise MarkupUnsafe(f"{value!r}|safe makes an element styles apply to")
                names |= found
        return names

    def _refs(self, text: str) -> Refs:
        if text not in self._refs_cache:
            self._refs_cache[text] = expression_refs(self._env, text)
        return self._refs_cache[text]

    def _rewrite(self, name: str, *, root: bool) -> str:
        f = self._file(name)
        self._structure(name, f, root=root)
        edits: list[tuple[int, int, str]] = []
        gone: list[tuple[int, int]] = []
        if root:
            for tag, _, end in f.styles:
                if "data-css-inline" not in tag.attrs:
                    self._removable(f, tag.start, end)
                    edits.append((tag.start, end, ""))
                    gone.append((tag.start, end))
        for tag in f.tags:
            if not any(a <= tag.start < b for a, b in gone):
                edits += self._restyle(tag)
        out, pos = [], 0
        for start, end, text in sorted(edits):
            if start < pos:
                raise MarkupUnsafe("overlapping edits")  # cannot happen: tags do not overlap
            out += [f.source[pos:start], text]
            pos = end
        return "".join([*out, f.source[pos:]])

    def _removable(self, f: TemplateMarkup, start: int, end: int) -> None:
        """A removed <style> must leave Jinja's whitespace control unchanged around it."""
        a = len(f.source[:start].rstrip())
        b = end + len(f.source[end:]) - len(f.source[end:].lstrip())
        if (
            a in {e for _, e in f.spans}
            or b in {s for s, _ in f.spans}
            or (
                f.source[start - 1 : start] not in ("", "\n")
                or f.source[end : end + 1] not in ("", "\n")
            )
        ):
            raise MarkupUnsafe("the inlined <style> is not on lines of its own")

    def _structure(self, name: str, f: TemplateMarkup, *, root: bool) -> None:
        """The HTML parser must make no styled element that is not a start tag here (a stray
        </p> makes a <p>; a missing <body> one): checked on the source without its Jinja."""
        pieces, pos = [], 0
        for s, e in f.spans:
            pieces.append(f.source[pos:s])
            pos = e
        bare = "".join([*pieces, f.source[pos:]])
        out = self._normaliser.inline(bare) if root else self._normaliser.inline_fragment(bare, "")
        counter = _Counter()
        counter.feed(out)
        counter.close()
        sheet = self._stylesheet_rules()
        styled = counter.counts if sheet.universal else sheet.types
        for tag in styled:
            if (root or tag not in ("html", "head", "body")) and counter.counts.get(
                tag, 0
            ) > f.counts.get(tag, 0):
                raise MarkupUnsafe(
                    f"{name}: the HTML parser makes a <{tag}> the source does not have"
                )

    def _restyle(self, tag: Tag) -> list[tuple[int, int, str]]:
        """Edits that give `tag` the style css_inline would."""
        if not self._stylesheet_rules().could_match(tag):
            return []
        if tag.name in NOT_PROBED:
            raise MarkupUnsafe(f"the stylesheet may style <{tag.name}>")
        keys = ("class", "id", "style", "data-css-inline")
        attrs = [tag.attrs.get(k) for k in keys]
        if attrs[3] is not None and attrs[3].jinja:
            raise MarkupUnsafe("Jinja in data-css-inline")
        style = attrs[2]
        if not any(a is not None and a.jinja for a in attrs):
            css = self.style(tag.name, *(a and a.value for a in attrs))
            if style and style.value is not None and css == html.unescape(style.value):
                return []
            assert css is not None  # css_inline never drops a style attribute
            text = f' style="{_attr_text(css)}"'
            return [(style.start, style.end, text) if style else (tag.last, tag.last, text)]
        # Jinja in class, id or style: the attributes' rendered values pick the style (cached).
        sets, args = "", []
        for key, a in zip(keys, attrs, strict=True):
            if a is None or a.value is None:
                args.append("none")
                continue
            var = f"_herald_{key[0]}"
            sets += f"{{% set {var} %}}{a.value}{{% endset %}}"
            args.append(var)
        self.style(tag.name, None, None, None, None)  # the probe works for this element
        call = f'{sets}{{{{ {_STYLE_CALL}("{tag.name}", {", ".join(args)}) }}}}'
        edits = [(style.start, style.end, "")] if style else []
        return [*edits, (tag.last, tag.last, call)]

    def style_attribute(
        self, tag: str, cls: object, ident: object, style: object, keep: object
    ) -> Markup:
        """` style="…"` for an element whose attributes hold Jinja, once they are rendered."""
        return self._attribute(tag, _raw(cls), _raw(ident), _raw(style), _raw(keep))

    def _probe(
        self, tag: str, cls: str | None, ident: str | None, style: str | None, keep: str | None
    ) -> str | None:
        return self._stylesheet_rules().probe(tag, cls, ident, style, keep)

    def _stylesheet_rules(self) -> Stylesheet:
        if self._sheet is None:
            raise MarkupUnsafe("no stylesheet read yet")
        return self._sheet

    def _style_markup(
        self, tag: str, cls: str | None, ident: str | None, style: str | None, keep: str | None
    ) -> Markup:
        css = self.style(tag, cls, ident, style, keep)
        return Markup("") if css is None else Markup(' style="{}"').format(css)


class _Preinlined(BaseLoader):
    """Rewritten sources where there are some, the files as they are otherwise."""

    def __init__(self, sources: dict[str, str], fallback: BaseLoader) -> None:
        self._sources = sources
        self._fallback = fallback

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self._fallback.get_source(environment, template)
        return self._sources.get(template, source), filename, uptodate
