"""CSS inlined into each HTML template's source once, at load, rather than into every mail.

css_inline re-parsed and re-serialised every rendered body: 0.64 ms a mail, 41% of
render+compose. The layout's live rules are plain type, class and id selectors, so the style an
element gets depends only on its tag and its class, id and style attributes: `Preinliner` asks
css_inline for it once per start tag of the template source and writes it into the tag. Jinja
stays out of any HTML parser, so none of it can be moved (foster-parented table rows, Outlook's
conditional comments); an attribute that holds Jinja gets its style at render time, cached.
What this relies on is checked per template at load: a template that breaks it keeps per-mail
inlining, and `Preinliner.reasons` says why. tests/unit/test_css_preinline.py proves both give
the same document.
"""

from __future__ import annotations

import bisect
import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from html.parser import HTMLParser
from typing import Any

import css_inline
from jinja2 import BaseLoader, Environment, meta, nodes
from markupsafe import Markup

_RAW = frozenset({"style", "script", "xmp", "iframe", "noembed", "noframes", "title", "textarea"})
"""Elements whose content is text to the HTML tokenizer."""
_UNSUPPORTED = frozenset({"link", "plaintext", "noscript", "script", "template", "svg", "math"})
"""Elements css_inline handles specially, or that change how what follows them is parsed."""
_NOT_PROBED = _UNSUPPORTED | {
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
_BODIES = frozenset(
    {"block", "macro", "call", "filter", "if", "for", "with", "autoescape", "trans", "set"}
)
"""Jinja statements with an end tag."""
_SIMPLE = re.compile(r"(\*|[a-zA-Z][a-zA-Z0-9]*)?((?:[.#][a-zA-Z_-][a-zA-Z0-9_-]*)*)")
_ATTR_SELECTOR = re.compile(r"\[\s*([^\s~|^$*=\]]+)")
_TAG_NAME = re.compile(r"[a-zA-Z][^\s/>]*")
_ATTR_NAME = re.compile(r"[^\s/>=]+")
_EQUALS = re.compile(r"\s*=\s*")
_UNQUOTED = re.compile(r"[^\s>]+")
_GAP = re.compile(r"[\s/]*")
_MARKUP = re.compile(r"<[!?/a-zA-Z]")
_LITERAL_TAG = re.compile(r"<([a-zA-Z][^\s/>]*)([^>]*)>")
_HTML_SPACE = re.compile(r"[ \t\n\f\r]+")
_STYLE_CALL = "_herald_style"
"""Global the rewritten templates call for the style of an element whose attributes hold Jinja."""


class _Unsafe(Exception):
    """Why a template cannot have its CSS inlined at load; it is inlined per message instead."""


@dataclass(slots=True)
class _Attr:
    start: int
    """Offset of the whitespace before the name."""
    end: int
    value: str | None
    """Source text of the value, quotes excluded."""
    jinja: bool


@dataclass(slots=True)
class _Tag:
    name: str
    start: int
    end: int
    last: int
    """Offset just after the last attribute: where a new one goes."""
    attrs: dict[str, _Attr]
    top: bool
    """No Jinja statement is open around the tag."""


@dataclass(slots=True)
class _Jinja:
    text: str
    state: str
    """HTML state it sits in: data, attr, raw or comment."""
    within: frozenset[str]
    """Blocks, macros and block sets around it ("caller" for the body of a call block)."""


@dataclass(slots=True)
class _File:
    """One template file read as the HTML tokenizer would, Jinja tags being opaque holes."""

    source: str
    spans: list[tuple[int, int]]
    tags: list[_Tag] = field(default_factory=list)
    styles: list[tuple[_Tag, int, int]] = field(default_factory=list)
    """Style elements: start tag, start of the end tag, end of the element."""
    outputs: list[_Jinja] = field(default_factory=list)
    sets: list[tuple[str, _Jinja]] = field(default_factory=list)
    markup: set[str] = field(default_factory=set)
    """Blocks, macros and block sets whose body holds markup."""
    block_states: dict[str, set[str]] = field(default_factory=dict)
    attr_names: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)


def _unquoted(text: str, i: int, stop: Callable[[int], bool]) -> int:
    """First offset from `i` where `stop` holds outside a quoted string; len(text) if none."""
    quote = ""
    while i < len(text) and (quote or not stop(i)):
        if quote and text[i] == "\\":
            i += 1
        elif text[i] == quote:
            quote = ""
        elif not quote and text[i] in "'\"":
            quote = text[i]
        i += 1
    return i


def _jinja_spans(src: str) -> list[tuple[int, int]]:
    """Offsets of every `{{ }}`, `{% %}` and `{# #}`, quoted strings inside respected."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(src)
    while 0 <= (i := src.find("{", i)) < n - 1:
        kind = src[i + 1]
        if kind not in "{%#":
            i += 1
            continue
        if kind == "#":
            j = src.find("#}", i + 2)
        else:
            close = "}}" if kind == "{" else "%}"
            j = _unquoted(src, i + 2, partial(src.startswith, close))
        if not 0 <= j < n:
            raise _Unsafe("unterminated Jinja tag")
        spans.append((i, j + 2))
        i = j + 2
    return spans


class _Scanner:
    """Reads one template as HTML: tags, style elements, and where each Jinja tag sits."""

    def __init__(self, src: str, spans: list[tuple[int, int]]) -> None:
        self.f = _File(source=src, spans=spans)
        self.src = src
        self.starts = [s for s, _ in spans]
        self.ends = dict(spans)
        self.stack: list[tuple[str, str, str]] = []
        """Open Jinja statements: keyword, name, HTML state at the opening tag."""

    def holes(self, a: int, b: int) -> bool:
        """Whether a Jinja tag starts in [a, b)."""
        k = bisect.bisect_left(self.starts, a)
        return k < len(self.starts) and self.starts[k] < b

    def find(self, text: str, a: int, *, fold: bool = False) -> int:
        """Next `text` at or after `a` that is not inside a Jinja tag."""
        hay = self.src.lower() if fold else self.src
        while (i := hay.find(text, a)) >= 0:
            k = bisect.bisect_right(self.starts, i) - 1
            if k < 0 or self.f.spans[k][1] <= i:
                return i
            a = self.f.spans[k][1]
        raise _Unsafe(f"{text!r} never comes")

    def jinja(self, a: int, b: int, state: str) -> None:
        """Record the Jinja tags in [a, b), all met in `state`."""
        for k in range(bisect.bisect_left(self.starts, a), bisect.bisect_left(self.starts, b)):
            self.statement(self.src[slice(*self.f.spans[k])], state)

    def statement(self, text: str, state: str) -> None:
        within = frozenset(name for _, name, _ in self.stack if name)
        if text.startswith("{{"):
            self.f.outputs.append(_Jinja(text, state, within))
            return
        m = re.match(r"\{%[-+]?\s*(\w+)\s*([\w.]*)", text)
        if m is None:  # a comment
            return
        word, arg = m.groups()
        if word == "raw" or (state != "data" and word in ("include", "call")):
            raise _Unsafe(f"{{% {word} %}} in the {state} state")
        if word == "set" and "=" in text:
            self.f.sets.append((arg, _Jinja(text, state, within)))
        elif word in _BODIES:
            name = {"block": arg, "macro": arg, "set": arg, "call": "caller"}.get(word, word)
            if word == "block":
                self.f.block_states.setdefault(arg, set()).add(state)
            self.stack.append((word, name, state))
        elif word in ("else", "elif") or word.startswith("end"):
            if not self.stack or self.stack[-1][2] != state:
                raise _Unsafe(f"{{% {word} %}} in another HTML state than its opening tag")
            if word.startswith("end"):
                self.stack.pop()

    def scan(self) -> _File:
        src, f, pos = self.src, self.f, 0
        while pos < len(src):
            m = _MARKUP.search(src, pos)
            lt = m.start() if m else len(src)
            k = bisect.bisect_left(self.starts, pos)
            if k < len(self.starts) and self.starts[k] < lt:  # a Jinja tag in text comes first
                self.statement(src[slice(*f.spans[k])], "data")
                pos = f.spans[k][1]
                continue
            if m is None:
                break
            f.markup.update(name for _, name, _ in self.stack)
            if src.startswith("<!--", lt):
                end = self.find("-->", lt + 4)
                self.jinja(lt, end, "comment")
                pos = end + 3
            elif src[lt + 1] in "!?/":  # doctype, bogus comment, end tag
                pos = self.find(">", lt) + 1
                if self.holes(lt, pos):
                    raise _Unsafe("Jinja in a doctype or an end tag")
            else:
                tag = self.start_tag(lt)
                pos = tag.end
                if tag.name in _UNSUPPORTED:
                    raise _Unsafe(f"<{tag.name}> in the template")
                if tag.name in _RAW:
                    close = self.find(f"</{tag.name}", pos, fold=True)
                    self.jinja(pos, close, "raw")
                    pos = self.find(">", close) + 1
                    if tag.name == "style":
                        f.styles.append((tag, close, pos))
        if self.stack:
            raise _Unsafe(f"{{% {self.stack[-1][0]} %}} never closed")
        if any(name == "filter" for name in f.markup):
            raise _Unsafe("markup inside {% filter %}")
        return f

    def start_tag(self, lt: int) -> _Tag:
        src = self.src
        name = _TAG_NAME.match(src, lt + 1)
        if name is None or self.holes(lt, name.end()):
            raise _Unsafe("Jinja in a tag name")
        attrs: dict[str, _Attr] = {}
        i = last = name.end()
        while True:
            gap = i
            i = _GAP.match(src, i).end()  # type: ignore[union-attr]  # matches, if empty
            if i >= len(src):
                raise _Unsafe("unterminated tag")
            if i in self.ends:
                raise _Unsafe("Jinja between attributes")
            if src[i] == ">":
                break
            m = _ATTR_NAME.match(src, i)
            if m is None or self.holes(i, m.end()):
                raise _Unsafe("Jinja in an attribute name")
            attr, value, jinja, i = m.group().lower(), None, False, m.end()
            if eq := _EQUALS.match(src, i):
                i = eq.end()
                if i < len(src) and src[i] in "\"'":
                    close = self.find(src[i], i + 1)
                    value, jinja = src[i + 1 : close], self.holes(i, close)
                    self.jinja(i, close, "attr")
                    i = close + 1
                else:
                    v = _UNQUOTED.match(src, i)
                    if v is None or self.holes(i, v.end()):
                        raise _Unsafe("Jinja in an unquoted attribute value")
                    value, i = v.group(), v.end()
            if attr in attrs:
                raise _Unsafe(f"attribute {attr} twice in a tag")
            if attr == "href" and not src.startswith('href="', m.start()):
                raise _Unsafe('href not written href="…": UTM tagging would miss it')
            attrs[attr] = _Attr(gap, i, value, jinja)
            last = i
        tag = _Tag(name.group().lower(), lt, i + 1, last, attrs, not self.stack)
        self.f.tags.append(tag)
        self.f.attr_names.update(attrs)
        self.f.counts[tag.name] = self.f.counts.get(tag.name, 0) + 1
        return tag


def _selectors(css: str) -> list[str]:
    """Selectors of the style rules css_inline inlines: @media blocks are kept, not inlined."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out: list[str] = []
    i, n = 0, len(css)
    while i < n:
        j = _unquoted(css, i, lambda k: css[k] in "{;}")
        prelude = css[i:j].strip()
        if j >= n or css[j] != "{":
            if prelude or (j < n and css[j] == "}"):
                raise _Unsafe(f"CSS not understood near {prelude[:40]!r}")
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
                raise _Unsafe(f"CSS at-rule {prelude.split()[0]}")
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
        self._files: dict[str, _File] = {}
        self._asts: dict[str, nodes.Template] = {}
        self._refs_cache: dict[str, tuple[set[str], set[str], list[tuple[str, set[str]]]]] = {}
        self._literal_cache: dict[str, set[str]] = {}
        self._stylesheets: dict[str, str | None] = {}
        self._done: dict[str, str | _Unsafe] = {}
        """Rewritten source of each file, or why it cannot be."""
        self.sources: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        """Why each template that keeps per-message inlining does."""
        self._sheet: tuple[tuple[bool, str], ...] | None = None
        self._head = ""
        self._types: set[str] = set()
        self._classes: set[str] = set()
        self._ids: set[str] = set()
        self._universal = False
        self._complex: list[str] = []
        self.style = lru_cache(maxsize=4096)(self._probe)
        """Inline style of an element from its tag, class, id, style, data-css-inline."""
        self._attribute = lru_cache(maxsize=4096)(self._style_markup)

    def add(self, name: str) -> bool:
        """Prepare `name` and every file it uses; False if it must be inlined per message."""
        try:
            self._add(name)
        except _Unsafe as exc:
            self.reasons[name] = str(exc)
            return False
        except Exception as exc:  # whatever it is, per-message inlining is right
            # A template Jinja cannot compile fails here too; render() reports it as before.
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
        chain, names = [name], [name]
        while (parent := self._extends(chain[-1])) is not None:
            if parent in chain:
                raise _Unsafe("circular extends")
            chain.append(parent)
        for n in names:
            for ref in meta.find_referenced_templates(self._ast(n)):
                if ref is None:
                    raise _Unsafe(f"{n} names a template only known at render time")
                if ref not in names:
                    names.append(ref)
        files = [self._file(n) for n in names]
        root = self._file(chain[-1])
        if any(f.styles for f in files if f is not root):
            raise _Unsafe("a <style> outside the root layout")
        if self._stylesheets.setdefault(chain[-1], self._stylesheet(chain[-1], root)) is not None:
            raise _Unsafe(self._stylesheets[chain[-1]])
        literal_attrs = set().union(*(self._literals(n) for n in names))
        present = literal_attrs.union(*(f.attr_names for f in files))
        for sel in self._complex:
            dead = any(
                a.lower() not in present for a in _ATTR_SELECTOR.findall(re.sub(r"\(.*\)", "", sel))
            )
            if not dead:
                raise _Unsafe(f"selector {sel!r} is not a plain type, class or id")
        self._semantics(files)
        for n in names:
            done = self._done.get(n)
            if done is None:
                try:
                    done = self._rewrite(n, root=n == chain[-1])
                except _Unsafe as exc:
                    done = exc
                self._done[n] = done
            if isinstance(done, _Unsafe):
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

    def _file(self, name: str) -> _File:
        if name not in self._files:
            src = self._source(name)
            lexed = sum(
                1
                for _, token, _ in self._env.lex(src, name)
                if token in ("variable_begin", "block_begin", "comment_begin")
            )
            spans = _jinja_spans(src)
            if len(spans) != lexed:
                raise _Unsafe(f"{name}: Jinja tags not found where Jinja finds them")
            self._files[name] = _Scanner(src, spans).scan()
        return self._files[name]

    def _extends(self, name: str) -> str | None:
        ext = next(self._ast(name).find_all(nodes.Extends), None)
        if ext is None:
            return None
        if not isinstance(ext.template, nodes.Const):
            raise _Unsafe(f"{name} extends a template only known at render time")
        return str(ext.template.value)

    def _stylesheet(self, name: str, root: _File) -> str | None:
        """Render the root layout's style elements (the first layout seen is the one used);
        why they cannot be, if so."""
        if name in self._stylesheets:
            return self._stylesheets[name]
        try:
            self._read_stylesheet(name, root)
        except _Unsafe as exc:
            return str(exc)
        return None

    def _read_stylesheet(self, name: str, root: _File) -> None:
        sheet = []
        for tag, close, _ in root.styles:
            keep = {k: a.value and html.unescape(a.value) for k, a in tag.attrs.items()}
            if not tag.top or keep not in ({}, {"data-css-inline": "keep"}):
                raise _Unsafe("a <style> inside a Jinja statement, or with attributes")
            css = root.source[tag.end : close]
            if any(tag.end <= s < close and root.source[s + 1] == "%" for s, _ in root.spans):
                raise _Unsafe("a Jinja statement inside <style>")
            if not meta.find_undeclared_variables(self._env.parse(css)) <= {"brand"}:
                raise _Unsafe("the stylesheet depends on more than brand settings")
            # `+` keeps trim_blocks/lstrip_blocks off at the seams, as in the layout itself.
            wrapped = "{% autoescape true +%}" + css + "{%+ endautoescape %}"
            try:
                rendered = self._env.from_string(wrapped).render(brand=self._brand)
            except Exception as exc:  # whatever it is, the CSS cannot be known at load
                raise _Unsafe(f"stylesheet: {type(exc).__name__}: {exc}") from exc
            sheet.append((bool(keep), rendered))
        if self._sheet is None:
            self._parse_sheet(tuple(sheet))
        elif self._sheet != tuple(sheet):
            raise _Unsafe(f"{name} has another stylesheet than the first layout")

    def _parse_sheet(self, sheet: tuple[tuple[bool, str], ...]) -> None:
        for _, css in sheet:
            for sel in _selectors(css):
                m = _SIMPLE.fullmatch(sel)
                if m is None or not sel:
                    self._complex.append(sel)
                    continue
                kind, rest = m.groups()
                if kind == "*" and not rest:
                    self._universal = True
                elif kind and kind != "*":
                    self._types.add(kind.lower())
                for part in re.findall(r"[.#][^.#]+", rest):
                    (self._classes if part[0] == "." else self._ids).add(part[1:])
        self._head = "".join(
            ('<style data-css-inline="keep">' if keep else "<style>") + css + "</style>"
            for keep, css in sheet
        )
        self._sheet = sheet

    def _literals(self, name: str) -> set[str]:
        """Markup the template makes from literals (`"<br>"|safe`) must need no styles; the
        attribute names it has."""
        if name not in self._literal_cache:
            self._literal_cache[name] = self._read_literals(name)
        return self._literal_cache[name]

    def _read_literals(self, name: str) -> set[str]:
        names: set[str] = set()
        for node in self._ast(name).find_all((nodes.Filter, nodes.Call, nodes.EvalContextModifier)):
            if isinstance(node, nodes.EvalContextModifier):
                raise _Unsafe("{% autoescape %} in an HTML template")
            if isinstance(node, nodes.Call):
                if isinstance(node.node, nodes.Name) and node.node.name == "lipsum":
                    raise _Unsafe("lipsum() makes markup")
                continue
            assert isinstance(node, nodes.Filter)
            if node.name in ("urlize", "xmlattr"):
                raise _Unsafe(f"|{node.name} makes markup")
            if node.name != "safe":
                continue
            if not (isinstance(node.node, nodes.Const) and isinstance(node.node.value, str)):
                raise _Unsafe("|safe on a value only known at render time")
            for tag, attrs in _LITERAL_TAG.findall(node.node.value):
                found = set(re.findall(r"([^\s=/]+)\s*(?:=|\s|$)", attrs.lower()))
                if tag.lower() in self._types or self._universal or found & {"class", "id"}:
                    raise _Unsafe(f"{node.node.value!r}|safe makes an element styles apply to")
                names |= found
        return names

    def _refs(self, text: str) -> tuple[set[str], set[str], list[tuple[str, set[str]]]]:
        """Names an expression uses (variables, called macros), blocks it calls through
        `self`, and each filter with the names its input uses."""
        if text not in self._refs_cache:

            def names(node: nodes.Node | None) -> set[str]:
                if node is None:
                    return set()
                out = {n.name for n in node.find_all(nodes.Name)}
                if isinstance(node, nodes.Name):
                    out.add(node.name)
                calls = [node] if isinstance(node, nodes.Call) else []
                for call in [*calls, *node.find_all(nodes.Call)]:
                    if isinstance(call.node, nodes.Getattr):
                        out.add(call.node.attr)
                return out

            ast = self._env.parse(text)
            selfs = {
                c.node.attr
                for c in ast.find_all(nodes.Call)
                if isinstance(c.node, nodes.Getattr)
                and isinstance(c.node.node, nodes.Name)
                and c.node.node.name == "self"
            }
            filters = [(fl.name, names(fl.node)) for fl in ast.find_all(nodes.Filter)]
            self._refs_cache[text] = (names(ast), selfs, filters)
        return self._refs_cache[text]

    def _semantics(self, files: list[_File]) -> None:
        """Markup written in a template must end up in the document as markup: not in an
        attribute, a <title> or a comment (blocks and macros can take it there), and not
        through a filter that could change it."""
        markup = set().union(*(f.markup for f in files))
        outputs = [(o, *self._refs(o.text)) for f in files for o in f.outputs]
        sets = [(name, self._refs(j.text)[0]) for f in files for name, j in f.sets]
        grew = True
        while grew:
            before = len(markup)
            for o, used, _, _ in outputs:
                if used & markup:
                    markup |= o.within
            markup |= {name for name, used in sets if used & markup}
            grew = len(markup) > before
        outside = {b for f in files for b, states in f.block_states.items() if states != {"data"}}
        grew = True
        while grew:
            before = len(outside)
            for o, _, selfs, _ in outputs:
                if o.state != "data" or o.within & outside:
                    outside |= selfs
            grew = len(outside) > before
        if outside & markup:
            raise _Unsafe(f"block {sorted(outside & markup)[0]} has markup but is used as text")
        for o, used, _, filters in outputs:
            if (o.state != "data" or o.within & outside) and used & markup:
                raise _Unsafe(f"{o.text} puts markup into an attribute or text-only element")
            for fname, inner in filters:
                if inner & markup and fname != "trim":
                    raise _Unsafe(f"{o.text} filters markup through |{fname}")

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
                raise _Unsafe("overlapping edits")  # cannot happen: tags do not overlap
            out += [f.source[pos:start], text]
            pos = end
        return "".join([*out, f.source[pos:]])

    def _removable(self, f: _File, start: int, end: int) -> None:
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
            raise _Unsafe("the inlined <style> is not on lines of its own")

    def _structure(self, name: str, f: _File, *, root: bool) -> None:
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
        styled = counter.counts if self._universal else self._types
        for tag in styled:
            if (root or tag not in ("html", "head", "body")) and counter.counts.get(
                tag, 0
            ) > f.counts.get(tag, 0):
                raise _Unsafe(f"{name}: the HTML parser makes a <{tag}> the source does not have")

    def _could_match(self, tag: _Tag) -> bool:
        if self._universal or tag.name in self._types:
            return True
        cls, ident = tag.attrs.get("class"), tag.attrs.get("id")
        # A character reference could spell a class: ask the probe, it decodes as HTML does.
        return bool(
            (cls and (cls.jinja or "&" in (cls.value or "")))
            or (cls and set(_HTML_SPACE.split(cls.value or "")) & self._classes)
            or (ident and (ident.jinja or "&" in (ident.value or "") or ident.value in self._ids))
        )

    def _restyle(self, tag: _Tag) -> list[tuple[int, int, str]]:
        """Edits that give `tag` the style css_inline would."""
        if not self._could_match(tag):
            return []
        if tag.name in _NOT_PROBED:
            raise _Unsafe(f"the stylesheet may style <{tag.name}>")
        keys = ("class", "id", "style", "data-css-inline")
        attrs = [tag.attrs.get(k) for k in keys]
        if attrs[3] is not None and attrs[3].jinja:
            raise _Unsafe("Jinja in data-css-inline")
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

    def _style_markup(
        self, tag: str, cls: str | None, ident: str | None, style: str | None, keep: str | None
    ) -> Markup:
        css = self.style(tag, cls, ident, style, keep)
        return Markup("") if css is None else Markup(' style="{}"').format(css)

    def _probe(
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
            raise _Unsafe(f"probe of <{tag}> lost")
        return parser.style


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
