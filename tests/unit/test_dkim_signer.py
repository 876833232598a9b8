"""The hand-written DKIM signer against the reference: dkimpy verifies whatever it signs, over
generated headers and bodies, and not once a byte that counts is changed; its body hash is
dkimpy's and RFC 8463's; Ed25519 signs as RFC 8463 says; its header folds under the limits."""

from __future__ import annotations

import base64
import hashlib
import pickle
import re
import time
from collections.abc import Sequence
from email.header import Header

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from service.delivery.dkim import ED25519_SHA256, Signer, public_record, relaxed_body, signer
from service.delivery.mime import crlf_lines
from service.errors import InternalError
from service.settings import DkimSettings, MailSettings
from service.settings.dkim import DEFAULT_HEADERS
from service.testing import dkim_ed25519_key, dkim_key
from tests.dkimpy import verify, verify_with

RFC8463_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
"""RFC 8463 A.2: the example's Ed25519 private key (its seed), published at brisbane."""
RFC8463_RECORD = b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RFC8463_MESSAGE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n"
)
"""RFC 8463 A.3 (the RFC 6376 example), and below the signature it publishes for it."""
RFC8463_SIGNATURE = (
    b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    b" subject : date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5"
    b"OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
)


def _signer(
    pem: bytes, domain: str = "shop.example", headers: Sequence[str] = DEFAULT_HEADERS
) -> Signer:
    made = signer(
        DkimSettings(
            domain=domain,
            selector="s1",
            private_key=SecretStr(pem.decode()),
            headers=list(headers),
        ),
        MailSettings(from_address=f"no-reply@{domain}"),
    )
    assert made is not None
    return made


_RSA = _signer(dkim_key())
_ED = _signer(dkim_ed25519_key())


def _tag(data: bytes, tag: str) -> str:
    header = re.match(rb"DKIM-Signature:(.*?)\r\n(?![ \t])", data, re.DOTALL)
    assert header is not None
    value = re.sub(r"\s+", "", header.group(1).decode())
    return dict(t.split("=", 1) for t in value.split(";") if t)[tag]


def test_the_verifier_verifies_rfc_8463s_own_example() -> None:
    """dkimpy with its Ed25519 step through `cryptography` (tests/dkimpy.py) verifies the
    signature RFC 8463 A.3 publishes, and refuses it over a changed Subject: the test
    verifier is RFC 8463's algorithm."""
    signed = RFC8463_SIGNATURE + RFC8463_MESSAGE
    assert True is verify_with(signed, lambda name, timeout=5: RFC8463_RECORD)
    changed = signed.replace(b"dinner", b"lunch")
    assert False is verify_with(changed, lambda name, timeout=5: RFC8463_RECORD)


def test_rfc_8463s_key_signs_its_example_verifiably() -> None:
    """The RFC's own key and message, signed here: the RFC's record and bh=, a=ed25519-sha256,
    and dkimpy verifies the signature against the published record."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(RFC8463_SEED))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert RFC8463_RECORD == public_record(pem)
    made = _signer(pem, domain="football.example.com")
    assert (ED25519_SHA256, "ed25519") == (made.algorithm, made.kind)
    signed = made.sign(RFC8463_MESSAGE)
    assert "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=" == _tag(signed, "bh")
    assert "ed25519-sha256" == _tag(signed, "a")
    assert True is verify_with(signed, lambda name, timeout=5: RFC8463_RECORD)
    assert False is verify_with(
        signed.replace(b"Joe.", b"Jim."), lambda n, timeout=5: RFC8463_RECORD
    )


@pytest.mark.parametrize(
    "body",
    [
        b"Hello  \r\nworld\t \r\n\r\n\r\n",
        b"",
        b"\r\n\r\n",
        b" \t \r\n\t\r\n",
        b"a\tb  c \r\n\r\nd\r\n",
        b"no final line end",
        b"LF\nonly\n\n",
    ],
)
def test_bh_is_dkimpys(monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    """For a fixed message, key and time, bh= and t= are what dkimpy's `sign` writes with the
    same settings over the same wire bytes: the canonical body is the reference's (an empty
    one hashes as empty, RFC 6376 3.4.4)."""
    message = b"From: no-reply@shop.example\r\nSubject: x\r\n\r\n" + body
    monkeypatch.setattr(time, "time", lambda: 1_796_083_200.0)
    ours = _RSA.sign(message, timestamp=1_796_083_200)
    assert ours.endswith(crlf_lines(message))
    assert "1796083200" == _tag(ours, "t")
    theirs = _reference(crlf_lines(message), _RSA)
    assert (_tag(theirs, "bh"), _tag(theirs, "t")) == (_tag(ours, "bh"), _tag(ours, "t"))
    assert True is verify(ours, _RSA)


def _reference(wire: bytes, made: Signer) -> bytes:
    """dkimpy's DKIM-Signature over the same bytes and fields, relaxed/relaxed, RSA."""
    rsa_pem = _RSA.key  # bh= does not depend on the key; dkimpy signs Ed25519 only with PyNaCl
    theirs: bytes = dkim.sign(
        wire,
        made.selector,
        made.domain,
        rsa_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"subject"],
    )
    return theirs


_ENDS = st.sampled_from(["\r\n", "\n", "\r"])
_GAPS = st.sampled_from([" ", "  ", "\t", " \t ", "\r\n ", "\r\n\t", "\r\n  "])
_WORD = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=14)


@st.composite
def _value(draw: st.DrawFn) -> bytes:
    """A header field's value as it may be written: RFC 2047 encoded-words folded at 76, or
    words between runs of spaces and tabs and folds, white space before and after."""
    if draw(st.booleans()):
        text = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=90))
        return b" " + Header(text, "utf-8").encode(linesep="\r\n").encode()
    words = draw(st.lists(_WORD, max_size=40))
    gaps = draw(st.lists(_GAPS, min_size=len(words), max_size=len(words)))
    lead, trail = (
        draw(st.sampled_from(["", " ", "  ", "\t"])),
        draw(st.sampled_from(["", " ", "\t "])),
    )
    return (lead + "".join(g + w for g, w in zip(gaps, words, strict=True)) + trail).encode()


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    """A message: From, To, Subject (names in any case) and an unsigned X-Mailer in any
    order; a body of lines with runs of WSP, UTF-8, CRLF, LF or CR ends, trailing blank or
    white lines, or none; all of it in LF lines sometimes."""
    subject = draw(st.sampled_from(["Subject", "subject", "SUBJECT", "sUbJeCt"]))
    fields = [
        b"From:"
        + draw(
            st.sampled_from(
                [
                    b" Shop <no-reply@shop.example>",
                    b"no-reply@shop.example",
                    b" =?utf-8?q?Caf=C3=A9?=\r\n <no-reply@shop.example>  ",
                ]
            )
        ),
        b"To:" + draw(_value()),
        subject.encode() + b":" + draw(_value()),
        b"X-Mailer:" + draw(_value()),
    ]
    fields = draw(st.permutations(fields))
    lines = draw(
        st.lists(st.tuples(st.text(st.sampled_from("ab .é注\t "), max_size=30), _ENDS), max_size=12)
    )
    body = "".join(text + end for text, end in lines)
    body += "".join(
        w + "\r\n" for w in draw(st.lists(st.sampled_from(["", " ", "\t", "  \t"]), max_size=3))
    )
    if body and draw(st.booleans()):
        body = body.rstrip("\r\n")
    message = b"\r\n".join(fields) + b"\r\n\r\n" + body.encode()
    return message.replace(b"\r\n", b"\n") if draw(st.booleans()) else message


def _flip(data: bytes, start: int, end: int, pick: int) -> bytes | None:
    """`data` with one octet between `start` and `end` that is not a line end nor the first
    of a line made another, non-WSP one; None if there is none."""
    where = [i for i in range(start, end) if data[i] not in b"\r\n" and data[i - 1] != ord("\n")]
    if not where:
        return None
    i = where[pick % len(where)]
    return data[:i] + (b"%" if data[i] == ord("#") else b"#") + data[i + 1 :]


def _field(data: bytes, name: bytes) -> tuple[int, int]:
    """Where the value of the (one) field `name` lies in `data`'s header, case ignored."""
    match = re.search(rb"\r\n" + name + rb":((?:[^\r]|\r\n[ \t])*)\r\n", data, re.IGNORECASE)
    assert match is not None
    return match.start(1), match.end(1)


@settings(max_examples=120, deadline=None)
@given(message=_messages(), ed=st.booleans(), pick=st.integers(0, 10**6))
def test_generated_messages_verify_and_a_flipped_octet_fails(
    message: bytes, ed: bool, pick: int
) -> None:
    """Whatever the header text and body, dkimpy verifies the signature, its bh= is dkimpy's,
    and one octet changed in the body, From or Subject makes it fail; in X-Mailer, which h=
    does not list, it still verifies."""
    made = _ED if ed else _RSA
    signed = made.sign(message)
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert b"\r" not in signed.replace(b"\r\n", b"")
    assert True is verify(signed, made)
    assert _tag(_reference(crlf_lines(message), made), "bh") == _tag(signed, "bh")
    body = signed.index(b"\r\n\r\n") + 4
    for start, end in (_field(signed, b"From"), _field(signed, b"Subject"), (body, len(signed))):
        flipped = _flip(signed, start, end, pick)
        if flipped is not None:
            assert False is verify(flipped, made)
    unsigned = _flip(signed, *_field(signed, b"X-Mailer"), pick)
    if unsigned is not None:
        assert True is verify(unsigned, made)


def test_lf_only_mail_is_signed_as_it_goes_on_the_wire() -> None:
    """A message in LF lines is signed, and returned, in the CRLF lines DATA will carry."""
    signed = _ED.sign(b"From: a@shop.example\nSubject: LF\n\nline one\nline two\n")
    assert signed.endswith(b"From: a@shop.example\r\nSubject: LF\r\n\r\nline one\r\nline two\r\n")
    assert True is verify(signed, _ED)


@pytest.mark.parametrize("bits", [2048, 4096])
def test_the_header_folds_under_the_line_limits(bits: int) -> None:
    """Every line of DKIM-Signature is 78 octets at most, a long h= and the b= of an RSA-4096
    key too; a 188-octet domain takes a line of its own, under 998."""
    key = dkim_key(bits)
    names = [f"X-Field-{i}" for i in range(30)]
    fields = b"".join(b"%s: %d\r\n" % (n.encode(), i) for i, n in enumerate(names))
    for domain, limit in (("shop.example", 78), (".".join(["d" * 62] * 3), 998)):
        made = _signer(key, domain=domain, headers=["From", *names])
        signed = made.sign(b"From: a@%s\r\n%s\r\nBody.\r\n" % (domain.encode(), fields))
        assert 31 == len(_tag(signed, "h").split(":"))
        header = signed[: re.search(rb"\r\n(?![ \t])", signed).start()]  # type: ignore[union-attr]
        widths = [len(line) for line in header.split(b"\r\n")]
        assert max(widths) <= limit, widths
        assert True is verify(signed, made)


def test_an_ed25519_signer_pickles_and_signs_where_it_lands() -> None:
    """The key crosses to a worker as PEM and is loaded there once; it signs the same."""
    again = pickle.loads(pickle.dumps(_ED))  # noqa: S301 (our own bytes)
    assert _ED == again
    assert "PRIVATE" not in repr(again)
    assert True is verify(again.sign(b"From: a@shop.example\r\n\r\nHi.\r\n"), _ED)


def test_a_message_without_from_is_not_signed() -> None:
    """RFC 6376 5.4: From must be signed; a message without it is a bug, not a mail."""
    with pytest.raises(InternalError):
        _RSA.sign(b"Subject: no From\r\n\r\nBody.\r\n")


def test_relaxed_body_by_rfc_6376s_rules() -> None:
    """3.4.4: WSP runs made one SP, WSP at line ends and empty lines at the end removed; an
    empty body stays empty, and RFC 6376's example body hashes to RFC 8463's bh=."""
    assert b" a b c\r\n\r\nd\r\n" == relaxed_body(b" a \t b\tc \r\n\t\r\nd\r\n \r\n\r\n")
    assert b"" == relaxed_body(b"") == relaxed_body(b"\r\n \r\n\t\r\n")
    example = RFC8463_MESSAGE.split(b"\r\n\r\n", 1)[1]
    digest = base64.b64encode(hashlib.sha256(relaxed_body(example)).digest())
    assert b"2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=" == digest
