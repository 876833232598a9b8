"""Composition: rendered parts plus envelope become one RFC 5322 message, safely."""

from __future__ import annotations

import binascii
import dataclasses
import email.utils
import re
from dataclasses import dataclass
from datetime import datetime

from service.delivery.addresses import (
    DISPLAY_NAME_MAX_CHARS,
    SUBJECT_MAX_CHARS,
    checked_address,
    cosmetic,
)
from service.errors import HeaderInjectionError, MessageTooLarge
from service.settings import MailSettings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINE_MAX = 998
"""Octets in a header line, CRLF aside (RFC 5322 2.1.1)."""
_PIECE = re.compile(r" *[^ ]+| +")
"""A word with the spaces before it: a header folds before one (RFC 5322 2.2.3)."""
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
"""RFC 5322 atext: a display-name word that needs no quotes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Letter:
    """What a mail says and to whom, before MIME: rendered parts plus addressing."""

    key: str
    """The notification's idempotency key: the Message-ID and the MIME boundary derive from it."""
    to_address: str
    to_name: str | None
    subject: str
    html: str
    text: str
    language: str
    """Content-Language: the locale of the templates used."""
    unsubscribe_url: str | None = None
    """One-click unsubscribe (RFC 8058), for optional mail only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Email:
    """A message ready for SMTP: envelope plus wire bytes."""

    message_id: str
    envelope_from: str
    envelope_to: str
    data: bytes
    """CRLF-terminated RFC 5322 bytes, as DATA sends them."""

    @property
    def eight_bit(self) -> bool:
        """A part is raw UTF-8, so MAIL must say BODY=8BITMIME (RFC 6152). Read off the bytes,
        as everything else `compose` writes is ASCII: a stored flag would be lost where render
        workers hand an Email back as its four fields (service/flow/messages.py)."""
        return not self.data.isascii()

    @property
    def smtputf8(self) -> bool:
        """The address is UTF-8, so MAIL must say SMTPUTF8 (RFC 6531)."""
        return not self.envelope_to.isascii()


def message_id(key: str, domain: str) -> str:
    """Deterministic, so a resend of the same notification carries the same Message-ID."""
    return f"<{key}@{domain}>"


def _checked(value: str, what: str) -> str:
    """Header text from configuration or a signed URL: a control character is a bug upstream."""
    if _CONTROL.search(value):
        raise HeaderInjectionError(f"{what} holds a control character (CR/LF?)")
    return value


def _fold(col: int, pieces: list[str], width: int) -> tuple[str, int]:
    """`pieces` joined, with CRLF before any piece that starts with a space where the line
    would pass `width` columns; `col` is the column the first one starts at. Returns the text
    and its longest line. Unfolding (removing the CRLFs) gives the joined pieces back."""
    out: list[str] = []
    longest = 0
    for piece in pieces:
        if out and col + len(piece) > width and piece[:1] == " " and piece.strip():
            out.append("\r\n")
            longest, col = max(longest, col), 0
        out.append(piece)
        col += len(piece)
    return "".join(out), max(longest, col)


def _encoded_words(text: str, first: int) -> list[str]:
    """RFC 2047 B encoded-words of UTF-8 `text`, each a piece for `_fold`: at most 75
    characters (the first at most `first`), cut between characters, never inside one."""
    data, pos = text.encode(), 0
    words: list[str] = []
    room = max(first, 20)  # 20: room for one 4-byte character
    while pos < len(data):
        end = pos + (min(room, 75) - 12) // 4 * 3
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
            end -= 1
        code = binascii.b2a_base64(data[pos:end], newline=False).decode()
        words.append(f"{' ' if words else ''}=?utf-8?b?{code}?=")
        pos, room = end, 75
    return words


def _header_text(name: str, value: str) -> str:
    """Unstructured header value: as is, folded at spaces to 78 columns (RFC 5322 2.1.1),
    when ASCII; else RFC 2047 encoded-words, lines of 76 at most (RFC 2047 2)."""
    col = len(name) + 2
    if value.isascii() and "=?" not in value:  # "=?" would be read as an encoded-word
        text, longest = _fold(col, _PIECE.findall(value), 78)
        if longest <= 998:
            return text
    return _fold(col, _encoded_words(value, 76 - col), 76)[0]


def _address(name: str, display_name: str, addr: str) -> str:
    """`Display Name <addr>` for header `name`: the display name as atoms, quoted, or
    encoded-words, as it needs, folded."""
    phrase = display_name.strip()
    col = len(name) + 2
    if not phrase:
        return addr
    if phrase.isascii():
        plain = phrase
        if "=?" in phrase or not all(_ATOM.fullmatch(word) for word in phrase.split(" ")):
            # Quoted; "=\?" keeps a reader from taking "=?…?=" for an encoded-word.
            quoted = phrase.replace("\\", "\\\\").replace('"', '\\"').replace("=?", "=\\?")
            plain = f'"{quoted}"'
        text, longest = _fold(col, [*_PIECE.findall(plain), f" <{addr}>"], 78)
        if longest <= 998:
            return text
    return _fold(col, [*_encoded_phrase(phrase, 76 - col), f" <{addr}>"], 76)[0]


def _encoded_phrase(phrase: str, first: int) -> list[str]:
    """A display name as atoms and encoded-words, pieces for `_fold`.

    Plain words stay atoms and each run of other words becomes as few encoded-words as fit:
    RFC 2047 6.2 has readers drop the space between two adjacent encoded-words, while
    CPython's parser puts one there (python/cpython#128110), so both read a space between
    an atom and an encoded-word the same, and a run that fits one encoded-word too.
    """
    runs: list[tuple[bool, str]] = []
    for word in phrase.split(" "):
        # After a run of spaces the spaces live inside an encoded-word, so what follows
        # joins it: between two pieces a reader sees one space, or none.
        after_gap = bool(runs) and runs[-1][0] and runs[-1][1][-1:] in ("", " ")
        if not word:  # two spaces in a row
            if runs and runs[-1][0]:
                runs[-1] = (True, runs[-1][1] + " ")
            else:
                runs.append((True, ""))
        elif not after_gap and len(word) <= 75 and _ATOM.fullmatch(word) and "=?" not in word:
            runs.append((False, word))
        elif runs and runs[-1][0]:
            runs[-1] = (True, f"{runs[-1][1]} {word}")
        else:
            runs.append((True, word))
    pieces: list[str] = []
    for encode, text in runs:
        words = _encoded_words(text, first if not pieces else 75) if encode else [text]
        pieces += [f"{' ' if pieces else ''}{words[0].lstrip()}", *words[1:]]
    return pieces


def _base64(data: bytes) -> bytes:
    """Base64 in 76-column CRLF lines: 7-bit safe, and no line can start with a dot. One
    b2a_base64 over the body, then slices: `encodebytes` loops in Python every 57 bytes."""
    code = binascii.b2a_base64(data, newline=False)
    if not code:
        return b""
    return b"\r\n".join([code[i : i + 76] for i in range(0, len(code), 76)]) + b"\r\n"


def _lines_fit(data: bytes) -> bool:
    """No line of `data` is over 998 octets. Jumps to the last LF within 999 octets, so a
    16 kB body takes ~17 C-level `rfind`s; `split` would build an object for every line."""
    pos, end = 0, len(data)
    while end - pos > 998:
        lf = data.rfind(b"\n", pos, pos + 999)
        if lf < 0:
            return False
        pos = lf + 1
    return True


def _part(text: str, delimiter: bytes) -> tuple[bytes, bytes]:
    """Content-Transfer-Encoding and body of one part. The UTF-8 text goes as is, in CRLF
    lines, when it may: lines of 998 octets at most (RFC 5322 2.1.1), no NUL nor bare CR
    (RFC 2045 2.7, 2.8), and no `delimiter` a reader could end the part at (RFC 2046 5.1.1).
    Else base64: a third larger, and 2.5x the CPU for a rendered HTML part."""
    data = text.encode()
    if b"\r" not in data and b"\0" not in data and delimiter not in data and _lines_fit(data):
        return b"7bit" if data.isascii() else b"8bit", data.replace(b"\n", b"\r\n")
    return b"base64", _base64(data)


_EIGHT_BIT = b"\r\nContent-Transfer-Encoding: 8bit"
_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf_lines(data: bytes) -> bytes:
    """`data` with CRLF line ends, a bare CR or LF made one, and a final CRLF, as DATA carries
    it (RFC 5321 4.5.2); a DKIM signature is computed over these bytes. The regex pass runs only
    if a line end needs it."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _BARE_LINE_END.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def seven_bit(message: Email) -> Email:
    """The message with its 8bit parts in base64, for a server without 8BITMIME (RFC 6152 3).

    Relies on `compose`'s layout: the head, then each part after a `--boundary` line, its
    Content-Transfer-Encoding last among its headers; `_part` kept the delimiter out of the
    bodies, so splitting on it finds exactly the parts.
    """
    if not message.eight_bit:
        return message
    head, _, body = message.data.partition(b"\r\n\r\n")
    delimiter = b"\r\n" + body[: body.index(b"\r\n")]  # the CRLF before it is its own
    pieces = (b"\r\n" + body).split(delimiter)
    for i, piece in enumerate(pieces):
        part_head, blank, content = piece.partition(b"\r\n\r\n")
        if blank and part_head.endswith(_EIGHT_BIT):
            # `_part` made the CRLFs from the text's LFs: this is the text `compose` had.
            text = content.replace(b"\r\n", b"\n")
            pieces[i] = part_head[:-4] + b"base64\r\n\r\n" + _base64(text)
    data = head + b"\r\n\r\n" + delimiter.join(pieces)[2:]
    return dataclasses.replace(message, data=data)


def _headers(
    letter: Letter, mail: MailSettings, to_addr: str, mid: str, now: datetime
) -> list[str]:
    """The message's header lines but its Content-Type, folded."""
    headers = [
        f"From: {_address('From', mail.from_name, mail.from_address)}",
        f"To: {_address('To', cosmetic(letter.to_name, DISPLAY_NAME_MAX_CHARS), to_addr)}",
    ]
    if mail.reply_to:
        headers.append(f"Reply-To: {mail.reply_to}")
    headers += [
        f"Subject: {_header_text('Subject', cosmetic(letter.subject, SUBJECT_MAX_CHARS))}",
        f"Date: {email.utils.format_datetime(now)}",
        f"Message-ID: {mid}",
        "MIME-Version: 1.0",
        # RFC 3834: tells auto-responders (vacation replies) not to answer.
        "Auto-Submitted: auto-generated",
        f"Content-Language: {_checked(letter.language, 'locale')}",
    ]
    if mail.relay_metadata == "postmark":
        # Postmark's webhooks carry its own MessageID; this comes back as Metadata.
        headers.append(f"X-PM-Metadata-herald-message-id: {mid}")
    if letter.unsubscribe_url is not None:
        # RFC 8058 one-click: mailbox providers POST to the URL; only optional mail has it.
        url = _checked(letter.unsubscribe_url, "unsubscribe URL")
        if len(url) > _LINE_MAX - len("List-Unsubscribe: <>"):
            raise MessageTooLarge("the unsubscribe URL does not fit a header line (998 octets)")
        headers.append(f"List-Unsubscribe: <{url}>")
        headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    return headers


def compose(letter: Letter, mail: MailSettings, now: datetime) -> Email:
    """Build the multipart/alternative message; cosmetic text is cleaned, the address strict.

    Written out directly rather than through `email.message.EmailMessage`, which took most of
    the CPU of a mail; tests parse the result back with the standard library.
    """
    to_addr = checked_address(letter.to_address)
    mid = message_id(letter.key, mail.id_domain)
    # "=_" cannot occur in base64; `_part` encodes a text holding the delimiter.
    boundary = f"=_herald_{letter.key}"
    headers = _headers(letter, mail, to_addr, mid, now)
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    # ASCII but for a UTF-8 address, which RFC 6532 lets a header carry as is (SMTPUTF8).
    head = "\r\n".join(headers).encode()
    delimiter = f"--{boundary}".encode()
    text_encoding, text = _part(letter.text, delimiter)
    html_encoding, html = _part(letter.html, delimiter)
    data = b"".join(
        (
            head,
            b"\r\n\r\n",
            delimiter,
            b'\r\nContent-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: %s\r\n\r\n" % text_encoding,
            text,
            b"\r\n",
            delimiter,
            b'\r\nContent-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: %s\r\n\r\n" % html_encoding,
            html,
            b"\r\n",
            delimiter,
            b"--\r\n",
        )
    )
    if len(data) > mail.max_message_bytes:
        raise MessageTooLarge(
            f"the message has {len(data):,} bytes, over mail.max_message_bytes "
            f"({mail.max_message_bytes:,})"
        )
    return Email(message_id=mid, envelope_from=mail.from_address, envelope_to=to_addr, data=data)
