"""Composition: headers, parts, deterministic Message-ID, and no header injection."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
from datetime import UTC, datetime
from email.header import decode_header

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.app import Loaded
from service.delivery.addresses import DISPLAY_NAME_MAX_CHARS, SUBJECT_MAX_CHARS, cosmetic
from service.delivery.mime import Email, compose, seven_bit
from service.errors import InvalidRecipientError
from service.feedback.corrections import correlate
from service.feedback.webhooks import postmark_feedback
from service.flow.messages import letter_for
from service.render.renderer import Rendered
from service.routing import Category, Notification, Priority, route
from service.settings import MailSettings
from tests.conftest import body_part, event_from_example, make_event

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MAIL = MailSettings(from_address="no-reply@shop.example", from_name="Shop")


def _compose(n: Notification, r: Rendered, mail: MailSettings, now: datetime) -> Email:
    return compose(letter_for(n, r), mail, now)


PARTS = Rendered(subject="Votre commande — reçue", html="<p>é</p>", text="é\n", locale="fr")


def _n(loaded: Loaded, **recipient: object) -> Notification:
    (n,) = route(event_from_example(loaded, "order.confirmed", **recipient), loaded.table)
    return n


def _bare(name: str | None, key: str) -> Notification:
    """A notification built by hand, for properties over arbitrary names."""
    event = make_event("order.confirmed", {}, name=name)
    return Notification(
        type="t",
        template="t",
        category=Category.TRANSACTIONAL,
        priority=Priority.HIGH,
        recipient=event.recipient,
        idempotency_key=key,
        condition_met=True,
        utm={},
        event=event,
    )


def _parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_message_parses_back_with_every_header_and_both_parts(loaded: Loaded) -> None:
    n = _n(loaded)
    m = _compose(n, PARTS, MAIL, NOW)
    msg = _parse(m.data)
    assert "Shop <no-reply@shop.example>" == msg["From"]
    assert "Camille Martin <camille.martin@example.com>" == msg["To"]
    assert "Votre commande — reçue" == msg["Subject"]
    assert f"<{n.idempotency_key}@shop.example>" == msg["Message-ID"] == m.message_id
    assert "fr" == msg["Content-Language"]
    assert "auto-generated" == msg["Auto-Submitted"]
    assert "multipart/alternative" == msg.get_content_type()
    assert "é\n" == body_part(msg, "plain").get_content().replace("\r\n", "\n")
    assert "<p>é</p>" in body_part(msg, "html").get_content()
    assert all(line.endswith(b"\r") or not line for line in m.data.split(b"\n")[:-1])
    assert max(len(line) for line in m.data.split(b"\r\n")) <= 998  # RFC 5322 2.1.1


def test_postmark_metadata_names_the_mail_for_postmark_webhooks(loaded: Loaded) -> None:
    """With `relay_metadata=postmark` the Message-ID also goes as Postmark metadata, and a
    Postmark bounce that returns it is correlated with the outcome; by default no X-PM-
    header is written."""
    n = _n(loaded)
    assert "X-PM-" not in _compose(n, PARTS, MAIL, NOW).data.decode()
    postmark = MAIL.model_copy(update={"relay_metadata": "postmark"})
    m = _compose(n, PARTS, postmark, NOW)
    value = _parse(m.data)["X-PM-Metadata-herald-message-id"]
    assert m.message_id == value
    bounce = {
        "RecordType": "Bounce",
        "ID": 1,
        "Type": "HardBounce",
        "Email": "camille.martin@example.com",
        "BouncedAt": "2026-11-19T10:15:03Z",
        "Metadata": {"herald-message-id": value},
    }
    [item] = postmark_feedback(json.dumps(bounce).encode())
    assert n.idempotency_key == correlate(item, postmark.id_domain)


def test_message_id_is_deterministic(loaded: Loaded) -> None:
    """A redelivered notification carries the same Message-ID, so duplicates are detectable."""
    a = _compose(_n(loaded), PARTS, MAIL, NOW)
    b = _compose(_n(loaded), PARTS, MAIL, datetime(2027, 1, 1, tzinfo=UTC))
    assert a.message_id == b.message_id


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Eve\r\nBcc: x@example.com", "Eve Bcc: x@example.com"),
        ("Eve\nX-Evil: 1", "Eve X-Evil: 1"),
        ("Eve\x00", "Eve"),
        ("\u202eevE", "evE"),  # a right-to-left override would reorder what follows it
    ],
)
def test_a_display_name_is_cosmetic_so_the_mail_goes_with_it_cleaned(
    loaded: Loaded, name: str, shown: str
) -> None:
    """A control or bidirectional override in the name never stops a password reset: it is
    removed (line breaks become a space), and no header is added."""
    msg = _parse(_compose(_n(loaded, display_name=name), PARTS, MAIL, NOW).data)
    assert shown == msg["To"].addresses[0].display_name
    assert msg["Bcc"] is None
    assert msg["X-Evil"] is None


@pytest.mark.parametrize(
    "address", ["a@b.example\r\nBcc: c@d.example", "not-an-address", "a b@example.com", "<a@b>"]
)
def test_invalid_recipient_address_is_a_permanent_failure(loaded: Loaded, address: str) -> None:
    with pytest.raises(InvalidRecipientError):
        _compose(_n(loaded, email=address), PARTS, MAIL, NOW)


@given(st.text(max_size=80))
def test_no_display_name_can_add_a_header(name: str) -> None:
    """Property: whatever the name, the message has exactly the headers Herald wrote."""
    n = _bare(name, "k" * 32)
    m = _compose(n, PARTS, MAIL, NOW)
    msg = _parse(m.data)
    expected = {
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Language",
        "Auto-Submitted",
    }
    assert expected == set(msg.keys())
    assert "ada@example.com" == msg["To"].addresses[0].addr_spec


def test_optional_mail_carries_one_click_unsubscribe(loaded: Loaded) -> None:
    """RFC 8058: List-Unsubscribe with an https URL and List-Unsubscribe-Post; only when set."""
    parts = Rendered(
        subject="s",
        html="<p>h</p>",
        text="t\n",
        locale="en",
        unsubscribe_url="https://shop.example/unsubscribe?user=u1&list=x",
    )
    msg = _parse(_compose(_n(loaded), parts, MAIL, NOW).data)
    assert "<https://shop.example/unsubscribe?user=u1&list=x>" == msg["List-Unsubscribe"]
    assert "List-Unsubscribe=One-Click" == msg["List-Unsubscribe-Post"]
    plain = _parse(_compose(_n(loaded), PARTS, MAIL, NOW).data)
    assert plain["List-Unsubscribe"] is None


KEY = "0123456789abcdef" * 2
DELIMITER = f"--=_herald_{KEY}"
"""The boundary delimiter of a message for a notification keyed `KEY`."""

_text = st.text(
    # A 1-tuple gets no Collection[Literal] context in mypy (python/mypy#8921): ("Cs",) is right.
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"),  # type: ignore[arg-type]
    max_size=400,
)
_ascii = st.text(alphabet=st.characters(max_codepoint=127, blacklist_characters="\r\x00"))
_line = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=120)
_body = st.lists(
    st.one_of(
        _text,
        _ascii,
        st.sampled_from(["\n", ".", "\n.", "\n.\n", "\n..", "=_", "--", "é", "中文", "😀"]),
        # At the limits of what may go as is: lines of 998 and 999 octets, in ASCII and in
        # 2-byte characters; a bare CR; a NUL; the boundary delimiter.
        st.sampled_from(["x" * 998, "x" * 999, "é" * 499, "é" * 500, "\r", "\x00", DELIMITER]),
    ),
    max_size=6,
).map("".join)


def _encoding_for(text: str) -> str:
    """What `text` may go as, read the plain, slow way: as is only in lines of 998 octets at
    most (RFC 5322 2.1.1), without NUL or bare CR (RFC 2045 2.7) nor the delimiter."""
    lines = text.split("\n")
    if "\r" in text or "\x00" in text or DELIMITER in text:
        return "base64"
    if any(len(line.encode()) > 998 for line in lines):
        return "base64"
    return "7bit" if all(ord(c) < 128 for c in text) else "8bit"


def _read_back(msg: email.message.EmailMessage, subtype: str) -> tuple[str, str]:
    """A part's encoding and text as the parser gives them; a part sent as is keeps the CRLFs
    it was sent with, which `compose` made from the rendered text's LFs."""
    part = body_part(msg, subtype)
    encoding = part["Content-Transfer-Encoding"]
    content = part.get_content()
    return encoding, content if encoding == "base64" else content.replace("\r\n", "\n")


def _assert_seven_bit(m: Email, text: str, html: str) -> None:
    """`seven_bit(m)` is pure ASCII in lines of 998 octets at most and reads back the same;
    a message with no 8bit part is left as it is."""
    d = seven_bit(m)
    if not m.eight_bit:
        assert m is d
    assert not d.eight_bit
    assert d.data.isascii()
    assert all(len(line) <= 998 for line in d.data.split(b"\r\n"))
    msg = _parse(d.data)
    for subtype, rendered in (("plain", text), ("html", html)):
        expected = "base64" if _encoding_for(rendered) == "8bit" else _encoding_for(rendered)
        assert (expected, rendered) == _read_back(msg, subtype)


@settings(max_examples=300, deadline=None)
@given(subject=_line, name=st.one_of(st.none(), _line), text=_body, html=_body)
def test_message_parses_back_to_what_was_rendered(
    subject: str, name: str | None, text: str, html: str
) -> None:
    """Property (RFC 5322/2045/2046/2047): whatever the subject, name and bodies, each part
    goes 7bit, 8bit or base64 as it may, the standard library's parser reads back exactly
    those headers and parts, no line exceeds 998 octets; and so for the 7-bit downgrade."""
    n = _bare(name, KEY)
    subject = subject.strip() or "s"  # the renderer strips subjects
    m = _compose(n, Rendered(subject=subject, html=html, text=text, locale="fr"), MAIL, NOW)
    msg = _parse(m.data)
    assert cosmetic(subject, SUBJECT_MAX_CHARS) == msg["Subject"]
    _assert_display_name_reads_back(cosmetic(name, DISPLAY_NAME_MAX_CHARS), m.data, msg)
    assert "ada@example.com" == msg["To"].addresses[0].addr_spec
    assert (_encoding_for(text), text) == _read_back(msg, "plain")
    assert (_encoding_for(html), html) == _read_back(msg, "html")
    assert ("8bit" in (_encoding_for(text), _encoding_for(html))) == m.eight_bit
    assert all(len(line) <= 998 for line in m.data.split(b"\r\n"))
    _assert_seven_bit(m, text, html)


_ENCODED_WORD = re.compile(r"=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=")


def _raw_header(data: bytes, name: str) -> str:
    """A header's value as sent, unfolded (RFC 5322 2.2.3: a CRLF before whitespace goes)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    lines = re.sub(r"\r\n(?=[ \t])", "", head).split("\r\n")
    return next(line.split(": ", 1)[1] for line in lines if line.startswith(f"{name}: "))


def _rfc2047_text(value: str) -> str:
    """`value` read per RFC 2047 6.2: encoded-words decoded, whitespace between two adjacent
    ones ignored (the standard library's `decode_header` does this)."""
    return "".join(
        part if isinstance(part, str) else part.decode(charset or "ascii")
        for part, charset in decode_header(value)
    )


def _assert_display_name_reads_back(
    name: str, data: bytes, msg: email.message.EmailMessage
) -> None:
    """The display name reads back exactly: through CPython's parser, and where that parser
    departs from RFC 2047 (it puts a space between adjacent encoded-words, python/cpython#128110,
    and turns a run of whitespace inside one into a space), through an RFC 2047 reading of the
    raw phrase."""
    raw = _raw_header(data, "To")
    parsed = msg["To"].addresses[0].display_name
    if not name:
        assert "ada@example.com" == raw
        return
    phrase = raw[: raw.rindex(" <")]
    if phrase.startswith('"'):  # a quoted-string: CPython reads it as written
        assert name == parsed
        return
    assert name == _rfc2047_text(phrase)
    if not re.search(r"\?=\s+=\?", phrase) and not re.search(r"\s\s", name):
        assert name == parsed


def _assert_header_lines_fit(data: bytes) -> None:
    """RFC 5322 2.1.1: lines of From, To and Subject within 78 columns, unless one word is
    longer; RFC 2047 2: encoded-words of 75 characters at most, on lines of 76, each of whole
    UTF-8 characters."""
    field = ""
    for line in data.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n"):
        field = field if line[:1] in (" ", "\t") else line.split(":", 1)[0]
        if field not in ("From", "To", "Subject"):
            continue
        words = _ENCODED_WORD.findall(line)
        assert len(line) <= (76 if words else 78) or " " not in line.split(": ", 1)[-1].strip()
        for code in words:
            assert len(code) + 12 <= 75
            base64.b64decode(code).decode("utf-8")  # raises if a character was cut


_PIECES = st.sampled_from(
    [*"aZé ß-.,'\"\\@<>()", "  ", "中文字", "日本語の名前", "😀", "👩‍👩‍👧", "Ünïcödé", "=?", "word"]
)
_LONG = st.lists(_PIECES, min_size=1, max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(subject=st.one_of(_LONG, _line), name=st.one_of(_LONG, _line))
def test_long_non_ascii_subjects_and_names_are_encoded_and_fold(subject: str, name: str) -> None:
    """Property (RFC 2047, RFC 5322 2.1.1): long subjects and display names with accents,
    CJK, emoji and ZWJ sequences, quotes and specials read back exactly; encoded-words stay
    within 75 characters, cut between characters, and header lines within 76/78 columns."""
    subject = subject.strip() or "s"
    n = _bare(name, "0123456789abcdef" * 2)
    m = _compose(n, Rendered(subject=subject, html="h", text="t", locale="fr"), MAIL, NOW)
    msg = _parse(m.data)
    assert cosmetic(subject, SUBJECT_MAX_CHARS) == msg["Subject"]
    _assert_display_name_reads_back(cosmetic(name, DISPLAY_NAME_MAX_CHARS), m.data, msg)
    _assert_header_lines_fit(m.data)


@pytest.mark.parametrize(
    "name",
    [
        # Longer than one encoded-word (45 bytes of UTF-8): the case of python/cpython#128110.
        "Marie-Bérénice-Amélie Rosemonde Dûbois-Bénard de Saint-Hélène-sur-Mér",
        "Dr. Zoë O'Brien-Łukasiewicz, Jr.",
        "José 🎉 Smith",
        "Renée",
        "=?utf-8?b?w6k=?=",  # text, not an encoded-word
    ],
)
def test_display_names_standard_library_readers_agree_on(name: str) -> None:
    """Plain words stay atoms and short runs of others one encoded-word, so CPython's parser,
    which departs from RFC 2047 6.2 between adjacent encoded-words, reads these exactly."""
    m = _compose(_bare(name, "k" * 32), PARTS, MAIL, NOW)
    assert name == _parse(m.data)["To"].addresses[0].display_name
    assert not re.search(r"\?=\s+=\?", _raw_header(m.data, "To"))
    _assert_display_name_reads_back(name, m.data, _parse(m.data))
    _assert_header_lines_fit(m.data)


@pytest.mark.parametrize("subject", ["=?utf-8?b?w6k=?=", "Prix : 12 € =?x?q?y?= " + "é" * 80])
def test_subject_that_looks_encoded_reads_back_as_written(subject: str) -> None:
    """ASCII "=?…?=" in a subject is text: it is encoded so that no reader decodes it."""
    parts = Rendered(subject=subject, html="h", text="t", locale="fr")
    m = _compose(_bare("Ada", "k" * 32), parts, MAIL, NOW)
    assert subject == _parse(m.data)["Subject"]
    _assert_header_lines_fit(m.data)


def test_long_ascii_subject_folds_at_spaces_without_encoding() -> None:
    """An ASCII subject over 78 columns is folded, not encoded, and unfolds to itself."""
    subject = "Security alert: the email address of your Herald Demo account was changed today"
    parts = Rendered(subject=subject, html="h", text="t", locale="en")
    m = _compose(_bare("Ada", "k" * 32), parts, MAIL, NOW)
    assert b"=?" not in m.data.split(b"\r\n\r\n", 1)[0]
    assert subject == _raw_header(m.data, "Subject") == _parse(m.data)["Subject"]
    _assert_header_lines_fit(m.data)


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("", "7bit"),
        ("Plain ASCII\n.a line starting with a dot\n.\n", "7bit"),
        ("Déjà vu\n", "8bit"),
        ("x" * 998, "7bit"),
        ("x" * 999, "base64"),
        ("é" * 499, "8bit"),  # 998 octets
        ("é" * 500, "base64"),  # 500 characters, 1,000 octets
        (("x" * 998 + "\n") * 3, "7bit"),
        ("abc\n" * 1000 + "x" * 999, "base64"),  # the long line after many short ones
        ("x" * 500 + "\n" + "y" * 999 + "\nz", "base64"),
        ("carriage\rreturn", "base64"),
        ("already CRLF\r\n", "base64"),  # the renderer gives LF; a CR came from the data
        ("nul\x00", "base64"),
        (f"event data: {DELIMITER}", "base64"),
        (f"another message's --=_herald_{'f' * 32}", "7bit"),
    ],
)
def test_each_part_goes_as_is_when_it_may(text: str, encoding: str) -> None:
    """RFC 5322 2.1.1, RFC 2045 2.7-2.8, RFC 2046 5.1.1: unencoded, in ASCII or UTF-8, unless
    a line is over 998 octets, a CR or NUL is in it, or the part would hold its delimiter."""
    parts = Rendered(subject="s", html=text, text=text, locale="fr")
    msg = _parse(_compose(_bare("Ada", KEY), parts, MAIL, NOW).data)
    assert (encoding, text) == _read_back(msg, "plain") == _read_back(msg, "html")


def test_base64_fallback_is_what_encodebytes_gave() -> None:
    """A part that cannot go as is becomes one b2a_base64 sliced into 76 columns: byte for
    byte the old encodebytes output. So does an 8bit part in the 7-bit downgrade."""
    for text in ["\r", "é\r\n", "x" * 999, "\x00" + "x" * 57, "<p>é</p>\r\n" * 500]:
        parts = Rendered(subject="s", html=text, text=text, locale="fr")
        data = _compose(_bare("Ada", "k" * 32), parts, MAIL, NOW).data
        body = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
        assert 2 == data.count(b"base64\r\n\r\n" + body + b"\r\n--")
    text = "<p>é</p>\n" * 500
    parts = Rendered(subject="s", html=text, text=text, locale="fr")
    data = seven_bit(_compose(_bare("Ada", "k" * 32), parts, MAIL, NOW)).data
    body = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    assert 2 == data.count(b"base64\r\n\r\n" + body + b"\r\n--")


def test_rendered_mail_goes_unencoded_and_downgrades(loaded: Loaded) -> None:
    """The project's templates render short lines: the mail goes 8bit, a quarter smaller than
    base64 would make it, reads back as rendered, and its 7-bit downgrade too."""
    n = _n(loaded)
    r = loaded.renderer.render(n)
    m = _compose(n, r, MAIL, NOW)
    msg = _parse(m.data)
    assert ("8bit", r.html) == _read_back(msg, "html")
    assert (_encoding_for(r.text), r.text) == _read_back(msg, "plain")
    assert m.eight_bit
    assert len(m.data) < 0.8 * len(seven_bit(m).data)
    _assert_seven_bit(m, r.text, r.html)
