"""Rendering: a notification becomes subject, HTML and text, in the recipient's language.

Templates live in `templates/<locale>/<template>/{subject.txt,body.html,body.txt}` and are
compiled once. The environment is sandboxed, HTML is autoescaped and a missing variable raises:
event data is only ever context, never template source. The layout's CSS is inlined into each
HTML template's source when the Renderer is built, not into every mail (service/css_preinline.py).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import css_inline
import structlog
from jinja2 import (
    BaseLoader,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)
from jinja2.sandbox import SandboxedEnvironment

from service import tokens
from service.errors import ConfigError, RenderError
from service.render import formats
from service.render.links import LinkPolicy, check_links, decorate, unsubscribe_url
from service.render.preinline import Preinliner
from service.render.wrap import wordwrap
from service.routing import Notification
from service.settings import BrandSettings, LinkSettings

log = structlog.get_logger("herald.rendering")

PARTS = ("subject.txt", "body.html", "body.txt")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    """The three parts of a mail, ready to be put into MIME."""

    subject: str
    html: str
    text: str
    locale: str
    """Template locale actually used, after fallback."""
    unsubscribe_url: str | None = None
    """Set for optional mail: goes into List-Unsubscribe (RFC 8058) and the footer."""


def freeze_heap() -> None:
    """Hide what start-up built from the garbage collector: it lives as long as the process.

    Compiled templates, schemas and CLDR data are most of the heap; a full collection would
    walk them with the event loop stopped, the latency tail of the mail in flight then
    (docs/benchmarks.md). Called once a process is ready:
    Herald by its command line, each render worker before it says so.
    """
    gc.collect()
    gc.freeze()


_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with `payload.field` on a plain dict read as an item straight away.

    Jinja tries the attribute first and reads the item only after an AttributeError: one
    raised exception per field a template reads, about a tenth of render time here. A plain
    dict has no attribute but dict's own, so skipping the attempt for any other name returns
    exactly what Jinja would; `payload.items` still means the method, as it does in Jinja.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


class Renderer:
    """Compiled templates for every locale under the templates directory."""

    def __init__(
        self,
        directory: Path,
        brand: BrandSettings,
        default_locale: str = "en",
        links: LinkSettings | None = None,
        *,
        inline_css_at_load: bool = True,
    ) -> None:
        """`inline_css_at_load=False` inlines every message's CSS as it is rendered, as
        before: the reference tests compare the templates' pre-inlined output against."""
        if not directory.is_dir():
            raise ConfigError(
                str(directory),
                "templates_dir",
                "directory does not exist",
                "point HERALD_TEMPLATES_DIR at the templates folder",
            )
        self._dir = directory
        self.directory = directory
        self.locales = sorted(
            p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("_")
        )
        if default_locale not in self.locales:
            raise ConfigError(
                str(directory),
                "mail.default_locale",
                f"no templates for {default_locale!r}",
                f"add {directory}/{default_locale}/ or set HERALD_MAIL__DEFAULT_LOCALE to one of "
                f"{self.locales}",
            )
        self.default_locale = default_locale
        self._brand = brand.model_dump()
        self._links = links or LinkSettings()
        self._keys = unsubscribe_keys(self._links)
        self._found = {
            loc: frozenset(d.name for d in (directory / loc).iterdir() if (d / PARTS[0]).is_file())
            for loc in self.locales
        }
        """Templates of each locale: those with a subject.txt, read once at load."""
        self._template_locale = lru_cache(maxsize=4096)(self._first_locale)
        self.loader = FileSystemLoader(directory)
        self._env = self._environment(self.loader)
        self._inliner = css_inline.CSSInliner(load_remote_stylesheets=False)
        pre = Preinliner(self._env, self._brand, self._inliner)
        self.css_inlined_at_load = frozenset(
            f"{loc}/{d.name}"
            for loc in (self.locales if inline_css_at_load else [])
            for d in sorted((directory / loc).iterdir())
            if (d / "body.html").is_file() and pre.add(f"{loc}/{d.name}/body.html")
        )
        """`<locale>/<template>` whose CSS was inlined at load; the others inline it per mail."""
        self.css_fallbacks = {name.rsplit("/", 1)[0]: why for name, why in pre.reasons.items()}
        """Why each other template keeps per-message inlining."""
        for template, why in sorted(self.css_fallbacks.items()):
            log.warning("css inlined per mail, not at load", template=template, reason=why)
        self._preinlined_env = self._environment(pre.loader(self.loader))
        self._preinlined_env.globals.update(pre.globals)

    def _environment(self, loader: BaseLoader) -> SandboxedEnvironment:
        env = _Sandbox(
            loader=loader,
            autoescape=select_autoescape(["html"], default_for_string=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            cache_size=-1,
        )
        env.filters.update(
            **formats.FILTERS,
            wordwrap=wordwrap,
        )
        return env

    def warm(self) -> int:
        """Compile every template, and load each template locale's formats, now, so the first
        mail of each type after a deploy does not wait for them: compiling all of them takes
        ~0.5 s, and done lazily it lands on the first mails, which are often the ones someone
        is waiting for. Returns how many templates were compiled."""
        count = 0
        for name in self.loader.list_templates():
            loc, _, rest = name.partition("/")
            shared = (name.startswith("_") or rest.startswith("_")) and name.endswith(
                (".html", ".txt")
            )
            if not shared and (loc not in self.locales or name.rsplit("/", 1)[-1] not in PARTS):
                continue
            if loc in self.locales:
                formats.babel_locale(loc)
            preinlined = rest.endswith("/body.html") and (
                f"{loc}/{rest.split('/')[0]}" in self.css_inlined_at_load
            )
            envs = [self._env, self._preinlined_env] if shared else []
            envs = envs or [self._preinlined_env if preinlined else self._env]
            for env in envs:
                try:
                    env.get_template(name)
                except TemplateSyntaxError as exc:
                    raise ConfigError(
                        str(self._dir / name),
                        f"line {exc.lineno}",
                        f"template does not compile: {exc.message}",
                        "fix the template; `herald check` lists every problem",
                    ) from exc
                count += 1
        for loc in self.locales:
            if (data := formats.babel_locale(loc)) is not None:
                formats.load_formats(data)
        return count

    def missing(self, template: str) -> list[str]:
        """Template files absent for `template`: the default locale must have all three parts,
        and a locale that has the template at all must have all three too."""
        return [
            f"{self._dir}/{loc}/{template}/{part}"
            for loc in self.locales
            if loc == self.default_locale or (self._dir / loc / template).is_dir()
            for part in PARTS
            if not (self._dir / loc / template / part).is_file()
        ]

    def locale_chain(self, tag: str) -> list[str]:
        """`fr-CA` → [`fr-ca`, `fr`, default], keeping only locales that have templates."""
        tag = tag.strip().lower().replace("_", "-")
        chain: list[str] = []
        parts = tag.split("-")
        for i in range(len(parts), 0, -1):
            cand = "-".join(parts[:i])
            if cand in self.locales and cand not in chain:
                chain.append(cand)
        if self.default_locale not in chain:
            chain.append(self.default_locale)
        return chain

    def _first_locale(self, tag: str, template: str) -> str | None:
        """First locale of `tag`'s chain that has `template`, from the tree read at load, so
        no mail stats a file."""
        return next((loc for loc in self.locale_chain(tag) if template in self._found[loc]), None)

    def render(self, n: Notification) -> Rendered:
        """Render all three parts in the first locale of the chain that has the template."""
        loc = self._template_locale(n.recipient.locale, n.template)
        if loc is None:
            raise RenderError(f"template {n.template!r} exists in no locale")
        unsubscribe = None
        if n.category.optional:
            # From the event's time, so every rendering of one notification has the same link.
            occurred = int(n.event.occurred_at.timestamp())
            expires_at = occurred + self._links.unsubscribe_token_days * 86_400
            unsubscribe = unsubscribe_url(
                self._links.unsubscribe_url,
                self._keys,
                n.recipient,
                n.type,
                n.category.value,
                expires_at,
            )
        ctx = template_context(n, self._brand)
        ctx["unsubscribe_url"] = unsubscribe
        r = n.recipient
        with formats.audience(r.locale, loc, r.time_zone):
            subject, html, text = self._parts(f"{loc}/{n.template}", ctx)
        utm = {**self._links.utm, **n.utm}
        if utm:
            utm.setdefault("utm_campaign", n.type)
        html, text = decorate(html, text.strip() + "\n", utm, {unsubscribe or ""})
        hosts = n.link_hosts or self._links.allowed_hosts
        check_links(html, LinkPolicy(allow_http=self._links.allow_http, hosts=hosts))
        return Rendered(
            subject=subject.strip(),
            html=html,
            text=text,
            locale=loc,
            unsubscribe_url=unsubscribe,
        )

    def _parts(self, name: str, ctx: dict[str, Any]) -> tuple[str, str, str]:
        """Subject, HTML (CSS inlined) and text of template `name` (`<locale>/<template>`)."""
        try:
            subject = self._env.get_template(f"{name}/subject.txt").render(ctx)
            if name in self.css_inlined_at_load:
                html = self._preinlined_env.get_template(f"{name}/body.html").render(ctx)
            else:
                html = self._inliner.inline(self._env.get_template(f"{name}/body.html").render(ctx))
            text = self._env.get_template(f"{name}/body.txt").render(ctx)
        except TemplateNotFound as exc:
            raise RenderError(f"template file missing: {exc.name}") from exc
        except Exception as exc:  # TemplateError, or a filter choking on the event's data
            raise RenderError(f"{name}: {type(exc).__name__}: {exc}") from exc
        return subject, html, text


def unsubscribe_keys(links: LinkSettings) -> tokens.Keys | None:
    """The keys that sign and verify unsubscribe tokens; None without a signing key."""
    if links.unsubscribe_secret is None:
        return None
    secrets = {k: v.get_secret_value().encode() for k, v in links.unsubscribe_previous_keys.items()}
    secrets[links.unsubscribe_key_id] = links.unsubscribe_secret.get_secret_value().encode()
    return tokens.Keys(current=links.unsubscribe_key_id, secrets=secrets)


def template_context(n: Notification, brand: Mapping[str, Any]) -> dict[str, Any]:
    """What a template sees: plain data of the event and its recipient, never objects."""
    r = n.recipient
    return {
        "recipient": {
            "user_id": r.user_id,
            "email": r.email,
            "display_name": r.display_name,
            "locale": r.locale,
            "time_zone": r.time_zone,
        },
        "payload": n.event.payload,
        "event": {
            "event_id": n.event.event_id,
            "event_type": n.event.event_type,
            "occurred_at": n.event.occurred_at,
        },
        "brand": brand,
        "notification": {"type": n.type, "category": str(n.category)},
        "locale": r.locale,
    }
