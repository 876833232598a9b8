"""`herald preview`: every notification in every locale, rendered from its example event into
a static gallery (`var/preview/index.html`) that opens in a browser with no server.

Each page shows the subject, the preheader, the headers that matter (category, one-click
unsubscribe), the HTML at desktop and mobile widths (iframes with `srcdoc`, so no file is
fetched) and the text part.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace
from pathlib import Path

from service.app import Loaded
from service.render.renderer import Rendered
from service.routing import Notification, route
from service.tools.examples import example_event

_PREHEADER = re.compile(r'<div class="preheader"[^>]*>(.*?)</div>', re.S)
_FILLER = re.compile(r"[\s\u034f\u200c]+$")
"""The layout's invisible filler after the preheader, `&#847;&zwnj;&nbsp;` over and over, once
decoded: templates write references, css_inline wrote characters (\\s includes NBSP)."""
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    file: str
    event_type: str
    notification: Notification
    locale: str
    rendered: Rendered

    @property
    def preheader(self) -> str:
        """Decoded before the filler is cut, so that a template whose CSS is inlined per mail
        (characters) and one inlined at load (references) show the same preview text."""
        m = _PREHEADER.search(self.rendered.html)
        return _FILLER.sub("", html.unescape(_TAGS.sub("", m.group(1)))).strip() if m else ""


def render_all(loaded: Loaded, examples: Path) -> list[Page]:
    """Every route x locale whose event has an example; conditions are ignored on purpose, so
    that a route the example does not take is still shown."""
    pages = []
    for event_type, spec in loaded.table.events.items():
        schema = loaded.store.reader(spec.schema_)
        path = examples / f"{event_type}.json"
        if schema is None or not path.is_file():
            continue
        for loc in loaded.renderer.locales:
            event = example_event(path, schema, event_type, locale=loc)
            for n in route(event, loaded.table):
                rendered = loaded.renderer.render(replace(n, condition_met=True))
                pages.append(
                    Page(
                        file=f"{n.template}.{loc}.html",
                        event_type=event_type,
                        notification=n,
                        locale=loc,
                        rendered=rendered,
                    )
                )
    return pages


def write_gallery(pages: list[Page], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for page in pages:
        (out / page.file).write_text(_page(page), encoding="utf-8")
    index = out / "index.html"
    index.write_text(_index(pages), encoding="utf-8")
    return index


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2937}
table{border-collapse:collapse}td,th{padding:6px 10px;border-bottom:1px solid #e5e7eb;text-align:left}
.frames{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
iframe{border:1px solid #d1d5db;background:#fff;height:1400px}
pre{background:#f9fafb;border:1px solid #e5e7eb;padding:12px;white-space:pre-wrap;max-width:72ch}
.meta{color:#6b7280}
"""


def _page(p: Page) -> str:
    e = html.escape
    n = p.notification
    unsubscribe = p.rendered.unsubscribe_url
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(n.template)} ({e(p.locale)})</title>
<style>{_STYLE}</style></head><body>
<p><a href="index.html">&larr; all notifications</a></p>
<h1>{e(p.rendered.subject)}</h1>
<table>
<tr><th>Preheader</th><td>{e(p.preheader)}</td></tr>
<tr><th>Event → notification</th><td>{e(p.event_type)} → {e(n.type)}</td></tr>
<tr><th>Category</th><td>{e(n.category.value)}{" (optional)" if n.category.optional else ""}</td></tr>
<tr><th>Template, locale</th><td>{e(n.template)}, {e(p.locale)}</td></tr>
<tr><th>List-Unsubscribe</th><td>{e(unsubscribe) if unsubscribe else "— (not optional mail)"}</td></tr>
</table>
<div class="frames">
<div><h2>Desktop (640 px)</h2><iframe title="desktop" width="640" srcdoc="{e(p.rendered.html)}"></iframe></div>
<div><h2>Mobile (375 px)</h2><iframe title="mobile" width="375" srcdoc="{e(p.rendered.html)}"></iframe></div>
<div><h2>Text part</h2><pre>{e(p.rendered.text)}</pre></div>
</div>
</body></html>
"""


def _index(pages: list[Page]) -> str:
    e = html.escape
    rows = "\n".join(
        f"<tr><td>{e(p.event_type)}</td><td>{e(p.notification.type)}</td>"
        f"<td>{e(p.notification.category.value)}</td><td>{e(p.locale)}</td>"
        f'<td><a href="{e(p.file)}">{e(p.rendered.subject)}</a></td>'
        f'<td class="meta">{e(p.preheader)}</td></tr>'
        for p in pages
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Herald notification gallery</title>
<style>{_STYLE}</style></head><body>
<h1>Herald notification gallery</h1>
<p class="meta">{len(pages)} renderings from the example events in schemas/examples/.</p>
<table><thead><tr><th>Event</th><th>Notification</th><th>Category</th><th>Locale</th>
<th>Subject</th><th>Preheader</th></tr></thead><tbody>
{rows}
</tbody></table></body></html>
"""
