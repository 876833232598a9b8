"""DKIM: composed mail signed and verified against the key's TXT record, tampering caught, what
h= covers, and a key or setting that cannot work refused at start-up, naming its variable."""

from __future__ import annotations

import pickle
import re
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.delivery.dkim import Signer, signer
from service.delivery.mime import Email, Letter, compose, seven_bit
from service.delivery.pool import Mailer
from service.errors import ConfigError
from service.metrics import Metrics
from service.settings import (
    DkimSettings,
    MailSettings,
    SmtpSettings,
    load_settings,
)
from service.testing import RecordingHandler, dkim_dns, dkim_key, free_port

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MAIL = MailSettings(from_address="no-reply@shop.example", from_name="Shop")
UNSUBSCRIBE = "https://shop.example/unsubscribe?user=u1&list=weekly&token=abc"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(dkim_key())
    return path


@pytest.fixture(scope="module")
def sign(key_file: Path) -> Signer:
    made = signer(DkimSettings(domain="shop.example", selector="s1", key_file=key_file), MAIL)
    assert made is not None
    return made


def _letter(**fields: object) -> Letter:
    base: dict[str, object] = {
        "key": "0123456789abcdef0123456789abcdef",
        "to_address": "ada@example.org",
        "to_name": "Ada Lovelace",
        "subject": "Your weekly summary",
        "html": "<p>Three orders this week.</p>\n",
        "text": "Three orders this week.\n",
        "language": "en",
        "unsubscribe_url": UNSUBSCRIBE,
    }
    return Letter(**{**base, **fields})  # type: ignore[arg-type]


def _signed(sign: Signer, **fields: object) -> bytes:
    return sign.sign(compose(_letter(**fields), MAIL, NOW).data)


def _tags(data: bytes) -> dict[str, str]:
    """The tags of the first DKIM-Signature, unfolded."""
    header = re.match(rb"DKIM-Signature:(.*?)\r\n(?![ \t])", data, re.DOTALL)
    assert header is not None, "no DKIM-Signature at the top"
    value = re.sub(r"\s+", "", header.group(1).decode())
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def test_signed_mail_verifies_against_the_published_key(sign: Signer) -> None:
    """A composed mail, signed, verifies with the TXT record at s1._domainkey.shop.example."""
    data = _signed(sign)
    assert data.startswith(b"DKIM-Signature: ")
    assert True is dkim.verify(data, dnsfunc=dkim_dns(sign))
    tags = _tags(data)
    assert ("shop.example", "s1", "relaxed/relaxed", "rsa-sha256") == (
        tags["d"],
        tags["s"],
        tags["c"],
        tags["a"],
    )


def test_a_changed_body_fails(sign: Signer) -> None:
    """One word of the text part changed in transit: the body hash no longer holds."""
    data = _signed(sign).replace(b"Three orders", b"Four orders")
    assert False is dkim.verify(data, dnsfunc=dkim_dns(sign))


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"Subject: Your weekly summary", b"Subject: Your weekly invoice"),
        (b"List-Unsubscribe: <https://shop.example/", b"List-Unsubscribe: <https://evil.example/"),
        (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: No"),
    ],
)
def test_a_changed_signed_header_fails(sign: Signer, before: bytes, after: bytes) -> None:
    """A signed header changed in transit, the one-click pair included: the signature fails."""
    data = _signed(sign)
    assert before in data
    assert False is dkim.verify(data.replace(before, after), dnsfunc=dkim_dns(sign))


def test_h_covers_the_one_click_pair_when_the_mail_has_it(sign: Signer) -> None:
    """RFC 8058 3.1: List-Unsubscribe and List-Unsubscribe-Post are signed; without them
    (a password reset), h= lists only what the mail has."""
    optional = _tags(_signed(sign))["h"].split(":")
    assert [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] == optional
    required = _tags(_signed(sign, unsubscribe_url=None))["h"].split(":")
    assert "list-unsubscribe" not in required
    assert "from" in required


def test_reply_to_is_signed_when_set(key_file: Path) -> None:
    """Reply-To, a header a reader acts on, is covered when the settings add it."""
    mail = MailSettings(from_address="no-reply@shop.example", reply_to="help@shop.example")
    made = signer(DkimSettings(domain="shop.example", selector="s1", key_file=key_file), mail)
    assert made is not None
    data = made.sign(compose(_letter(), mail, NOW).data)
    assert "reply-to" in _tags(data)["h"].split(":")
    assert True is dkim.verify(data, dnsfunc=dkim_dns(made))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    subject=st.text(min_size=1, max_size=300),
    name=st.text(max_size=120),
    words=st.lists(
        st.sampled_from(["commande", "reçue", "Größe", "注文", "🎉", "x" * 90]), max_size=30
    ),
)
def test_hostile_header_text_still_verifies(
    sign: Signer, subject: str, name: str, words: list[str]
) -> None:
    """Non-ASCII text (RFC 2047 encoded-words), long folded headers, controls removed by
    `cosmetic`: whatever compose writes, the signature over it verifies."""
    data = _signed(sign, subject=f"{subject} {' '.join(words)}", to_name=name)
    assert True is dkim.verify(data, dnsfunc=dkim_dns(sign))


def test_seven_bit_reencoding_is_signed_again(sign: Signer) -> None:
    """`seven_bit` rewrites an 8bit body for a relay without 8BITMIME, voiding the body hash;
    `resign` replaces the signature with one over the bytes that go."""
    email = sign.sign_email(compose(_letter(text="Reçu.\n", html="<p>Reçu.</p>\n"), MAIL, NOW))
    assert email.eight_bit
    reencoded = seven_bit(email)
    assert False is dkim.verify(reencoded.data, dnsfunc=dkim_dns(sign))
    again = sign.resign(reencoded)
    assert 1 == again.data.count(b"DKIM-Signature:")
    assert True is dkim.verify(again.data, dnsfunc=dkim_dns(sign))


async def test_a_relay_without_8bitmime_receives_a_valid_signature(sign: Signer) -> None:
    """Through the pool to a real 7-bit server (aiosmtpd with decode_data): the message that
    arrives is the re-encoded one, and its signature verifies."""
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=True)
    controller.start()
    try:
        smtp = SmtpSettings(host="127.0.0.1", port=port, tls="none", timeout_s=5, max_attempts=1)
        async with Mailer(smtp, Metrics(CollectorRegistry()), signer=sign) as mailer:
            letter = _letter(text="Reçu.\n", html="<p>Reçu.</p>\n")
            email: Email = sign.sign_email(compose(letter, MAIL, NOW))
            await mailer.send(email)
    finally:
        controller.stop()
    (received,) = handler.received
    assert received.data.isascii()
    assert True is dkim.verify(received.data, dnsfunc=dkim_dns(sign))


def test_signer_pickles_for_the_render_workers(sign: Signer) -> None:
    """The signer crosses to a worker process in its recipe, and does not show its key."""
    assert sign == pickle.loads(pickle.dumps(sign))  # noqa: S301 (our own bytes)
    assert "PRIVATE" not in repr(sign)


def test_unset_domain_means_no_signing() -> None:
    """No `dkim.domain`, no signer: mail goes as composed."""
    assert None is signer(DkimSettings(), MAIL)


def test_parent_domain_aligns(key_file: Path) -> None:
    """d= may be a parent of the From domain (relaxed DMARC alignment)."""
    mail = MailSettings(from_address="no-reply@mail.shop.example")
    made = signer(DkimSettings(domain="shop.example", selector="s1", key_file=key_file), mail)
    assert made is not None
    assert b"shop.example" == made.domain


@pytest.mark.parametrize("domain", ["other.example", "op.example", "mail.shop.example"])
def test_unaligned_domain_is_refused(key_file: Path, domain: str) -> None:
    """A d= that is neither the From domain nor its parent would fail DMARC: refused."""
    with pytest.raises(ConfigError) as caught:
        signer(DkimSettings(domain=domain, selector="s1", key_file=key_file), MAIL)
    assert "HERALD_DKIM__DOMAIN" == caught.value.key
    assert "shop.example" in caught.value.fix


def test_missing_selector_is_refused(key_file: Path) -> None:
    """A domain without a selector names no TXT record: refused, naming the selector."""
    with pytest.raises(ConfigError) as caught:
        signer(DkimSettings(domain="shop.example", key_file=key_file), MAIL)
    assert "HERALD_DKIM__SELECTOR" == caught.value.key


def test_no_key_is_refused() -> None:
    """Neither a key file nor a key secret: refused, naming where a key goes."""
    with pytest.raises(ConfigError) as caught:
        signer(DkimSettings(domain="shop.example", selector="s1"), MAIL)
    assert "HERALD_DKIM__KEY_FILE" == caught.value.key


@pytest.mark.parametrize(
    ("content", "problem", "fix"),
    [
        (None, "cannot be read", "mount the private key"),
        (
            b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            "PEM",
            "openssl genpkey",
        ),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "neither an RSA nor an Ed25519 key",
            "openssl genpkey",
        ),
    ],
)
def test_bad_key_file_is_refused_naming_file_and_variable(
    tmp_path: Path, content: bytes | None, problem: str, fix: str
) -> None:
    """A missing file, a file that is no key, a key DKIM has no algorithm for: a ConfigError
    naming the file, the variable and a fix, before anything is consumed."""
    path = tmp_path / "dkim.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        signer(DkimSettings(domain="shop.example", selector="s1", key_file=path), MAIL)
    assert (str(path), "HERALD_DKIM__KEY_FILE") == (caught.value.file, caught.value.key)
    assert problem in caught.value.problem
    assert fix in caught.value.fix


def test_key_from_the_secrets_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key_file: Path
) -> None:
    """The key's PEM in the secret file HERALD_DKIM__PRIVATE_KEY, as Kubernetes mounts it."""
    (tmp_path / "HERALD_DKIM__PRIVATE_KEY").write_bytes(key_file.read_bytes())
    monkeypatch.setenv("HERALD_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("HERALD_MAIL__FROM_ADDRESS", "no-reply@shop.example")
    monkeypatch.setenv("HERALD_DKIM__DOMAIN", "shop.example")
    monkeypatch.setenv("HERALD_DKIM__SELECTOR", "s1")
    s = load_settings()
    made = signer(s.dkim, s.mail)
    assert made is not None
    assert True is dkim.verify(
        made.sign(compose(_letter(), MAIL, NOW).data), dnsfunc=dkim_dns(made)
    )


def test_a_garbled_secret_names_the_secret_not_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key's text never appears in the error."""
    monkeypatch.setenv("HERALD_DKIM__PRIVATE_KEY", "-----BEGIN hunter2")
    s = load_settings(dkim={"domain": "example.com", "selector": "s1"})
    with pytest.raises(ConfigError) as caught:
        signer(s.dkim, s.mail)
    assert "HERALD_DKIM__PRIVATE_KEY" == caught.value.key
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ('["To", "Subject"]', "From"),
        ('["From", "DKIM-Signature"]', "DKIM-Signature"),
        ('["From", "Sub ject"]', "not a header field name"),
    ],
)
def test_a_header_list_that_cannot_sign_is_refused(
    monkeypatch: pytest.MonkeyPatch, headers: str, problem: str
) -> None:
    """RFC 6376 5.4: From must be signed; a signature cannot cover itself."""
    monkeypatch.setenv("HERALD_DKIM__HEADERS", headers)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "HERALD_DKIM__HEADERS" == caught.value.key
    assert problem in caught.value.problem


def test_selector_must_be_a_dns_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """A selector is written into the s= tag: anything but DNS labels is refused."""
    monkeypatch.setenv("HERALD_DKIM__SELECTOR", "s1; p=evil")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "HERALD_DKIM__SELECTOR" == caught.value.key
