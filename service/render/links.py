"""Links in mail: the one-click unsubscribe URL of optional mail (RFC 8058) and UTM tags.

Pure functions over strings; the renderer applies them after the templates have run.
"""

from __future__ import annotations

import hashlib
import hmac
import html as html_lib
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from service.events.model import Recipient

_HREF = re.compile(r'href="(https?://[^"]+)"')


def unsubscribe_url(
    template: str, secret: bytes | None, recipient: Recipient, notification: str, category: str
) -> str:
    """Fill the template's {user_id}, {notification}, {category} and {token} (URL-quoted).

    {token} is an HMAC-SHA256 of user id, notification type and category, so the receiving
    endpoint can tell a genuine link from a forged one without a lookup.
    """
    values = {"user_id": recipient.user_id, "notification": notification, "category": category}
    if "{token}" in template:
        assert secret is not None  # load() refuses a {token} template without a secret
        message = "\x1f".join(values.values()).encode()
        values["token"] = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return template.format(**{k: quote(v, safe="") for k, v in values.items()})


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
        text = re.sub(re.escape(url) + r"(?=\s|$)", mapping[url], text, flags=re.M)
    return html, text
