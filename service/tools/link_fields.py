"""Which fields of an event a template puts in a link: the `href` and `src` attributes of its
HTML part that hold a Jinja expression, read from the template source.

`herald check --links` lists them, so an operator knows which event fields must be absolute
https URLs (every link a mail carries is checked when it is rendered; see render/links.py).
"""

from __future__ import annotations

import re

from jinja2 import Environment

from service.app import Loaded

_PLAIN = Environment(autoescape=True)
"""What the loader wants beside a name; the file loader reads the file whatever it is."""
_ATTRIBUTE = re.compile(r"""\s(?:href|src)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def link_fields(loaded: Loaded) -> dict[str, list[str]]:
    """`<locale>/<template>` → the dotted paths its links are made of, in source order."""
    renderer = loaded.renderer
    out: dict[str, list[str]] = {}
    for name in sorted(renderer.loader.list_templates()):
        if not name.endswith("/body.html"):
            continue
        source = renderer.loader.get_source(_PLAIN, name)[0]
        paths: list[str] = []
        for m in _ATTRIBUTE.finditer(source):
            for expression in _EXPRESSION.findall(m.group(1) or m.group(2) or ""):
                paths += [p for p in _PATH.findall(expression) if p not in paths]
        if paths:
            out[name.removesuffix("/body.html")] = paths
    return out
