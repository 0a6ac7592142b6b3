"""The configuration file: YAML in, frozen values out, every problem reported at once.

`parse_config` walks the whole document and collects one message per problem, each with the
path of the offending key (`targets[2].module: unknown module "smpt_tls"; known: mx`), then
raises `ConfigError` with all of them, so a user fixes a file in one round. Module options end
up in `smtpmon.smtp.module.Module`; global defaults (timeout, EHLO name) are resolved into each
module and target here, so the scheduler and the probe engine never look anything up.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from smtpmon.config.addresses import (
    host_problem,
    is_bad_pattern,
    is_ip,
    is_ipv6,
    matches_pattern,
    normal_address,
    parse_address,
)
from smtpmon.config.bounds import MAX_CONCURRENCY, MAX_INTERVAL_SECONDS, MAX_TIMEOUT_SECONDS
from smtpmon.config.domains import (
    DnsSettings,
    DomainTarget,
    domain_allowed,
    parse_dns,
    parse_domains,
    parse_probe_allow_domains,
)
from smtpmon.config.maillog import MaillogSettings, parse_maillog
from smtpmon.config.validation import Validator, describe, key_path
from smtpmon.config.yamldoc import (
    FileReadError,
    YamlSyntaxError,
    read_document,
    read_file,
    regular_file_problem,
)
from smtpmon.smtp.module import (
    AUTH_MECHANISMS,
    AUTH_TLS_MODES,
    IP_PROTOCOLS,
    TLS_MODES,
    TLS_VERSIONS,
    Module,
    PasswordUnavailable,
)
from smtpmon.smtp.results import STAGES

EMBEDDED_SOURCE = "<embedded default>"

DEFAULT_CONFIG_TEXT = """\
# smtpmon's embedded default, used when `smtpmon run` gets no --config.file:
# watch the local MTA every 60 seconds (banner, EHLO, STARTTLS when offered, QUIT).
global:
  interval: 60s
  timeout: 10s
modules:
  local_mta:
    tls: opportunistic
    # A local MTA's certificate names the host's public name, not 127.0.0.1, and this
    # connection never leaves the machine; the certificate is still inspected and reported.
    tls_verify: false
targets:
  - address: "127.0.0.1:25"
    module: local_mta
"""

# Stages that receive a reply, so a module may say which codes it expects there.
REPLY_STAGES: tuple[str, ...] = tuple(s for s in STAGES if s not in ("resolve", "connect", "tls"))

_TOP_KEYS = ("global", "probe_allow", "modules", "targets", "domains", "dns",
             "probe_allow_domains", "maillog")
_GLOBAL_KEYS = ("interval", "timeout", "max_concurrency", "ehlo_name")
_MODULE_KEYS = (
    "tls", "tls_verify", "tls_ca_file", "tls_server_name", "tls_min_version", "ehlo_name",
    "helo_fallback", "auth", "mail_from", "rcpt_to", "data", "expect", "timeout", "ip_protocol",
    "connect_timeout", "message_size", "probe_allow",
)  # fmt: skip
_AUTH_KEYS = ("mechanism", "username", "password_file", "password_env")
_TARGET_KEYS = ("address", "module", "interval", "timeout")

_CREDENTIALS_VARIABLE = re.compile(r"\$(?:CREDENTIALS_DIRECTORY\b|\{CREDENTIALS_DIRECTORY\})")
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|KiB|MiB)", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "kib": 1024, "mib": 1024**2}
# A test message is held in memory and sent on every probe: servers' limits are tens of MB.
MAX_MESSAGE_SIZE = 256 * 2**20
_MODULE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Addresses go verbatim into MAIL FROM:<...> / RCPT TO:<...>: nothing that could break the line.
_BAD_ADDRESS_CHARS = re.compile(r"[\s<>\x00-\x1f\x7f]")



@dataclass(frozen=True, slots=True)
class Settings:
    """Global settings, and the defaults for modules and targets that do not set their own."""

    interval_seconds: float = 60.0
    timeout_seconds: float = 10.0
    max_concurrency: int = 32
    ehlo_name: str | None = None
    # Glob patterns of "host:port" that /probe may probe beyond the configured targets.
    probe_allow: tuple[str, ...] = ()
    # Glob patterns of mail domains that /probe?domain= may probe beyond the configured ones.
    probe_allow_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Target:
    """One scheduled probe. Interval and timeout are resolved: never None."""

    name: str  # the address as written, "host:port" or "[v6]:port": the `target` label
    host: str  # without brackets
    port: int
    module: str
    interval_seconds: float
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    modules: Mapping[str, Module]
    targets: tuple[Target, ...]
    source: str  # the file's path, or EMBEDDED_SOURCE
    # "path: reason" for each AUTH password that cannot be read now. Not errors: a secret is
    # read when a probe uses it, so its module's probes fail at AUTH (auth_password_unavailable)
    # while everything else runs; `run` and `check-config` warn about each.
    secret_problems: tuple[str, ...] = ()
    # Modules with AUTH: the host:port patterns /probe may use each against beyond the targets
    # configured with it (its own `probe_allow`; the top-level one never applies to them).
    secret_probe_allow: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    domains: tuple[DomainTarget, ...] = ()
    dns: DnsSettings = DnsSettings()
    maillog: MaillogSettings | None = None  # the `maillog:` section; None: no log is read

    def probe_allowed(self, host: str, port: int) -> bool:
        """May /probe run against host:port? Configured targets always; others by probe_allow."""
        host = host.lower()
        for target in self.targets:
            if target.host.lower() == host and target.port == port:
                return True
        return any(matches_pattern(host, port, pattern) for pattern in self.settings.probe_allow)

    def probe_refusal(self, host: str, port: int, module_name: str) -> str | None:
        """Why /probe must not run `module_name` against host:port (for a 403), or None.

        A module that sends a password (AUTH) goes only to the targets configured with it and
        to its own probe_allow: anywhere else a server would receive the password. Any other
        module goes to every configured target and to the top-level probe_allow."""
        where = normal_address(host, port)
        if self.modules[module_name].auth_mechanism is not None:
            if any(target.module == module_name and normal_address(target.host, target.port) == where
                   for target in self.targets):
                return None
            if any(matches_pattern(host.lower(), port, pattern)
                   for pattern in self.secret_probe_allow.get(module_name, ())):
                return None
            return (f"module {module_name} sends an AUTH password, so /probe uses it only against "
                    f"the targets configured with it and its own probe_allow; {where} is neither")
        if self.probe_allowed(host, port):
            return None
        return (f"target {where} is neither a configured target nor allowed by probe_allow: "
                "an exporter must not become a port scanner")

    def domain_probe_refusal(self, name: str, unicode: str, module_name: str) -> str | None:
        """Why /probe?domain= must not run `module_name` against the MX hosts of a domain
        (A-label, Unicode form; for a 403), or None.

        A module that sends a password (AUTH) goes only to the domains configured with it:
        whoever controls another domain's MX records would receive the password. Any other
        module goes to every configured domain and to probe_allow_domains."""
        if self.modules[module_name].auth_mechanism is not None:
            if any(domain.name == name and domain.module == module_name for domain in self.domains):
                return None
            return (f"module {module_name} sends an AUTH password, so /probe uses it only for the "
                    f"domains configured with it; {name} is not one")
        if any(domain.name == name for domain in self.domains):
            return None
        if domain_allowed(name, unicode, self.settings.probe_allow_domains):
            return None
        return (f"domain {name} is neither a configured domain nor allowed by probe_allow_domains: "
                "an exporter must not become a port scanner")


class ConfigError(Exception):
    """The configuration is unusable. `errors` lists every problem, each "path: reason"."""

    def __init__(self, errors: list[str], source: str):
        super().__init__("\n".join(errors))
        self.errors = errors
        self.source = source


def load_config(path: str, *, check_secrets: bool = True) -> Config:
    """Read and validate a configuration file; raises ConfigError listing every problem.

    check_secrets=False does not look whether AUTH password files can be read and password
    environment variables are set (`check-config --skip-secrets`); with it, those that cannot
    are listed in Config.secret_problems (never errors).
    """
    try:
        data = read_file(path)
    except FileReadError as error:
        raise ConfigError([str(error)], path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([f"not UTF-8 text (byte {error.start})"], path) from None
    return parse_config(text, path, check_secrets=check_secrets)


def parse_config(text: str, source: str, *, check_secrets: bool = True) -> Config:
    """Validate YAML text; `source` names it in errors and in Config.source."""
    return _Parser(source, check_secrets).parse(text)


def default_config() -> Config:
    """The embedded default: the local MTA at 127.0.0.1:25, every 60 s."""
    return parse_config(DEFAULT_CONFIG_TEXT, EMBEDDED_SOURCE)


def parse_duration(value: Any, maximum: float = math.inf) -> float:
    """Seconds from a number (seconds) or a string like "500ms", "30s", "2m", "1h", "1m30s".

    Raises ValueError with the reason; a duration must be positive and at most `maximum`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a duration like 30s, 2m or 500ms, got {describe(value)}")
    if isinstance(value, str):
        if not _DURATION.fullmatch(value):
            raise ValueError(
                f"invalid duration {describe(value)}: use seconds (30) "
                "or numbers with units ms, s, m, h (500ms, 30s, 2m, 1m30s)"
            )
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive duration, got {describe(value)}")
    if seconds > maximum:
        raise ValueError(f"must be at most {format_duration(maximum)}, got {describe(value)}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a whole number or a string like "500KB", "10MB", "10MiB" (1 kB = 1000 B,
    1 KiB = 1024 B), at least 1 and at most MAX_MESSAGE_SIZE. Raises ValueError with the reason."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be a size in bytes like 1048576, 500KB or 10MiB, got {describe(value)}")
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if not match:
            raise ValueError(f"invalid size {describe(value)}: use bytes (1048576) or a number "
                             "with KB, MB, KiB or MiB (500KB, 10MiB)")
        value = int(float(match[1]) * _SIZE_UNITS[match[2].lower()])
    if not 1 <= value <= MAX_MESSAGE_SIZE:
        raise ValueError(f"must be 1 byte to {MAX_MESSAGE_SIZE // 2**20}MiB, got {value}")
    return value


def format_duration(seconds: float) -> str:
    """The shortest readable form: 0.5 -> "500ms", 120 -> "2m", 90 -> "90s"."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices)


class _Parser(Validator):
    """One validation pass: each `parse_*` method records problems and returns what it can."""

    error_class = ConfigError

    def __init__(self, source: str, check_secrets: bool):
        super().__init__(source)
        self.check_secrets = check_secrets
        self.secret_problems: list[str] = []
        self.modules_with_timeout: set[str] = set()  # to say where a target's timeout came from
        self.global_durations_ok = True  # else comparing a target with them would mislead
        self.secret_probe_allow: dict[str, tuple[str, ...]] = {}  # module name -> patterns

    # -- the document ------------------------------------------------------------------------

    def parse(self, text: str) -> Config:
        try:
            document, duplicates = read_document(text)
        except YamlSyntaxError as error:
            raise ConfigError([str(error)], self.source) from None
        self.errors.extend(duplicates)
        if document is None:
            self.error("", "the file is empty; it needs at least a modules section")
            raise self.failure()
        if not isinstance(document, dict):
            self.error(
                "",
                f"the top level must be a mapping with keys {_one_of(_TOP_KEYS)}, "
                f"got {describe(document)}",
            )
            raise self.failure()
        self.check_keys(document, "", _TOP_KEYS)
        settings = self.parse_settings(document.get("global"), document.get("probe_allow"),
                                       document.get("probe_allow_domains"))
        modules = self.parse_modules(document.get("modules"), settings)
        targets = self.parse_targets(document.get("targets"), settings, modules)
        dns = parse_dns(self, document.get("dns"))
        domains = parse_domains(self, document.get("domains"), settings, modules, dns)
        maillog = parse_maillog(self, document.get("maillog"))
        if self.errors:
            raise self.failure()
        valid_modules = {name: module for name, module in modules.items() if module is not None}
        return Config(settings, MappingProxyType(valid_modules), targets, self.source,
                      tuple(self.secret_problems), MappingProxyType(self.secret_probe_allow),
                      domains, dns, maillog)

    def check_keys(self, node: dict, path: str, allowed: tuple[str, ...]) -> None:
        for key in node:
            if key in allowed:
                continue
            if not isinstance(key, str):
                self.error(key_path(path, describe(key)), "unknown key")
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            self.error(key_path(path, key), f"unknown key{hint}")

    def section(self, value: Any, path: str) -> dict | None:
        """A mapping section; an empty (null) one counts as {}."""
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        self.error(path, f"must be a mapping, got {describe(value)}")
        return None

    # -- scalar values -----------------------------------------------------------------------

    def string(self, value: Any, path: str) -> str | None:
        if isinstance(value, str) and value:
            return value
        self.error(path, f"must be a non-empty string, got {describe(value)}")
        return None

    def boolean(self, value: Any, path: str) -> bool | None:
        if isinstance(value, bool):
            return value
        self.error(path, f"must be true or false, got {describe(value)}")
        return None

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str | None:
        if value in choices and isinstance(value, str):
            return value
        self.error(path, f"must be one of {_one_of(choices)}; got {describe(value)}")
        return None

    def duration(self, value: Any, path: str, maximum: float) -> float | None:
        try:
            return parse_duration(value, maximum)
        except ValueError as error:
            self.error(path, str(error))
            return None

    def byte_size(self, value: Any, path: str) -> int | None:
        try:
            return parse_size(value)
        except ValueError as error:
            self.error(path, str(error))
            return None

    def host_name(self, value: Any, path: str, *, allow_ip: bool) -> str | None:
        name = self.string(value, path)
        if name is None:
            return None
        if allow_ip and is_ip(name):
            return name
        problem = host_problem(name)
        if problem:
            self.error(path, problem)
            return None
        return name

    def ehlo_name(self, value: Any, path: str) -> str | None:
        """A host name, or an address literal as RFC 5321 writes it: [192.0.2.1], [IPv6:...]."""
        if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
            literal = value[1:-1]
            if literal.startswith("IPv6:") and is_ipv6(literal[5:]):
                return value
            try:
                ipaddress.IPv4Address(literal)
                return value
            except ValueError:
                self.error(path, f"invalid address literal {describe(value)}")
                return None
        return self.host_name(value, path, allow_ip=False)

    def file_path(self, value: Any, path: str, *, check: bool = True) -> str | None:
        """A path to a readable file; `$CREDENTIALS_DIRECTORY` is expanded (systemd)."""
        file_name = self.string(value, path)
        if file_name is None:
            return None
        if _CREDENTIALS_VARIABLE.search(file_name):
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if directory is None:
                return file_name  # left as written: Module.read_password says why it fails
            file_name = _CREDENTIALS_VARIABLE.sub(lambda _: directory, file_name)
        if check:
            problem = regular_file_problem(file_name)  # never blocks: a FIFO would
            if problem is not None:
                self.error(path, f"{problem}: {file_name}")
        return file_name

    def mail_address(self, value: Any, path: str, *, allow_null: bool) -> str | None:
        hint = ' (write "" for the null sender <>)' if allow_null else ""
        if not isinstance(value, str):
            self.error(path, f"must be a string{hint}, got {describe(value)}")
            return None
        if not value and not allow_null:
            self.error(path, "must not be empty")
            return None
        if _BAD_ADDRESS_CHARS.search(value):
            self.error(
                path,
                f"must be a bare address without spaces or angle brackets{hint}, "
                f"got {describe(value)}",
            )
            return None
        return value

    # -- sections ----------------------------------------------------------------------------

    def parse_settings(self, node: Any, allow_node: Any, allow_domains_node: Any = None) -> Settings:
        values: dict[str, Any] = {}
        node = self.section(node, "global")
        if node:
            self.check_keys(node, "global", _GLOBAL_KEYS)
            if "interval" in node:
                values["interval_seconds"] = self.duration(node["interval"], "global.interval", MAX_INTERVAL_SECONDS)
            if "timeout" in node:
                values["timeout_seconds"] = self.duration(node["timeout"], "global.timeout", MAX_TIMEOUT_SECONDS)
            if "max_concurrency" in node:
                values["max_concurrency"] = self.concurrency(node["max_concurrency"])
            if "ehlo_name" in node:
                values["ehlo_name"] = self.ehlo_name(node["ehlo_name"], "global.ehlo_name")
        values["probe_allow"] = self.parse_probe_allow(allow_node)
        values["probe_allow_domains"] = parse_probe_allow_domains(self, allow_domains_node)
        settings = Settings(**{key: value for key, value in values.items() if value is not None})
        self.global_durations_ok = (
            values.get("interval_seconds", 1) is not None and values.get("timeout_seconds", 1) is not None
        )
        # Compared whenever both durations parsed, whatever else in `global` failed: every
        # problem is reported at once.
        if self.global_durations_ok and settings.timeout_seconds >= settings.interval_seconds:
            self.error(
                "global.timeout",
                f"{format_duration(settings.timeout_seconds)} must be shorter than "
                f"global.interval {format_duration(settings.interval_seconds)}: "
                "a probe must end before its next run",
            )
        return settings

    def concurrency(self, value: Any) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error("global.max_concurrency", f"must be a whole number, got {describe(value)}")
            return None
        if value < 1:
            self.error("global.max_concurrency", f"must be at least 1, got {value}")
            return None
        if value > MAX_CONCURRENCY:
            self.error("global.max_concurrency", f"must be at most {MAX_CONCURRENCY}, got {value}")
            return None
        return value

    def parse_probe_allow(self, node: Any, at: str = "probe_allow") -> tuple[str, ...]:
        if node is None:
            return ()
        if not isinstance(node, list):
            self.error(at, f"must be a list of host:port patterns, got {describe(node)}")
            return ()
        patterns = []
        for index, pattern in enumerate(node):
            path = f"{at}[{index}]"
            if not isinstance(pattern, str) or is_bad_pattern(pattern):
                self.error(
                    path,
                    'must be a host:port pattern like "*.example.org:25" or "[2001:db8::*]:*", '
                    f"got {describe(pattern)}",
                )
                continue
            patterns.append(pattern)
        return tuple(patterns)

    def parse_modules(self, node: Any, settings: Settings) -> dict[str, Module | None]:
        """Every module by name, None for one with errors (its name still counts as known)."""
        node = self.section(node, "modules")
        if node is None:
            return {}
        if not node:
            self.error("modules", "must define at least one module")
        modules: dict[str, Module | None] = {}
        for name, body in node.items():
            path = key_path("modules", name)
            if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
                self.error(path, 'a module name may use only letters, digits, "_", "-" and "."')
                continue
            modules[name] = self.parse_module(body, path, settings)
            if isinstance(body, dict) and "probe_allow" in body:
                self.parse_module_probe_allow(name, body, path)
        return modules

    def parse_module_probe_allow(self, name: str, node: dict, path: str) -> None:
        """A module's own probe_allow: only for a module that sends a password, which the
        top-level probe_allow never applies to."""
        at = key_path(path, "probe_allow")
        if "auth" not in node:
            self.error(at, "only a module with auth has its own probe_allow (the top-level "
                           "probe_allow applies to every other module)")
            return
        self.secret_probe_allow[name] = self.parse_probe_allow(node["probe_allow"], at)

    def parse_module(self, node: Any, path: str, settings: Settings) -> Module | None:
        node = self.section(node, path)
        if node is None:
            return None
        errors_before = len(self.errors)
        self.check_keys(node, path, _MODULE_KEYS)
        options: dict[str, Any] = {
            "timeout_seconds": settings.timeout_seconds,
            "ehlo_name": settings.ehlo_name,
        }
        at = lambda key: key_path(path, key)  # noqa: E731 - the path of one key of this module
        if "tls" in node:
            options["tls"] = self.choice(node["tls"], at("tls"), TLS_MODES)
        for key in ("tls_verify", "helo_fallback", "data"):
            if key in node:
                options[key] = self.boolean(node[key], at(key))
        if "tls_ca_file" in node:
            options["tls_ca_file"] = self.file_path(node["tls_ca_file"], at("tls_ca_file"))
        if "tls_server_name" in node:
            options["tls_server_name"] = self.host_name(
                node["tls_server_name"], at("tls_server_name"), allow_ip=True
            )
        if "tls_min_version" in node:
            options["tls_min_version"] = self.choice(
                node["tls_min_version"], at("tls_min_version"), TLS_VERSIONS
            )
        if "ehlo_name" in node:
            options["ehlo_name"] = self.ehlo_name(node["ehlo_name"], at("ehlo_name"))
        if "ip_protocol" in node:
            options["ip_protocol"] = self.choice(
                node["ip_protocol"], at("ip_protocol"), IP_PROTOCOLS
            )
        if "timeout" in node:
            options["timeout_seconds"] = self.duration(node["timeout"], at("timeout"), MAX_TIMEOUT_SECONDS)
            self.modules_with_timeout.add(path)
        if "message_size" in node:
            options["message_size"] = self.byte_size(node["message_size"], at("message_size"))
        if "connect_timeout" in node:
            options["connect_timeout_seconds"] = self.duration(node["connect_timeout"], at("connect_timeout"),
                                                             MAX_TIMEOUT_SECONDS)
        if "mail_from" in node:
            options["mail_from"] = self.mail_address(
                node["mail_from"], at("mail_from"), allow_null=True
            )
        if "rcpt_to" in node:
            options["rcpt_to"] = self.parse_recipients(node["rcpt_to"], at("rcpt_to"))
        if "auth" in node:
            options.update(self.parse_auth(node["auth"], at("auth")))
        if "expect" in node:
            options["expect"] = self.parse_expect(node["expect"], at("expect"))
        # A value that failed is None here; the checks across options leave it out, so one
        # mistake is reported once, not again by every option that depends on it.
        failed = {key for key, value in options.items() if value is None and key != "ehlo_name"}
        module = Module(
            **{key: value for key, value in options.items() if key not in failed}
        )
        self.check_module_consistency(node, module, path, failed)
        if len(self.errors) != errors_before:
            return None
        self.check_password(module, path)
        return module

    def check_password(self, module: Module, path: str) -> None:
        if not self.check_secrets or module.auth_mechanism is None:
            return
        key = "password_file" if module.auth_password_file else "password_env"
        try:
            module.read_password()
        except PasswordUnavailable as error:
            self.secret_problems.append(f"{path}.auth.{key}: {error}")

    def check_module_consistency(
        self, node: dict, module: Module, path: str, failed: set[str]
    ) -> None:
        """Options that are valid alone but cannot work together."""
        if module.rcpt_to and not failed & {"mail_from"} and module.mail_from is None:
            self.error(
                key_path(path, "rcpt_to"), 'needs mail_from (write "" for the null sender <>)'
            )
        if module.data and not failed & {"rcpt_to"} and not module.rcpt_to:
            self.error(key_path(path, "data"), "needs rcpt_to: a message needs a recipient")
        if module.message_size is not None and not failed & {"data"} and not module.data:
            self.error(key_path(path, "message_size"), "needs data: true (the size is the test message's)")
        if "auth" in node and "tls" not in failed and module.tls not in AUTH_TLS_MODES:
            self.error(
                key_path(path, "auth"),
                "needs tls: starttls or implicit, so the password never crosses the network "
                f"in clear; got tls: {module.tls}",
            )
        uses_starttls = module.tls in ("starttls", "opportunistic")
        # stage -> (the option that makes the module reach it, does it, why not)
        reached = {
            "auth": ("auth_mechanism", "auth" in node, "it has no auth"),
            "mail": ("mail_from", module.mail_from is not None, "it has no mail_from"),
            "rcpt": ("rcpt_to", bool(module.rcpt_to), "it has no rcpt_to"),
            "data": ("data", module.data, "data is not true"),
            "starttls": ("tls", uses_starttls, f"tls is {module.tls}"),
            "ehlo_tls": ("tls", uses_starttls, f"tls is {module.tls}"),
        }
        for stage in module.expect:
            option, reaches, why_not = reached.get(stage, ("", True, ""))
            if not reaches and option not in failed:
                self.error(
                    key_path(path, f"expect.{stage}"),
                    f"the module never reaches this stage ({why_not})",
                )
        if node.get("tls_verify") is False and module.tls_ca_file:
            self.error(key_path(path, "tls_ca_file"), "has no effect with tls_verify: false")

    def parse_recipients(self, node: Any, path: str) -> tuple[str, ...] | None:
        if not isinstance(node, list):
            self.error(path, f"must be a list of addresses, got {describe(node)}")
            return None
        recipients = [
            self.mail_address(item, f"{path}[{index}]", allow_null=False)
            for index, item in enumerate(node)
        ]
        return None if None in recipients else tuple(recipients)  # type: ignore[arg-type]

    def parse_auth(self, node: Any, path: str) -> dict[str, Any]:
        node = self.section(node, path)
        if node is None:
            return {"auth_mechanism": None}
        self.check_keys(node, path, _AUTH_KEYS)
        options: dict[str, Any] = {"auth_mechanism": "PLAIN"}
        if "mechanism" in node:
            mechanism = node["mechanism"]
            normal = mechanism.upper() if isinstance(mechanism, str) else mechanism
            options["auth_mechanism"] = self.choice(
                normal, key_path(path, "mechanism"), AUTH_MECHANISMS
            )
        if "username" in node:
            options["auth_username"] = self.string(node["username"], key_path(path, "username"))
        else:
            self.error(key_path(path, "username"), "required")
        has_file, has_env = "password_file" in node, "password_env" in node
        if has_file and has_env:
            self.error(path, "set password_file or password_env, not both")
        elif not has_file and not has_env:
            self.error(path, "needs password_file or password_env")
        elif has_file:
            options["auth_password_file"] = self.file_path(
                node["password_file"], key_path(path, "password_file"), check=False
            )
        else:
            options["auth_password_env"] = self.password_env(
                node["password_env"], key_path(path, "password_env")
            )
        return options

    def password_env(self, value: Any, path: str) -> str | None:
        name = self.string(value, path)
        if name is None:
            return None
        if not _ENV_NAME.fullmatch(name):
            self.error(path, f"invalid environment variable name {describe(name)}")
            return None
        return name

    def parse_expect(self, node: Any, path: str) -> Mapping[str, tuple[int, ...]] | None:
        node = self.section(node, path)
        if node is None:
            return None
        expect: dict[str, tuple[int, ...]] = {}
        for stage, codes in node.items():
            stage_path = key_path(path, stage)
            if stage not in REPLY_STAGES:
                what = f"the {stage} stage has no reply" if stage in STAGES else "unknown stage"
                self.error(stage_path, f"{what}; stages with replies: {_one_of(REPLY_STAGES)}")
                continue
            code_list = codes if isinstance(codes, list) else [codes]
            if not code_list:
                self.error(stage_path, "must list at least one reply code")
                continue
            valid = True
            for index, code in enumerate(code_list):
                if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                    where = f"{stage_path}[{index}]" if isinstance(codes, list) else stage_path
                    self.error(where, f"must be a reply code 100-599, got {describe(code)}")
                    valid = False
            if valid:
                expect[stage] = tuple(code_list)
        return MappingProxyType(expect)

    def parse_targets(
        self, node: Any, settings: Settings, modules: dict[str, Module | None]
    ) -> tuple[Target, ...]:
        if node is None:
            return ()
        if not isinstance(node, list):
            self.error("targets", f"must be a list, got {describe(node)}")
            return ()
        targets: list[Target] = []
        first_index: dict[tuple[str, int, str], int] = {}
        for index, item in enumerate(node):
            target = self.parse_target(item, f"targets[{index}]", settings, modules)
            if target is None:
                continue
            key = (target.host.lower(), target.port, target.module)
            if key in first_index:
                self.error(
                    f"targets[{index}]",
                    f"duplicate of targets[{first_index[key]}] "
                    f'(same address {describe(target.name)} and module "{target.module}")',
                )
                continue
            first_index[key] = index
            targets.append(target)
        return tuple(targets)

    def parse_target(
        self, node: Any, path: str, settings: Settings, modules: dict[str, Module | None]
    ) -> Target | None:
        if not isinstance(node, dict):
            self.error(path, f"must be a mapping with address and module, got {describe(node)}")
            return None
        errors_before = len(self.errors)
        self.check_keys(node, path, _TARGET_KEYS)
        host = port = module_name = None
        if "address" not in node:
            self.error(key_path(path, "address"), "required")
        elif not isinstance(node["address"], str):
            got = describe(node["address"])
            self.error(key_path(path, "address"), f'must be a string "host:port", got {got}')
        else:
            try:
                host, port = parse_address(node["address"])
            except ValueError as error:
                self.error(key_path(path, "address"), str(error))
        if "module" not in node:
            self.error(key_path(path, "module"), "required")
        else:
            module_name = node["module"]
            if not isinstance(module_name, str):
                got = describe(module_name)
                self.error(key_path(path, "module"), f"must be a module name, got {got}")
            elif module_name not in modules:
                known = _one_of(tuple(modules)) or "(none)"
                self.error(
                    key_path(path, "module"),
                    f"unknown module {describe(module_name)}; known: {known}",
                )
        interval = timeout = None
        if "interval" in node:
            interval = self.duration(node["interval"], key_path(path, "interval"), MAX_INTERVAL_SECONDS)
        if "timeout" in node:
            timeout = self.duration(node["timeout"], key_path(path, "timeout"), MAX_TIMEOUT_SECONDS)
        if len(self.errors) > errors_before:
            return None
        module = modules[module_name]
        if module is None:
            return None  # the module's own errors are already reported
        target = Target(
            name=node["address"],
            host=host,
            port=port,
            module=module_name,
            interval_seconds=interval if interval is not None else settings.interval_seconds,
            timeout_seconds=timeout if timeout is not None else module.timeout_seconds,
        )
        if target.timeout_seconds < target.interval_seconds:
            return target
        if timeout is not None:
            timeout_origin = key_path(path, "timeout")
        elif f"modules.{module_name}" in self.modules_with_timeout:
            timeout_origin = f"modules.{module_name}.timeout"
        else:
            timeout_origin = "global.timeout"
        interval_origin = key_path(path, "interval") if interval is not None else "global.interval"
        global_origins = {timeout_origin, interval_origin} & {"global.timeout", "global.interval"}
        if global_origins and not self.global_durations_ok:
            return target  # a global value is wrong: comparing with its default would mislead
        if global_origins != {"global.timeout", "global.interval"}:  # (else said in global)
            self.error(
                path,
                f"timeout {format_duration(target.timeout_seconds)} ({timeout_origin}) must be "
                f"shorter than interval {format_duration(target.interval_seconds)} "
                f"({interval_origin}): a probe must end before its next run",
            )
        return None
