"""Settings: environment variables with nested groups, and errors that name the variable."""

from __future__ import annotations

import pytest

from service.errors import ConfigError
from service.settings import load_settings


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
