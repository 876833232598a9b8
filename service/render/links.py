"""Links in mail: the one-click unsubscribe URL of optional mail (RFC 8058), which links a mail
may carry, and UTM tags.

Pure functions over strings; the renderer applies them after the templates have run.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from service import tokens
from service.errors import InvalidLink, RenderError
from service.events.model import Recipient

_HREF = re.compile(r'href="(https?://[^"]+)"')
_LINK = re.compile(r'\s(href|src)\s*=\s*"([^"]*)"', re.IGNORECASE)
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Nothing a URL may hold unencoded: controls, white space, bidirectional overrides."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkPolicy:
    """Which links a mail may carry."""

    allow_http: bool = False
    hosts: Sequence[str] = ()
    """Allowed hosts (each covering its subdomains); empty allows any."""


def unsubscribe_url(
    template: str,
    keys: tokens.Keys | None,
    recipient: Recipient,
    notification: str,
    category: str,
    expires_at: int,
) -> str:
    """Fill the template's {user_id}, {notification}, {category} and {token} (URL-quoted).

    {token} is signed (`service.tokens`), so the receiving endpoint can tell a genuine link
    from a forged one without a lookup, and an old one from a live one.
    """
    values = {"user_id": recipient.user_id, "notification": notification, "category": category}
    if "{token}" in template:
        if keys is None:  # load() refuses this; a Renderer built by hand may not
            raise RenderError("no key signs the unsubscribe link (links.unsubscribe_secret)")
        values["token"] = tokens.sign(keys, **values, expires_at=expires_at)
    return template.format_map({k: quote(v, safe="") for k, v in values.items()})


def check_links(html: str, policy: LinkPolicy) -> None:
    """InvalidLink naming the first `href` or `src` of the HTML part that is not an absolute
    https (or allowed http) URL to an allowed host; `mailto:` links pass."""
    for m in _LINK.finditer(html):
        attribute, url = m.group(1).lower(), html_lib.unescape(m.group(2))
        if attribute == "href" and url.lower().startswith("mailto:") and not _UNSAFE.search(url):
            continue
        problem = _problem(url, policy)
        if problem:
            raise InvalidLink(f"{attribute} {_shown(url)} {problem}")


def _problem(url: str, policy: LinkPolicy) -> str | None:
    if _UNSAFE.search(url):
        return "holds white space or a control character"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a URL"
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme.lower() not in schemes:
        return f"is not an absolute {' or '.join(schemes)} URL"
    if not host or "@" in parts.netloc:
        return "has no host, or names a user before it"
    if policy.hosts and not any(host == h or host.endswith("." + h) for h in policy.hosts):
        return f"points to {host}, which is not an allowed host"
    return None


def _shown(url: str) -> str:
    text = repr(url)
    return text if len(text) <= 80 else text[:77] + "…"


def with_utm(url: str, params: Mapping[str, str]) -> str:
    """Add UTM parameters to a URL, keeping any it already has (the template's word wins)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    query += [(k, v) for k, v in params.items() if k not in present]
    return urlunsplit(parts._replace(query=urlencode(query)))


def decorate(html: str, text: str, params: Mapping[str, str], keep: set[str]) -> tuple[str, str]:
    """Tag every http(s) link of the HTML part, and the same URLs where the text part shows
    them, except those in `keep` (the unsubscribe link must stay exactly as signed)."""
    if not params:
        return html, text
    mapping: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        # Any character reference, not only &amp;: Jinja writes ' as &#39; in attributes.
        url = html_lib.unescape(m.group(1))
        if url in keep:
            return m.group(0)
        tagged = with_utm(url, params)
        mapping[url] = tagged
        return 'href="' + tagged.replace("&", "&amp;").replace('"', "&quot;") + '"'

    html = _HREF.sub(sub, html)
    # Longest first, so a URL that is a prefix of another is not replaced inside it.
    for url in sorted(mapping, key=len, reverse=True):
        text = re.sub(re.escape(url) + r"(?=\s|$)", _literal(mapping[url]), text, flags=re.M)
    return html, text


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    """A replacement that is `text` as written, never a pattern (`\\1`, `\\g<0>`)."""
    return lambda _: text
