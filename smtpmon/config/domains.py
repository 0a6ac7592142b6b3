"""The mail-domain parts of the configuration: `domains:`, `dns:` and `probe_allow_domains:`.

Validated by the same pass as the rest of the file (smtpmon.config.load), every problem with
its key path (`domains[3].domain: "exa mple.org": the label ...`). Domain names go through
smtpmon.dns.parse_domain, the one grammar of mail domains (IDNA: Unicode or A-labels).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from smtpmon.config.addresses import is_ip, parse_address
from smtpmon.config.bounds import MAX_INTERVAL_SECONDS, MAX_TIMEOUT_SECONDS
from smtpmon.config.validation import describe, key_path
from smtpmon.dns import MxOptions, ResolverSettings, parse_domain
from smtpmon.dns.cache import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_TTL_SECONDS,
    DEFAULT_MIN_TTL_SECONDS,
)
from smtpmon.dns.mx import DEFAULT_MAX_ADDRESSES_PER_HOST, DEFAULT_MAX_MX_HOSTS
from smtpmon.dns.results import IP_PROTOCOLS
from smtpmon.domains.policy import PolicySwitches
from smtpmon.smtp.session import SMTP_PORT, module_default_port

DOMAIN_KEYS = ("domain", "module", "interval", "timeout", "port", "ip_protocol", "max_mx_hosts",
               "max_addresses_per_host", "expect_mail", "dane", "mta_sts", "mta_sts_ca_file")
DNS_KEYS = ("nameservers", "timeout", "min_ttl", "max_ttl", "grace", "validating_resolver")
DNS_PORT = 53
# Caps on the fan-out: each address is a session and a set of series.
MAX_MX_HOSTS_LIMIT = 50
MAX_ADDRESSES_PER_HOST_LIMIT = 16
# dns: bounds. One attempt at one server: glibc's resolver caps its own at 30 s
# (RES_MAXRETRANS), and a question gets two attempts at each server within the domain's
# timeout anyway. TTL bounds and the grace a stale answer is used for after a failed refresh:
# a day at most (unbound's cache-max-ttl default; RFC 8767 serves stale data 1-3 days).
# Nameservers: each is asked in turn within one question's time (resolv.conf takes 3).
MAX_DNS_TIMEOUT_SECONDS = 30.0
MAX_DNS_TTL_SECONDS = 86400.0
MAX_DNS_GRACE_SECONDS = 86400.0
MAX_NAMESERVERS = 8
_DOMAIN_PATTERN = re.compile(r"[A-Za-z0-9*?.\-\[\]!]+")


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """Where domain resolutions ask, and how answers are cached. No nameservers: the system
    resolver's (/etc/resolv.conf)."""

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout_seconds: float = 2.0
    min_ttl_seconds: float = DEFAULT_MIN_TTL_SECONDS
    max_ttl_seconds: float = DEFAULT_MAX_TTL_SECONDS
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    # The DNSSEC-validating resolver whose AD bit DANE trusts, asked alone (no fallback):
    # (address, port), or None (no DANE).
    validating_resolver: tuple[str, int] | None = None

    @property
    def resolver_settings(self) -> ResolverSettings:
        return ResolverSettings(nameservers=self.nameservers, timeout_seconds=self.timeout_seconds)

    @property
    def validating_settings(self) -> ResolverSettings | None:
        if self.validating_resolver is None:
            return None
        return ResolverSettings(nameservers=(self.validating_resolver,),
                                timeout_seconds=self.timeout_seconds)


@dataclass(frozen=True, slots=True)
class DomainTarget:
    """One scheduled mail domain. `name` is the A-label (the `domain` label), `unicode` the
    form people read, `written` the text as configured. Interval and timeout are resolved."""

    name: str
    unicode: str
    written: str
    module: str
    interval_seconds: float
    timeout_seconds: float
    port: int = SMTP_PORT
    ip_protocol: str = "both"
    max_mx_hosts: int = DEFAULT_MAX_MX_HOSTS
    max_addresses_per_host: int = DEFAULT_MAX_ADDRESSES_PER_HOST
    expect_mail: bool = True
    dane: bool = False  # default: on when dns.validating_resolver is set
    mta_sts: bool = True
    mta_sts_ca_file: str | None = None

    @property
    def policy_switches(self) -> PolicySwitches:
        return PolicySwitches(dane=self.dane, mta_sts=self.mta_sts,
                              mta_sts_ca_file=self.mta_sts_ca_file)

    @property
    def mx_options(self) -> MxOptions:
        return MxOptions(ip_protocol=self.ip_protocol, max_mx_hosts=self.max_mx_hosts,
                         max_addresses_per_host=self.max_addresses_per_host)


def domain_allowed(name: str, unicode: str, patterns: tuple[str, ...]) -> bool:
    """Does a domain (A-label and Unicode form) match a `probe_allow_domains` pattern?"""
    return any(fnmatch.fnmatchcase(name, pattern.lower()) or
               fnmatch.fnmatchcase(unicode, pattern.lower()) for pattern in patterns)


def parse_dns(parser, node: Any) -> DnsSettings:
    """`dns:`; `parser` is the validation pass (smtpmon.config.load._Parser)."""
    node = parser.section(node, "dns")
    if not node:
        return DnsSettings()
    parser.check_keys(node, "dns", DNS_KEYS)
    values: dict[str, Any] = {}
    if "nameservers" in node:
        values["nameservers"] = _nameservers(parser, node["nameservers"], "dns.nameservers")
    if "validating_resolver" in node:
        found = _nameservers(parser, [node["validating_resolver"]], "dns.validating_resolver",
                             listed=False)
        values["validating_resolver"] = found[0] if found else None
    for key, field, maximum in (("timeout", "timeout_seconds", MAX_DNS_TIMEOUT_SECONDS),
                                ("min_ttl", "min_ttl_seconds", MAX_DNS_TTL_SECONDS),
                                ("max_ttl", "max_ttl_seconds", MAX_DNS_TTL_SECONDS),
                                ("grace", "grace_seconds", MAX_DNS_GRACE_SECONDS)):
        if key in node:
            values[field] = parser.duration(node[key], f"dns.{key}", maximum)
    settings = DnsSettings(**{key: value for key, value in values.items() if value is not None})
    if any(value is None for value in values.values()):
        return settings  # each bad value is reported; comparing the rest would mislead
    if settings.min_ttl_seconds > settings.max_ttl_seconds:
        parser.error("dns.min_ttl", f"must not be longer than dns.max_ttl "
                                    f"({settings.max_ttl_seconds:g} s)")
    return settings


def _nameservers(parser, node: Any, path: str, listed: bool = True) -> tuple[tuple[str, int], ...] | None:
    if not isinstance(node, list):
        parser.error(path, f'must be a list of "address" or "address:port", got {describe(node)}')
        return None
    if len(node) > MAX_NAMESERVERS:
        parser.error(path, f"must name at most {MAX_NAMESERVERS} servers, got {len(node)}")
        return None
    servers = []
    for index, item in enumerate(node):
        where = f"{path}[{index}]" if listed else path
        if not isinstance(item, str):
            parser.error(where, f'must be a string "address[:port]", got {describe(item)}')
            continue
        try:
            host, port = parse_address(item, DNS_PORT)
        except ValueError as error:
            parser.error(where, str(error))
            continue
        if not is_ip(host):
            parser.error(where, f"must be an IP address (a name would need a resolver to find "
                                f"it), got {describe(item)}")
            continue
        servers.append((host, port))
    return tuple(servers)


def parse_probe_allow_domains(parser, node: Any) -> tuple[str, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        parser.error("probe_allow_domains",
                     f"must be a list of domain patterns, got {describe(node)}")
        return ()
    patterns = []
    for index, pattern in enumerate(node):
        if not isinstance(pattern, str) or not _DOMAIN_PATTERN.fullmatch(
                _a_label_pattern(pattern)):
            parser.error(f"probe_allow_domains[{index}]",
                         'must be a domain pattern like "example.org" or "*.example.org", '
                         f"got {describe(pattern)}")
            continue
        patterns.append(pattern)
    return tuple(patterns)


def _a_label_pattern(pattern: str) -> str:
    """A Unicode pattern is checked as its A-label would be (`*.bücher.example` is fine)."""
    try:
        return pattern.encode("idna").decode("ascii") if not pattern.isascii() else pattern
    except UnicodeError:
        return pattern


def parse_domains(parser, node: Any, settings, modules: dict,
                  dns: DnsSettings = DnsSettings()) -> tuple[DomainTarget, ...]:
    """`domains:`; `settings` gives the interval default, `modules` the known modules (None
    for one with errors of its own), `dns` whether DANE can be on."""
    if node is None:
        return ()
    if not isinstance(node, list):
        parser.error("domains", f"must be a list, got {describe(node)}")
        return ()
    domains: list[DomainTarget] = []
    first_index: dict[tuple[str, str], int] = {}
    for index, item in enumerate(node):
        path = f"domains[{index}]"
        domain = _domain(parser, item, path, settings, modules, dns)
        if domain is None:
            continue
        # (domain, module) names the series: two ports would share them.
        key = (domain.name, domain.module)
        if key in first_index:
            parser.error(path, f"duplicate of domains[{first_index[key]}] (same domain "
                               f'{describe(domain.name)} and module "{domain.module}")')
            continue
        first_index[key] = index
        domains.append(domain)
    return tuple(domains)


def _domain(parser, node: Any, path: str, settings, modules: dict,
            dns: DnsSettings) -> DomainTarget | None:
    if not isinstance(node, dict):
        parser.error(path, f"must be a mapping with domain and module, got {describe(node)}")
        return None
    errors_before = len(parser.errors)
    parser.check_keys(node, path, DOMAIN_KEYS)
    at = lambda key: key_path(path, key)  # noqa: E731 - the path of one key of this entry
    parsed = None
    if "domain" not in node:
        parser.error(at("domain"), "required")
    else:
        parsed = parse_domain(node["domain"])
        if isinstance(parsed, str):
            parser.error(at("domain"), parsed)
    module_name = node.get("module")
    if "module" not in node:
        parser.error(at("module"), "required")
    elif not isinstance(module_name, str) or module_name not in modules:
        known = ", ".join(modules) or "(none)"
        parser.error(at("module"), f"unknown module {describe(module_name)}; known: {known}")
    values: dict[str, Any] = {}
    if "interval" in node:
        values["interval_seconds"] = parser.duration(node["interval"], at("interval"), MAX_INTERVAL_SECONDS)
    if "timeout" in node:
        values["timeout_seconds"] = parser.duration(node["timeout"], at("timeout"), MAX_TIMEOUT_SECONDS)
    if "port" in node:
        values["port"] = _whole(parser, node["port"], at("port"), 1, 65535)
    if "ip_protocol" in node:
        values["ip_protocol"] = parser.choice(node["ip_protocol"], at("ip_protocol"), IP_PROTOCOLS)
    if "max_mx_hosts" in node:
        values["max_mx_hosts"] = _whole(parser, node["max_mx_hosts"], at("max_mx_hosts"), 1,
                                        MAX_MX_HOSTS_LIMIT)
    if "max_addresses_per_host" in node:
        values["max_addresses_per_host"] = _whole(
            parser, node["max_addresses_per_host"], at("max_addresses_per_host"), 1,
            MAX_ADDRESSES_PER_HOST_LIMIT)
    if "expect_mail" in node:
        values["expect_mail"] = parser.boolean(node["expect_mail"], at("expect_mail"))
    for key in ("dane", "mta_sts"):
        if key in node:
            values[key] = parser.boolean(node[key], at(key))
    if values.get("dane") and dns.validating_resolver is None:
        parser.error(at("dane"), "needs dns.validating_resolver: DANE trusts the AD bit of a "
                                 "validating resolver, and none is configured")
    if "mta_sts_ca_file" in node:
        values["mta_sts_ca_file"] = parser.file_path(node["mta_sts_ca_file"], at("mta_sts_ca_file"),
                                                     check=parser.check_secrets)
    if len(parser.errors) > errors_before:
        return None
    module = modules[module_name]
    if module is None:
        return None  # its own errors are reported already
    values.setdefault("port", module_default_port(module))  # 465 for implicit TLS, as targets
    # DANE judges the chain presented after STARTTLS; MTA-STS also needs PKIX judged: a
    # module that never starts TLS (or never verifies) would make every verdict a failure.
    starts_tls = module.tls != "none"
    if values.get("dane") and not starts_tls:
        parser.error(at("dane"), f'needs a module that starts TLS; modules.{module_name} has tls: none')
        return None
    if values.get("mta_sts") and not (starts_tls and module.tls_verify):
        parser.error(at("mta_sts"), f"needs a module that starts TLS and verifies certificates "
                                    f"(modules.{module_name})")
        return None
    values.setdefault("dane", dns.validating_resolver is not None and starts_tls)
    values.setdefault("mta_sts", starts_tls and module.tls_verify)
    values.setdefault("interval_seconds", settings.interval_seconds)
    values.setdefault("timeout_seconds", module.timeout_seconds)
    domain = DomainTarget(name=parsed.a_label, unicode=parsed.unicode, written=node["domain"],
                          module=module_name, **values)
    # Both from `global`: that section's own check has said it once.
    from_global = ("interval" not in node and "timeout" not in node
                   and f"modules.{module_name}" not in parser.modules_with_timeout)
    if domain.timeout_seconds >= domain.interval_seconds and not from_global:
        parser.error(path, f"timeout {domain.timeout_seconds:g} s must be shorter than interval "
                           f"{domain.interval_seconds:g} s: a probe must end before its next run")
        return None
    return domain


def _whole(parser, value: Any, path: str, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        parser.error(path, f"must be a whole number {low}-{high}, got {describe(value)}")
        return None
    return value
