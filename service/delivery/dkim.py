"""DKIM signing (RFC 6376): a DKIM-Signature header prepended to a composed message's bytes.

The key is read, checked and re-encoded once, at start-up (`signer`), and a probe message is
signed and verified against the key's own public half, so a broken key stops Herald with a
ConfigError instead of failing mail. No DNS is asked, at start-up or when signing.

Where it runs: beside `compose`, in the render workers when `processing.render_workers` > 0,
else on the event loop. dkimpy's RSA is pure Python: RSA-2048 costs ~10 ms per mail (`make
bench`, stage `dkim`), almost all in two big-integer `pow` calls that hold the GIL, so a thread
would stall the loop as long as signing on it does; only another process frees it. A relay
without 8BITMIME gets the body re-encoded (`seven_bit`), which voids the body hash; `resign`
signs that message again, on the loop, since it is rare.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from dataclasses import dataclass, field

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from service.delivery.mime import Email
from service.errors import ConfigError
from service.settings import DkimSettings, MailSettings

MIN_RSA_BITS = 1024
"""RFC 8301 3.2: verifiers refuse smaller keys."""
_CANONICALIZE = (b"relaxed", b"relaxed")
"""Relaxed/relaxed: a relay re-folding a header or trimming trailing white space does not
void the signature (RFC 6376 3.4.2, 3.4.4)."""
_SIGNATURE = re.compile(rb"DKIM-Signature:[^\r]*\r\n(?:[ \t][^\r]*\r\n)*")
"""A DKIM-Signature field with its folded lines, as `Signer.sign` writes it, at the start."""
_PROBE = (
    b"From: probe@{domain}\r\nTo: probe@{domain}\r\nSubject: DKIM probe\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nProbe.\r\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signer:
    """Signs messages under one key; picklable, so the render workers sign too."""

    domain: bytes
    """d=: the signing domain."""
    selector: bytes
    """s=: where the public key is found, `<selector>._domainkey.<domain>`."""
    key: bytes = field(repr=False)
    """The RSA private key as PKCS#1 PEM, the one form dkimpy reads."""
    headers: tuple[bytes, ...]
    """Header fields to sign, lower-case, in order; those a mail lacks are left out of h=."""
    bits: int
    """The key's size."""

    def sign(self, data: bytes) -> bytes:
        """`data` with a DKIM-Signature field before its first header."""
        head = data[: data.find(b"\r\n\r\n")]
        present = {
            line.split(b":", 1)[0].strip().lower()
            for line in head.split(b"\r\n")
            if line[:1] not in (b" ", b"\t")
        }
        include = [h for h in self.headers if h in present]
        signature: bytes = dkim.sign(
            data,
            self.selector,
            self.domain,
            self.key,
            canonicalize=_CANONICALIZE,
            include_headers=include,
        )
        return signature + data

    def sign_email(self, email: Email) -> Email:
        """The email with its bytes signed."""
        return dataclasses.replace(email, data=self.sign(email.data))

    def resign(self, email: Email) -> Email:
        """The email signed again after its bytes changed (`seven_bit`): the old signature
        removed, a new one over what now goes on the wire."""
        match = _SIGNATURE.match(email.data)
        data = email.data[match.end() :] if match else email.data
        return dataclasses.replace(email, data=self.sign(data))


def public_record(key: bytes) -> bytes:
    """The TXT record that publishes `key`'s public half: `v=DKIM1; k=rsa; p=…` (RFC 6376 3.6.1)."""
    private = serialization.load_pem_private_key(key, password=None)
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def signer(settings: DkimSettings, mail: MailSettings) -> Signer | None:
    """The signer the settings describe, checked; None when `domain` is unset."""
    if settings.domain is None:
        return None
    from_domain = mail.from_address.rsplit("@", 1)[-1].lower().rstrip(".")
    domain = settings.domain.rstrip(".")
    if from_domain != domain and not from_domain.endswith("." + domain):
        raise ConfigError(
            "environment",
            "HERALD_DKIM__DOMAIN",
            f"{domain} is neither the From domain ({from_domain}) nor a parent of it, so the "
            "signature would not align for DMARC (RFC 7489 3.1.1)",
            f"set HERALD_DKIM__DOMAIN to {from_domain} or a parent domain of it, or change "
            "HERALD_MAIL__FROM_ADDRESS",
        )
    if settings.selector is None:
        raise ConfigError(
            "environment",
            "HERALD_DKIM__SELECTOR",
            "is required with HERALD_DKIM__DOMAIN",
            "set it to the selector whose TXT record publishes the key, e.g. herald2026 for "
            f"herald2026._domainkey.{domain}",
        )
    pem, source, var = _key_text(settings)
    key, bits = _rsa_key(pem, source, var)
    made = Signer(
        domain=domain.encode(),
        selector=settings.selector.encode(),
        key=key,
        headers=tuple(dict.fromkeys(h.lower().encode() for h in settings.headers)),
        bits=bits,
    )
    _probe(made, source, var)
    return made


def _key_text(settings: DkimSettings) -> tuple[bytes, str, str]:
    """The key's PEM bytes, where they came from, and the variable that names it."""
    if (settings.key_file is None) == (settings.private_key is None):
        raise ConfigError(
            "environment",
            "HERALD_DKIM__KEY_FILE",
            "with HERALD_DKIM__DOMAIN, exactly one of HERALD_DKIM__KEY_FILE and "
            "HERALD_DKIM__PRIVATE_KEY must be set",
            "point HERALD_DKIM__KEY_FILE at the PEM file of the private key, or put the PEM "
            "into the secret file HERALD_DKIM__PRIVATE_KEY (docs/operations.md 'DKIM')",
        )
    if settings.private_key is not None:
        return (
            settings.private_key.get_secret_value().encode(),
            "secret",
            "HERALD_DKIM__PRIVATE_KEY",
        )
    path = settings.key_file
    assert path is not None
    try:
        return path.read_bytes(), str(path), "HERALD_DKIM__KEY_FILE"
    except OSError as exc:
        raise ConfigError(
            str(path),
            "HERALD_DKIM__KEY_FILE",
            f"cannot be read: {exc.strerror or type(exc).__name__}",
            "mount the private key's PEM file there, readable by Herald's user",
        ) from exc


def _rsa_key(pem: bytes, source: str, var: str) -> tuple[bytes, int]:
    """The key as PKCS#1 PEM, and its size; ConfigError for anything else."""
    fix = (
        "give an unencrypted RSA private key in PEM, 2048 bits: "
        "`openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out dkim.pem`"
    )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # The library's text may quote the input; only its class is shown.
        raise ConfigError(
            source, var, f"is not a readable PEM private key ({type(exc).__name__})", fix
        ) from exc
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(
            source,
            var,
            "is an Ed25519 key (RFC 8463), which dkimpy signs only through PyNaCl, not installed",
            fix,
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(source, var, f"is a {type(key).__name__}, not an RSA key", fix)
    if key.key_size < MIN_RSA_BITS:
        raise ConfigError(
            source, var, f"has {key.key_size} bits, under {MIN_RSA_BITS} (RFC 8301 3.2)", fix
        )
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return pkcs1, key.key_size


def _probe(made: Signer, source: str, var: str) -> None:
    """Sign a message and verify it against the key's own public half: no DNS asked."""
    record = public_record(made.key)
    probe = _PROBE.replace(b"{domain}", made.domain)
    try:
        signed = made.sign(probe)
        valid = dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)
    except dkim.DKIMException as exc:
        raise ConfigError(
            source, var, f"a probe message could not be signed: {exc}", "give another key"
        ) from exc
    if not valid:
        raise ConfigError(
            source, var, "a probe message signed with it did not verify", "give another key"
        )
