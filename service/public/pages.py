"""The listener's pages, in English and French: confirm, done, and why a link did not work.

One autoescaped Jinja2 template; the only style is one inline block, allowed by its hash in
the Content-Security-Policy, so the pages need no script, no external resource and no
`unsafe-inline`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from jinja2 import DictLoader, Environment, StrictUndefined

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "color:#1f2328;line-height:1.5}button{font:inherit;padding:.6rem 1.2rem;border:0;"
    "border-radius:.4rem;background:#1f6feb;color:#fff;cursor:pointer}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""No script, no fetch, no frame; the form may post only to this origin."""

_PAGE = """<!doctype html>
<html lang="{{ lang }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }}</title>
<style>{{ style }}</style>
</head>
<body>
<h1>{{ title }}</h1>
<p>{{ text }}</p>
{% if button %}
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<input type="hidden" name="page" value="1">
<input type="hidden" name="locale" value="{{ lang }}">
<button type="submit" id="unsubscribe">{{ button }}</button>
</form>
{% endif %}
</body>
</html>
"""

MESSAGES: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "en": {
        "confirm": (
            "Unsubscribe?",
            "You will no longer receive “{category}” emails. Account and security emails "
            "are not affected.",
        ),
        "done": (
            "You are unsubscribed",
            "You will no longer receive “{category}” emails. You can close this page.",
        ),
        "bad_request": ("This link is incomplete", "Please use the link from the email as is."),
        "forged": ("This link is not valid", "Please use the link from the email as is."),
        "expired": (
            "This link has expired",
            "Use the unsubscribe link of a more recent email, or your account settings.",
        ),
        "unknown_list": (
            "This list no longer exists",
            "Use the unsubscribe link of a more recent email, or your account settings.",
        ),
        "unavailable": (
            "Please try again",
            "Your choice could not be saved just now. Nothing was changed.",
        ),
        "not_one_click": (
            "Nothing was changed",
            "This request did not ask to unsubscribe. Please use the button on the page.",
        ),
        "too_large": ("Request too large", "Nothing was changed."),
    },
    "fr": {
        "confirm": (
            "Se désabonner ?",
            "Vous ne recevrez plus les e-mails « {category} ». Les e-mails liés à votre compte "
            "et à sa sécurité ne sont pas concernés.",
        ),
        "done": (
            "Vous êtes désabonné(e)",
            "Vous ne recevrez plus les e-mails « {category} ». Vous pouvez fermer cette page.",
        ),
        "bad_request": (
            "Ce lien est incomplet",
            "Veuillez utiliser le lien de l’e-mail tel quel.",
        ),
        "forged": ("Ce lien n’est pas valide", "Veuillez utiliser le lien de l’e-mail tel quel."),
        "expired": (
            "Ce lien a expiré",
            "Utilisez le lien de désabonnement d’un e-mail plus récent, ou les réglages de "
            "votre compte.",
        ),
        "unknown_list": (
            "Cette liste n’existe plus",
            "Utilisez le lien de désabonnement d’un e-mail plus récent, ou les réglages de "
            "votre compte.",
        ),
        "unavailable": (
            "Veuillez réessayer",
            "Votre choix n’a pas pu être enregistré pour l’instant. Rien n’a été modifié.",
        ),
        "not_one_click": (
            "Rien n’a été modifié",
            "Cette demande ne demandait pas de désabonnement. Utilisez le bouton de la page.",
        ),
        "too_large": ("Requête trop volumineuse", "Rien n’a été modifié."),
    },
}
"""Title and text of each page, by locale; `{category}` is filled in where present."""

BUTTONS = {"en": "Unsubscribe", "fr": "Me désabonner"}
CATEGORY_NAMES: Mapping[str, Mapping[str, str]] = {
    "en": {"activity": "activity", "report": "report", "reminder": "reminder"},
    "fr": {"activity": "activité", "report": "rapport", "reminder": "rappel"},
}
"""How each optional category is named to people; another shows as its id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One rendered page: its HTML and its title, for tests and logs alike."""

    html: str
    title: str


_ENV = Environment(
    loader=DictLoader({"page.html": _PAGE}),
    autoescape=True,
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def render(kind: str, lang: str, *, category: str | None = None) -> Page:
    """The page of this kind in this language; the confirmation carries the button."""
    title, text = MESSAGES[lang][kind]
    shown = CATEGORY_NAMES[lang].get(category or "", category or "")
    html = _ENV.get_template("page.html").render(
        lang=lang,
        title=title,
        text=text.replace("{category}", shown),
        style=STYLE,
        button=BUTTONS[lang] if kind == "confirm" else None,
    )
    return Page(html=html, title=title)
