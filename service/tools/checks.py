"""`herald check`: templates checked against the event schemas, without Kafka.

Every route must have its template in every locale, and every `payload.…`, `recipient.…` and
`event.…` path a template (or a route's `when`) reads must exist in the event's Avro schema. The
templates are parsed, not rendered: paths are followed through the Jinja2 AST, including loop
variables (`{% for line in payload.lines %}` → `line.sku` is checked against the array's items)
and `{% set %}` aliases. What cannot be typed statically (macro parameters, filter results) is
left to the render-time StrictUndefined. Templates whose CSS is inlined into every mail rather
than once at load are named too, as warnings: they work, at a cost in every mail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from service.app import Loaded
from service.render.renderer import PARTS

CONTEXT = {"recipient", "payload", "event", "brand", "notification", "locale", "unsubscribe_url"}
"""Names the renderer puts into every template's context."""
_JINJA = {
    "self",
    "loop",
    "caller",
    "varargs",
    "kwargs",
    "range",
    "lipsum",
    "dict",
    "cycler",
    "joiner",
    "namespace",
    "super",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
}
_RECIPIENT = {
    "user_id": "string",
    "email": "string",
    "display_name": "string",
    "locale": "string",
    "time_zone": "string",
}
_EVENT = {"event_id": "string", "event_type": "string", "occurred_at": "long"}


@dataclass(frozen=True, slots=True)
class Problem:
    where: str
    """`<locale>/<template>/<part>:<line>` or `routing: events.<type>…when`."""
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class _Types:
    """Avro types by name, so fields of named records can be followed."""

    def __init__(self, schema: Any) -> None:
        self.named: dict[str, Any] = {}
        self._collect(schema)

    def _collect(self, s: Any) -> None:
        if isinstance(s, list):
            for b in s:
                self._collect(b)
        elif isinstance(s, dict):
            if s.get("type") in ("record", "enum", "fixed") and "name" in s:
                self.named[s["name"]] = s
            for f in s.get("fields", []):
                self._collect(f["type"])
            for key in ("items", "values"):
                if key in s:
                    self._collect(s[key])
            if isinstance(s.get("type"), dict | list):
                self._collect(s["type"])

    def resolve(self, s: Any) -> Any:
        """Strip nulls from unions and follow names; a union of several types stays a list."""
        if isinstance(s, str) and s in self.named:
            return self.named[s]
        if isinstance(s, list):
            rest = [b for b in s if b != "null"]
            return self.resolve(rest[0]) if len(rest) == 1 else rest
        if (
            isinstance(s, dict)
            and isinstance(s.get("type"), dict | list | str)
            and (s.get("type") not in ("record", "array", "map", "enum", "fixed"))
        ):
            return self.resolve(s["type"]) if isinstance(s["type"], dict | list) else s
        return s

    def field(self, record: Any, name: str) -> tuple[bool, Any]:
        """(known, type of the field) — known is False when `record` is not a record."""
        rec = self.resolve(record)
        if isinstance(rec, dict) and rec.get("type") == "record":
            for f in rec["fields"]:
                if f["name"] == name:
                    return True, f["type"]
            raise KeyError(sorted(f["name"] for f in rec["fields"]))
        if isinstance(rec, dict) and rec.get("type") == "map":
            return True, rec["values"]
        return False, None

    def items(self, s: Any) -> Any:
        rec = self.resolve(s)
        if isinstance(rec, dict) and rec.get("type") == "array":
            return rec["items"]
        return None


_UNKNOWN = object()
"""A value whose type is not known statically: nothing read from it is checked."""


class _Checker:
    def __init__(self, types: _Types, payload: Any, where: str, problems: list[Problem]) -> None:
        self._t = types
        self._where = where
        self._problems = problems
        self._scopes: list[dict[str, Any]] = [
            {
                "payload": payload,
                "recipient": {
                    "type": "record",
                    "name": "Recipient",
                    "fields": [{"name": k, "type": v} for k, v in _RECIPIENT.items()],
                },
                "event": {
                    "type": "record",
                    "name": "event",
                    "fields": [{"name": k, "type": v} for k, v in _EVENT.items()],
                },
            }
        ]
        self._locals: list[set[str]] = [set()]

    def _lookup(self, name: str) -> Any:
        for scope in reversed(self._scopes):
            if name in scope:
                return scope[name]
        return _UNKNOWN

    def _bind(self, target: nodes.Node, value: Any) -> None:
        for n in target.find_all(nodes.Name) if not isinstance(target, nodes.Name) else [target]:
            self._scopes[-1][n.name] = value if isinstance(target, nodes.Name) else _UNKNOWN
            self._locals[-1].add(n.name)

    def _report(self, node: nodes.Node, message: str) -> None:
        self._problems.append(Problem(f"{self._where}:{node.lineno}", message))

    def type_of(self, node: nodes.Node) -> Any:
        """Type of an expression, checking every attribute step on the way."""
        if isinstance(node, nodes.Name):
            known = any(node.name in s for s in self._locals) or node.name in CONTEXT
            if not known and node.name not in _JINJA:
                self._report(
                    node, f"`{node.name}` is not in the template context (known: {sorted(CONTEXT)})"
                )
            return self._lookup(node.name)
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            base = self.type_of(node.node)
            if isinstance(node, nodes.Getattr):
                attr = node.attr
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                attr = node.arg.value
            else:
                self.visit(node.arg)
                items = self._t.items(base) if base is not _UNKNOWN else None
                return items if items is not None else _UNKNOWN
            if base is _UNKNOWN or base is None:
                return _UNKNOWN
            try:
                known, t = self._t.field(base, attr)
            except KeyError as exc:
                self._report(
                    node,
                    f"`{_path(node)}`: no field `{attr}` in "
                    f"{self._t.resolve(base).get('name', '?')} "
                    f"(it has: {', '.join(exc.args[0])})",
                )
                return _UNKNOWN
            return t if known else _UNKNOWN
        self.visit(node)
        return _UNKNOWN

    def visit(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.Name | nodes.Getattr | nodes.Getitem):
            self.type_of(node)
        elif isinstance(node, nodes.For):
            items = self._t.items(self.type_of(node.iter))
            self._push()
            self._bind(node.target, items if items is not None else _UNKNOWN)
            self._locals[-1].add("loop")
            for child in (*node.body, *node.else_, *([node.test] if node.test else [])):
                self.visit(child)
            self._pop()
        elif isinstance(node, nodes.Assign):
            self._bind(node.target, self.type_of(node.node))
        elif isinstance(node, nodes.AssignBlock):  # {% set x %}…{% endset %}: a string
            for child in node.body:
                self.visit(child)
            self._bind(node.target, _UNKNOWN)
        elif isinstance(node, nodes.Macro | nodes.CallBlock):
            if isinstance(node, nodes.CallBlock):
                self.visit(node.call)
            self._push()
            for arg in node.args:
                self._bind(arg, _UNKNOWN)
            for child in (*node.defaults, *node.body):
                self.visit(child)
            self._pop()
            if isinstance(node, nodes.Macro):
                self._locals[-1].add(node.name)
        elif isinstance(node, nodes.Import | nodes.FromImport):
            names = (
                [node.target]
                if isinstance(node, nodes.Import)
                else [n if isinstance(n, str) else n[1] for n in node.names]
            )
            self._locals[-1].update(names)
        elif isinstance(node, nodes.Filter | nodes.Test):
            if node.node is not None:
                self.visit(node.node)
            for child in (*node.args, *(kw.value for kw in node.kwargs)):
                self.visit(child)
        else:
            for child in node.iter_child_nodes():
                self.visit(child)

    def _push(self) -> None:
        self._scopes.append({})
        self._locals.append(set())

    def _pop(self) -> None:
        self._scopes.pop()
        self._locals.pop()


def _path(node: nodes.Node) -> str:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_path(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return f"{_path(node.node)}[{node.arg.value!r}]"
    return "…"


def check(loaded: Loaded) -> list[Problem]:
    """Every problem found; an empty list means every route renders from what its event has."""
    problems: list[Problem] = []
    renderer = loaded.renderer
    env = SandboxedEnvironment(loader=renderer.loader)
    for event_type, routes in loaded.table.routes.items():
        schema = loaded.store.reader(loaded.table.events[event_type].schema_)
        if schema is None:
            continue  # load() already refused this
        types = _Types(schema.parsed)
        payload = types.field(schema.parsed, "payload")[1]
        for i, route in enumerate(routes):
            spec = route.spec
            if spec.when:
                where = f"routing: events.{event_type}.notifications[{i}].when"
                _Checker(types, payload, where, problems).visit(env.parse(f"{{{{ {spec.when} }}}}"))
            for loc in renderer.locales:
                for part in PARTS:
                    name = f"{loc}/{spec.template}/{part}"
                    for source in _source(renderer, name):
                        if source is None:
                            problems.append(Problem(name, "template file missing"))
                            continue
                        _Checker(types, payload, name, problems).visit(env.parse(source, name))
    return problems


def css_fallbacks(loaded: Loaded) -> list[Problem]:
    """What works but costs: each template whose CSS is inlined into every mail rather than
    once at load, and why (the layout's comment says what keeps it at load)."""
    return [
        Problem(f"{name}/body.html", f"CSS inlined per mail, not at load (costs every mail): {why}")
        for name, why in sorted(loaded.renderer.css_fallbacks.items())
    ]


def _source(renderer: Any, name: str) -> Iterator[str | None]:
    path = renderer.directory / name
    yield path.read_text(encoding="utf-8") if path.is_file() else None
