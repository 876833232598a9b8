"""Settings: environment variables with nested groups, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConfigError
from service.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read settings from what each sets; the suite's signing key is not theirs."""
    monkeypatch.delenv("HERALD_LINKS__UNSUBSCRIBE_SECRET", raising=False)


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_SMTP__HOST", "smtp.example.net")
    monkeypatch.setenv("HERALD_SMTP__PORT", "465")
    monkeypatch.setenv("HERALD_SMTP__TLS", "implicit")
    monkeypatch.setenv("HERALD_SMTP__PASSWORD", "hunter2")
    monkeypatch.setenv("HERALD_KAFKA__CONFIG", '{"security.protocol": "SASL_SSL"}')
    s = load_settings()
    assert ("smtp.example.net", 465, "implicit") == (s.smtp.host, s.smtp.port, s.smtp.tls)
    assert "hunter2" not in repr(s)
    assert "SASL_SSL" == s.kafka.librdkafka()["security.protocol"]
    assert s.smtp.validate_certs  # TLS is verified unless someone turns it off


def test_bad_value_names_the_variable_and_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_SMTP__PORT", "seventy")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_SMTP__PORT" == info.value.key
    assert "'seventy'" in str(info.value)
    monkeypatch.delenv("HERALD_SMTP__PORT")
    monkeypatch.setenv("HERALD_REGISTRY__BASIC_AUTH_USER_INFO", "{not-a-string-but-json}")
    monkeypatch.setenv("HERALD_SMTP__TLS", "sometimes")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_SMTP__TLS" == info.value.key


def test_unknown_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in a variable name stops start-up instead of being silently ignored."""
    monkeypatch.setenv("HERALD_SMTP__HOSTNAME", "smtp.example.net")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_SMTP__HOSTNAME" == info.value.key


@pytest.mark.parametrize(
    "value", ["not an address", "a@b.example\r\nBcc: x@y", "Name <a@b.example>"]
)
def test_from_address_must_be_a_plain_address(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HERALD_MAIL__FROM_ADDRESS", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_MAIL__FROM_ADDRESS" == info.value.key


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    """The README's configuration tables cannot drift from `Settings`: each variable has a
    row, and the row shows the field's default (secrets and collections excepted)."""
    from pydantic import BaseModel

    from service.settings import ENV_PREFIX, Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in readme.splitlines()
        if line.startswith(f"| `{ENV_PREFIX}")
    }
    for name, field in Settings.model_fields.items():
        group = field.annotation
        subs = (
            group.model_fields if isinstance(group, type) and issubclass(group, BaseModel) else {}
        )
        for sub, sub_field in subs.items() or [(None, field)]:
            var = ENV_PREFIX + name.upper() + (f"__{sub.upper()}" if sub else "")
            assert var in rows, f"README has no row for {var}"
            default = sub_field.default
            if isinstance(default, bool | int | float | str) and not isinstance(default, bool):
                shown = f"`{default}`" if default != "" else "(empty)"
                assert f"| {shown} |" in rows[var], (
                    f"README row of {var} does not show its default {default!r}"
                )


def test_secret_read_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file of HERALD_SECRETS_DIR named like a variable sets that setting, inside its group,
    beside variables of the same group; a variable wins over a file."""
    (tmp_path / "HERALD_SMTP__PASSWORD").write_text("hunter2\n")
    (tmp_path / "herald_links__unsubscribe_secret").write_text("k3y")
    (tmp_path / "HERALD_KAFKA__SECRET_CONFIG").write_text('{"sasl.password": "s3cret"}')
    (tmp_path / "HERALD_SMTP__USERNAME").write_text("from-file")
    (tmp_path / "..data").mkdir()  # a Kubernetes secret volume's bookkeeping
    monkeypatch.setenv("HERALD_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("HERALD_SMTP__HOST", "smtp.example.net")
    monkeypatch.setenv("HERALD_SMTP__USERNAME", "from-env")
    s = load_settings()
    assert s.smtp.password is not None
    assert "hunter2" == s.smtp.password.get_secret_value()
    assert ("smtp.example.net", "from-env") == (s.smtp.host, s.smtp.username)
    assert s.links.unsubscribe_secret is not None
    assert "k3y" == s.links.unsubscribe_secret.get_secret_value()
    assert "s3cret" == s.kafka.librdkafka()["sasl.password"]


def test_bad_secret_file_is_named_and_its_value_hidden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A secret file with an invalid value is named in the error, and its content is not."""
    secret = tmp_path / "HERALD_IDEMPOTENCY__RETENTION_H"
    secret.write_text("a week")
    monkeypatch.setenv("HERALD_SECRETS_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert (str(secret), "HERALD_IDEMPOTENCY__RETENTION_H") == (info.value.file, info.value.key)
    assert "a week" not in str(info.value)
    secret.unlink()
    (tmp_path / "HERALD_KAFKA__SECRET_CONFIG").write_text("{sasl.password: s3cret")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(tmp_path / "HERALD_KAFKA__SECRET_CONFIG") == info.value.file
    assert "s3cret" not in str(info.value)


def test_secret_file_naming_no_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A misnamed secret file stops start-up, as a misnamed variable does."""
    (tmp_path / "HERALD_SMTP__PASSWD").write_text("hunter2")
    monkeypatch.setenv("HERALD_SECRETS_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert (str(tmp_path / "HERALD_SMTP__PASSWD"), "HERALD_SMTP__PASSWD") == (
        info.value.file,
        info.value.key,
    )
    monkeypatch.setenv("HERALD_SECRETS_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_SECRETS_DIR" == info.value.key


@pytest.mark.parametrize(
    "name",
    [
        "Herald\r\nBcc: eve@example.com",
        "Her\nald",
        "Tab\there",
        "Esc\x1bape",
        "D\x7fL",
        "N\x85EL",
        "Line\u2028separator",
        "Para\u2029graph",
    ],
)
def test_from_name_refuses_control_characters(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """C0 and C1 controls, DEL and the Unicode separators could start a header of their own."""
    monkeypatch.setenv("HERALD_MAIL__FROM_NAME", name)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_MAIL__FROM_NAME" == info.value.key
    assert f"U+{ord(next(c for c in name if not c.isprintable())):04X}" in info.value.problem
    assert info.value.fix.startswith("set HERALD_MAIL__FROM_NAME to a name on one line")


@pytest.mark.parametrize("name", ["Zoë & Co. — Ünïcode «Støre»", "O'Brien, Inc.", "日本の店"])
def test_from_name_accepts_any_printable_text(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Punctuation and letters of any script are a display name, not an injection."""
    monkeypatch.setenv("HERALD_MAIL__FROM_NAME", name)
    assert name == load_settings().mail.from_name


@pytest.mark.parametrize(
    ("domain", "problem"),
    [
        ("mail.example.com\r\nBcc: eve@example.com", "is not a domain name"),
        ("example.com>", "is not a domain name"),
        ("mail example.com", "is not a domain name"),
        ("-mail.example.com", "is not a domain name"),
        ("mail-.example.com", "is not a domain name"),
        ("mail..example.com", "is not a domain name"),
        ("mail.example.com.", "is not a domain name"),
        ("under_score.example.com", "is not a domain name"),
        ("a" * 64 + ".example.com", "is not a domain name"),
        (".".join(["a" * 60] * 5), "is not a domain name"),
        ("exämple.com", "is not ASCII"),
    ],
)
def test_message_id_domain_must_be_a_domain_name(
    monkeypatch: pytest.MonkeyPatch, domain: str, problem: str
) -> None:
    """Only letters, digits and hyphens in dot-separated labels reach the Message-ID."""
    monkeypatch.setenv("HERALD_MAIL__MESSAGE_ID_DOMAIN", domain)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_MAIL__MESSAGE_ID_DOMAIN" == info.value.key
    assert info.value.problem.startswith(problem)
    assert "HERALD_MAIL__MESSAGE_ID_DOMAIN" in info.value.fix


@pytest.mark.parametrize(
    "domain", ["mail.example.com", "MAIL-1.Example.COM", "xn--exmple-cua.com", "localhost"]
)
def test_message_id_domain_accepts_domain_names(
    monkeypatch: pytest.MonkeyPatch, domain: str
) -> None:
    """A host name, in any case, and an IDNA A-label pass as they are."""
    monkeypatch.setenv("HERALD_MAIL__MESSAGE_ID_DOMAIN", domain)
    assert domain == load_settings().mail.message_id_domain


@pytest.mark.parametrize(
    ("variable", "value"),
    [("HERALD_SMTP__USERNAME", "herald"), ("HERALD_SMTP__PASSWORD", "hunter2")],
)
def test_credentials_are_refused_over_plain_smtp_to_another_host(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """With TLS off, a user or a password is refused unless the relay is on this host; the
    password is not shown."""
    monkeypatch.setenv("HERALD_SMTP__HOST", "smtp.example.net")
    monkeypatch.setenv("HERALD_SMTP__TLS", "none")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert variable == info.value.key
    assert "smtp.example.net in clear" in info.value.problem
    assert info.value.fix.startswith("set HERALD_SMTP__TLS=starttls")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "tls"),
    [
        ("127.0.0.1", "none"),
        ("127.8.9.10", "none"),
        ("::1", "none"),
        ("[::1]", "none"),
        ("localhost", "none"),
        ("LocalHost.", "none"),
        ("smtp.example.net", "starttls"),
        ("smtp.example.net", "implicit"),
    ],
)
def test_credentials_are_accepted_over_tls_or_on_loopback(
    monkeypatch: pytest.MonkeyPatch, host: str, tls: str
) -> None:
    """TLS, or a relay on 127.0.0.0/8, ::1 or `localhost`, may take credentials."""
    monkeypatch.setenv("HERALD_SMTP__HOST", host)
    monkeypatch.setenv("HERALD_SMTP__TLS", tls)
    monkeypatch.setenv("HERALD_SMTP__USERNAME", "herald")
    monkeypatch.setenv("HERALD_SMTP__PASSWORD", "hunter2")
    assert "herald" == load_settings().smtp.username


def test_plain_smtp_to_another_host_without_credentials_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`tls=none` itself stays allowed (a capture server on the network, as Compose's Mailpit)."""
    monkeypatch.setenv("HERALD_SMTP__HOST", "mailpit")
    monkeypatch.setenv("HERALD_SMTP__TLS", "none")
    assert "mailpit" == load_settings().smtp.host


def test_hashed_recipients_need_a_long_enough_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hashed` without a key stops start-up with the variable and how to make a key; a short
    key is refused without being shown; a key of 32 characters is taken."""
    monkeypatch.setenv("HERALD_MAIL__RECIPIENT_IN_OUTCOMES", "hashed")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_MAIL__RECIPIENT_HASH_SECRET" == info.value.key
    assert "required with HERALD_MAIL__RECIPIENT_IN_OUTCOMES=hashed" in info.value.problem
    assert "openssl rand -hex 32" in info.value.fix
    monkeypatch.setenv("HERALD_MAIL__RECIPIENT_HASH_SECRET", "short-key-31-characters-long-xx")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "HERALD_MAIL__RECIPIENT_HASH_SECRET" == info.value.key
    assert "short-key" not in str(info.value)
    monkeypatch.setenv("HERALD_MAIL__RECIPIENT_HASH_SECRET", "k" * 32)
    secret = load_settings().mail.recipient_hash_secret
    assert secret is not None
    assert "k" * 32 == secret.get_secret_value()


def test_a_key_alone_does_not_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is accepted with `masked` too, so it can be deployed before the switch."""
    monkeypatch.setenv("HERALD_MAIL__RECIPIENT_HASH_SECRET", "k" * 32)
    assert "masked" == load_settings().mail.recipient_in_outcomes


def test_unverified_smtp_certificates_give_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """`VALIDATE_CERTS=false` works, with one warning naming the variable and the fix."""
    from service.settings import config_warnings

    assert [] == config_warnings(load_settings())
    monkeypatch.setenv("HERALD_SMTP__VALIDATE_CERTS", "false")
    (warning,) = config_warnings(load_settings())
    assert warning.startswith("HERALD_SMTP__VALIDATE_CERTS=false: ")
    assert "Fix: set HERALD_SMTP__CA_FILE" in warning
