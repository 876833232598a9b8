"""Where markup and Jinja tags are in a template's source, read without rendering it.

service/css_preinline.py writes the layout's CSS into the start tags found here, once, at load.
Jinja stays out of any HTML parser: the source is read as the HTML tokenizer would read it, each
Jinja tag an opaque hole whose HTML state (data, attribute, raw text, comment) is recorded, and
the template's AST says where markup can flow (blocks, macros, block sets). Whatever cannot be
placed exactly raises `MarkupUnsafe`, and the template keeps per-message inlining.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TypeAlias

from jinja2 import Environment, meta, nodes

from service.errors import MarkupUnsafe

_RAW = frozenset({"style", "script", "xmp", "iframe", "noembed", "noframes", "title", "textarea"})
"""Elements whose content is text to the HTML tokenizer."""
UNSUPPORTED = frozenset({"link", "plaintext", "noscript", "script", "template", "svg", "math"})
"""Elements css_inline handles specially, or that change how what follows them is parsed."""
_BODIES = frozenset(
    {"block", "macro", "call", "filter", "if", "for", "with", "autoescape", "trans", "set"}
)
"""Jinja statements with an end tag."""
_TAG_NAME = re.compile(r"[a-zA-Z][^\s/>]*")
_ATTR_NAME = re.compile(r"[^\s/>=]+")
_EQUALS = re.compile(r"\s*=\s*")
_UNQUOTED = re.compile(r"[^\s>]+")
_GAP = re.compile(r"[\s/]*")
_MARKUP = re.compile(r"<[!?/a-zA-Z]")

Refs: TypeAlias = tuple[set[str], set[str], list[tuple[str, set[str]]]]
"""What an expression uses: see `expression_refs`."""


@dataclass(slots=True)
class Attr:
    start: int
    """Offset of the whitespace before the name."""
    end: int
    value: str | None
    """Source text of the value, quotes excluded."""
    jinja: bool


@dataclass(slots=True)
class Tag:
    name: str
    start: int
    end: int
    last: int
    """Offset just after the last attribute: where a new one goes."""
    attrs: dict[str, Attr]
    top: bool
    """No Jinja statement is open around the tag."""


@dataclass(slots=True)
class Jinja:
    text: str
    state: str
    """HTML state it sits in: data, attr, raw or comment."""
    within: frozenset[str]
    """Blocks, macros and block sets around it ("caller" for the body of a call block)."""


@dataclass(slots=True)
class TemplateMarkup:
    """One template file read as the HTML tokenizer would, Jinja tags being opaque holes."""

    source: str
    spans: list[tuple[int, int]]
    tags: list[Tag] = field(default_factory=list)
    styles: list[tuple[Tag, int, int]] = field(default_factory=list)
    """Style elements: start tag, start of the end tag, end of the element."""
    outputs: list[Jinja] = field(default_factory=list)
    sets: list[tuple[str, Jinja]] = field(default_factory=list)
    markup: set[str] = field(default_factory=set)
    """Blocks, macros and block sets whose body holds markup."""
    block_states: dict[str, set[str]] = field(default_factory=dict)
    attr_names: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)


def unquoted(text: str, i: int, stop: Callable[[int], bool]) -> int:
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
            j = unquoted(src, i + 2, partial(src.startswith, close))
        if not 0 <= j < n:
            raise MarkupUnsafe("unterminated Jinja tag")
        spans.append((i, j + 2))
        i = j + 2
    return spans


class _Scanner:
    """Reads one template as HTML: tags, style elements, and where each Jinja tag sits."""

    def __init__(self, src: str, spans: list[tuple[int, int]]) -> None:
        self.f = TemplateMarkup(source=src, spans=spans)
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
        raise MarkupUnsafe(f"{text!r} never comes")

    def jinja(self, a: int, b: int, state: str) -> None:
        """Record the Jinja tags in [a, b), all met in `state`."""
        for k in range(bisect.bisect_left(self.starts, a), bisect.bisect_left(self.starts, b)):
            self.statement(self.src[slice(*self.f.spans[k])], state)

    def statement(self, text: str, state: str) -> None:
        within = frozenset(name for _, name, _ in self.stack if name)
        if text.startswith("{{"):
            self.f.outputs.append(Jinja(text, state, within))
            return
        m = re.match(r"\{%[-+]?\s*(\w+)\s*([\w.]*)", text)
        if m is None:  # a comment
            return
        word, arg = m.groups()
        if word == "raw" or (state != "data" and word in ("include", "call")):
            raise MarkupUnsafe(f"{{% {word} %}} in the {state} state")
        if word == "set" and "=" in text:
            self.f.sets.append((arg, Jinja(text, state, within)))
        elif word in _BODIES:
            name = {"block": arg, "macro": arg, "set": arg, "call": "caller"}.get(word, word)
            if word == "block":
                self.f.block_states.setdefault(arg, set()).add(state)
            self.stack.append((word, name, state))
        elif word in ("else", "elif") or word.startswith("end"):
            if not self.stack or self.stack[-1][2] != state:
                raise MarkupUnsafe(f"{{% {word} %}} in another HTML state than its opening tag")
            if word.startswith("end"):
                self.stack.pop()

    def scan(self) -> TemplateMarkup:
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
                    raise MarkupUnsafe("Jinja in a doctype or an end tag")
            else:
                tag = self.start_tag(lt)
                pos = tag.end
                if tag.name in UNSUPPORTED:
                    raise MarkupUnsafe(f"<{tag.name}> in the template")
                if tag.name in _RAW:
                    close = self.find(f"</{tag.name}", pos, fold=True)
                    self.jinja(pos, close, "raw")
                    pos = self.find(">", close) + 1
                    if tag.name == "style":
                        f.styles.append((tag, close, pos))
        if self.stack:
            raise MarkupUnsafe(f"{{% {self.stack[-1][0]} %}} never closed")
        if any(name == "filter" for name in f.markup):
            raise MarkupUnsafe("markup inside {% filter %}")
        return f

    def start_tag(self, lt: int) -> Tag:
        src = self.src
        name = _TAG_NAME.match(src, lt + 1)
        if name is None or self.holes(lt, name.end()):
            raise MarkupUnsafe("Jinja in a tag name")
        attrs: dict[str, Attr] = {}
        i = last = name.end()
        while True:
            gap = i
            i = _GAP.match(src, i).end()  # type: ignore[union-attr]  # matches, if empty
            if i >= len(src):
                raise MarkupUnsafe("unterminated tag")
            if i in self.ends:
                raise MarkupUnsafe("Jinja between attributes")
            if src[i] == ">":
                break
            m = _ATTR_NAME.match(src, i)
            if m is None or self.holes(i, m.end()):
                raise MarkupUnsafe("Jinja in an attribute name")
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
                        raise MarkupUnsafe("Jinja in an unquoted attribute value")
                    value, i = v.group(), v.end()
            if attr in attrs:
                raise MarkupUnsafe(f"attribute {attr} twice in a tag")
            if attr == "href" and not src.startswith('href="', m.start()):
                raise MarkupUnsafe('href not written href="…": UTM tagging would miss it')
            attrs[attr] = Attr(gap, i, value, jinja)
            last = i
        tag = Tag(name.group().lower(), lt, i + 1, last, attrs, not self.stack)
        self.f.tags.append(tag)
        self.f.attr_names.update(attrs)
        self.f.counts[tag.name] = self.f.counts.get(tag.name, 0) + 1
        return tag


def read_markup(env: Environment, name: str, src: str) -> TemplateMarkup:
    """`src` read as the HTML tokenizer would, once its Jinja tags are found where Jinja's own
    lexer finds them."""
    lexed = sum(
        1
        for _, token, _ in env.lex(src, name)
        if token in ("variable_begin", "block_begin", "comment_begin")
    )
    spans = _jinja_spans(src)
    if len(spans) != lexed:
        raise MarkupUnsafe(f"{name}: Jinja tags not found where Jinja finds them")
    return _Scanner(src, spans).scan()


def family(name: str, ast: Callable[[str], nodes.Template]) -> tuple[list[str], list[str]]:
    """The layouts `name` extends, itself first and the root last; every template it uses,
    itself first. Both must be known at load."""
    chain, names = [name], [name]
    while (parent := _extends(chain[-1], ast(chain[-1]))) is not None:
        if parent in chain:
            raise MarkupUnsafe("circular extends")
        chain.append(parent)
    for n in names:
        for ref in meta.find_referenced_templates(ast(n)):
            if ref is None:
                raise MarkupUnsafe(f"{n} names a template only known at render time")
            if ref not in names:
                names.append(ref)
    return chain, names


def _extends(name: str, ast: nodes.Template) -> str | None:
    ext = next(ast.find_all(nodes.Extends), None)
    if ext is None:
        return None
    if not isinstance(ext.template, nodes.Const):
        raise MarkupUnsafe(f"{name} extends a template only known at render time")
    return str(ext.template.value)


def literal_markup(ast: nodes.Template) -> Iterator[str]:
    """The strings a template marks safe (`"<br>"|safe`), in source order: markup it makes any
    other way is only known at render time."""
    for node in ast.find_all((nodes.Filter, nodes.Call, nodes.EvalContextModifier)):
        if isinstance(node, nodes.EvalContextModifier):
            raise MarkupUnsafe("{% autoescape %} in an HTML template")
        if isinstance(node, nodes.Call):
            if isinstance(node.node, nodes.Name) and node.node.name == "lipsum":
                raise MarkupUnsafe("lipsum() makes markup")
            continue
        assert isinstance(node, nodes.Filter)
        if node.name in ("urlize", "xmlattr"):
            raise MarkupUnsafe(f"|{node.name} makes markup")
        if node.name != "safe":
            continue
        if not (isinstance(node.node, nodes.Const) and isinstance(node.node.value, str)):
            raise MarkupUnsafe("|safe on a value only known at render time")
        yield node.node.value


def expression_refs(env: Environment, text: str) -> Refs:
    """Names an expression uses (variables, called macros), blocks it calls through
    `self`, and each filter with the names its input uses."""
    ast = env.parse(text)
    selfs = {
        c.node.attr
        for c in ast.find_all(nodes.Call)
        if isinstance(c.node, nodes.Getattr)
        and isinstance(c.node.node, nodes.Name)
        and c.node.node.name == "self"
    }
    filters = [(fl.name, _names(fl.node)) for fl in ast.find_all(nodes.Filter)]
    return _names(ast), selfs, filters


def _names(node: nodes.Node | None) -> set[str]:
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


def check_markup(files: list[TemplateMarkup], refs: Callable[[str], Refs]) -> None:
    """Markup written in a template must end up in the document as markup: not in an
    attribute, a <title> or a comment (blocks and macros can take it there), and not
    through a filter that could change it."""
    markup = set().union(*(f.markup for f in files))
    outputs = [(o, *refs(o.text)) for f in files for o in f.outputs]
    sets = [(name, refs(j.text)[0]) for f in files for name, j in f.sets]
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
        raise MarkupUnsafe(f"block {sorted(outside & markup)[0]} has markup but is used as text")
    for o, used, _, filters in outputs:
        if (o.state != "data" or o.within & outside) and used & markup:
            raise MarkupUnsafe(f"{o.text} puts markup into an attribute or text-only element")
        for fname, inner in filters:
            if inner & markup and fname != "trim":
                raise MarkupUnsafe(f"{o.text} filters markup through |{fname}")
