"""Herald's configuration: one `Settings` object, read from `HERALD_*` variables and secret
files, passed down. Its groups are in `groups.py`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources import NestedSecretsSettingsSource

from service.errors import ConfigError
from service.settings.dkim import DkimSettings
from service.settings.feedback import FeedbackSettings
from service.settings.groups import (
    UNSUBSCRIBE_FIELDS,
    BrandSettings,
    HttpSettings,
    IdempotencySettings,
    KafkaSettings,
    LinkSettings,
    LogSettings,
    MailSettings,
    ProcessingSettings,
    RegistrySettings,
    RetrySettings,
    SmtpSettings,
    _Refused,
)
from service.settings.pace import PaceSettings
from service.settings.policy import PolicySettings, PublicSettings

__all__ = [
    "UNSUBSCRIBE_FIELDS",
    "BrandSettings",
    "DkimSettings",
    "FeedbackSettings",
    "HttpSettings",
    "IdempotencySettings",
    "KafkaSettings",
    "LinkSettings",
    "LogSettings",
    "MailSettings",
    "PaceSettings",
    "PolicySettings",
    "ProcessingSettings",
    "PublicSettings",
    "RegistrySettings",
    "RetrySettings",
    "Settings",
    "SmtpSettings",
    "config_warnings",
    "load_settings",
]

ENV_PREFIX = "HERALD_"
SECRETS_DIR_VARIABLE = "HERALD_SECRETS_DIR"
"""Directory of secret files, one per setting, each named like its variable
(`HERALD_SMTP__PASSWORD`): how Kubernetes and Compose hand secrets over, without putting them
in the environment."""


class Settings(BaseSettings):
    """Everything Herald reads at start-up; nested groups use `__`, e.g. HERALD_SMTP__HOST."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    routing_file: Path = Path("deploy/routing.yaml")
    schemas_dir: Path = Path("schemas")
    templates_dir: Path = Path("templates")
    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    smtp: SmtpSettings = SmtpSettings()
    mail: MailSettings = MailSettings()
    brand: BrandSettings = BrandSettings()
    links: LinkSettings = LinkSettings()
    http: HttpSettings = HttpSettings()
    processing: ProcessingSettings = ProcessingSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    retry: RetrySettings = RetrySettings()
    log: LogSettings = LogSettings()
    policy: PolicySettings = PolicySettings()
    pace: PaceSettings = PaceSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    public: PublicSettings = PublicSettings()
    dkim: DkimSettings = DkimSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then files of the secrets directory, which (unlike
        the default source) reach into the groups: `HERALD_SMTP__PASSWORD` sets smtp.password."""
        return init_settings, env_settings, NestedSecretsSettingsSource(file_secret_settings)


_TOOLING_VARIABLES = {"HERALD_CACHE_DIR"}
"""HERALD_* variables read by the project's scripts, not by the service (deploy/kafka/broker.sh)."""


def _setting_variables() -> set[str]:
    """The variable of every setting, upper-case: `HERALD_SMTP`, `HERALD_SMTP__HOST`, …"""
    known = set()
    for name, field in Settings.model_fields.items():
        var = ENV_PREFIX + name.upper()
        known.add(var)
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            known.update(f"{var}__{sub.upper()}" for sub in group.model_fields)
    return known


def _unknown_variables() -> list[str]:
    """HERALD_* variables that name no setting: a typo would otherwise be silently ignored."""
    known = _setting_variables() | _TOOLING_VARIABLES | {SECRETS_DIR_VARIABLE}
    return sorted(
        v for v in os.environ if v.upper().startswith(ENV_PREFIX) and v.upper() not in known
    )


def _secret_files(directory: Path) -> dict[str, Path]:
    """The secrets directory's files by upper-case name; hidden entries (Kubernetes' `..data`)
    are the volume's bookkeeping, not settings."""
    return {
        p.name.upper(): p
        for p in sorted(directory.iterdir())
        if not p.name.startswith(".") and p.is_file()
    }


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment and the secrets directory, turning every problem
    into a ConfigError that names the variable or the file."""
    if unknown := _unknown_variables():
        raise ConfigError(
            "environment",
            unknown[0],
            "no such setting",
            "correct the name (README 'Configuration' lists every setting) or unset it",
        )
    secrets_dir = os.environ.get(SECRETS_DIR_VARIABLE)
    files = _checked_secret_files(secrets_dir) if secrets_dir else {}
    try:
        return Settings(_secrets_dir=secrets_dir or None, **overrides)  # type: ignore[arg-type]
    except SettingsError as exc:  # a JSON value that does not parse, a directory too large
        field = re.search(r'field "(\w+)"', str(exc))
        var = ENV_PREFIX + field.group(1).upper() if field else SECRETS_DIR_VARIABLE
        source = next((p for n, p in files.items() if n.startswith(var)), None)
        from_file = "Secrets" in str(exc) or not field
        raise ConfigError(
            str(source or secrets_dir) if from_file else "environment",
            var,
            "not valid JSON" if field else str(exc),
            "give dictionaries and lists as JSON; see README 'Configuration'",
        ) from exc
    except ValidationError as exc:
        raise _invalid(exc, files) from exc


def _checked_secret_files(secrets_dir: str) -> dict[str, Path]:
    """The secret files of the directory, by variable; ConfigError for a stray one."""
    directory = Path(secrets_dir)
    if not directory.is_dir():
        raise ConfigError(
            "environment",
            SECRETS_DIR_VARIABLE,
            f"{secrets_dir} is not a directory",
            "mount the secrets there or unset the variable",
        )
    files = _secret_files(directory)
    if strays := sorted(set(files) - _setting_variables()):
        raise ConfigError(
            str(files[strays[0]]),
            strays[0],
            "no such setting",
            "name each file after the variable it sets (README 'Configuration')",
        )
    return files


def _invalid(exc: ValidationError, files: dict[str, Path]) -> ConfigError:
    """The first validation error as a ConfigError naming its variable (or file) and fix."""
    err = exc.errors()[0]
    path = [str(p) for p in err["loc"]]
    var = ENV_PREFIX + "__".join(p.upper() for p in path)
    # The environment wins over a file, so a file is to blame only when no variable is set.
    source = _file_of(var, files) if var not in _environment() else None
    secret = source or any(s in var for s in ("PASSWORD", "SECRET", "AUTH", "KEY"))
    shown = "" if secret or not path else f" (got {err.get('input')!r})"
    refused = err.get("ctx", {}).get("error")
    problem = err["msg"]
    if isinstance(refused, _Refused):
        problem, fix = str(refused), refused.fix
    elif source:
        fix = f"write a valid value into {source} or remove the file to use the default"
    else:
        fix = f"set {var} to a valid value or unset it to use the default"
    return ConfigError(
        str(source) if source else "environment",
        var,
        f"{problem}{shown}",
        f"{fix}; see README 'Configuration'",
    )


def _environment() -> set[str]:
    """The names of the environment's variables, upper-case."""
    return {v.upper() for v in os.environ}


def _file_of(var: str, files: dict[str, Path]) -> Path | None:
    """The secret file that set `var`, or the whole group it belongs to (`HERALD_SMTP`)."""
    group = var.split("__")[0]
    return files.get(var) or files.get(group)


def config_warnings(settings: Settings) -> list[str]:
    """Settings that work but weaken Herald, each with its variable and its fix; `herald run`
    logs them at start-up and `herald check-config` prints them."""
    warnings = []
    if not settings.smtp.validate_certs:
        warnings.append(
            "HERALD_SMTP__VALIDATE_CERTS=false: the relay's certificate and host name are not "
            "verified, so anyone on the path can read and change mail and credentials. Fix: "
            "set HERALD_SMTP__CA_FILE to the relay's CA bundle and unset VALIDATE_CERTS"
        )
    return warnings
