"""Resolve a mail domain as a sending MTA does (RFC 5321 5.1, RFC 7505), into a value.

1. Ask for the domain's MX records (following a CNAME of the domain itself, as 5.1 says).
   NXDOMAIN is final; SERVFAIL, a timeout, garbage are temporary failures: nothing else is
   asked.
2. A single `MX 0 .` is a null MX: the domain accepts no mail.
3. No MX records (NODATA): the implicit MX is the domain itself, preference 0.
4. MX records: sorted by preference, equal preferences all kept (senders spread over them),
   the least preferred cut at `max_mx_hosts`. Each host's A and/or AAAA records (as
   `ip_protocol` says) are asked; a host that is a CNAME, does not exist, has no address or
   is an IP literal is a named misconfiguration.

Blocking (dnspython's sync API): the daemon runs it on the lookup pool's threads. Never
raises for anything DNS or the input does: every outcome is a DomainResolution.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

import dns.name

from smtpmon.dns.cache import DnsCache, NotCached
from smtpmon.dns.names import (
    DomainName,
    is_ip_literal,
    name_text,
    name_unicode,
    parse_domain,
)
from smtpmon.dns.resolver import Answer, Resolver, ResolverSettings
from smtpmon.dns.results import (
    IP_PROTOCOLS,
    MISCONFIGURED_HOST_STATES,
    TEMPORARY_STATES,
    Address,
    DomainResolution,
    Lookup,
    MxHost,
)

DEFAULT_MAX_MX_HOSTS = 10
DEFAULT_MAX_ADDRESSES_PER_HOST = 4
_FAMILY_QUESTIONS = {"ipv4": "A", "ipv6": "AAAA"}


@dataclass(frozen=True, slots=True)
class MxOptions:
    """What to resolve: address families (`both`, `ipv4`, `ipv6`) and the caps on the fan-out.
    Raises ValueError naming the bad field."""

    ip_protocol: str = "both"
    max_mx_hosts: int = DEFAULT_MAX_MX_HOSTS
    max_addresses_per_host: int = DEFAULT_MAX_ADDRESSES_PER_HOST

    def __post_init__(self) -> None:
        if self.ip_protocol not in IP_PROTOCOLS:
            raise ValueError(f"ip_protocol: {self.ip_protocol!r} is not one of "
                             f"{', '.join(IP_PROTOCOLS)}")
        for name in ("max_mx_hosts", "max_addresses_per_host"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not a whole number of at least 1")

    @property
    def families(self) -> tuple[str, ...]:
        # IPv6 first: senders prefer it when they have both (RFC 6724's default order).
        return ("ipv6", "ipv4") if self.ip_protocol == "both" else (self.ip_protocol,)


class MxResolver:
    """Resolves mail domains with one resolver set-up and, optionally, a cache shared with
    other MxResolvers (answers are kept per nameserver set, so sharing is safe)."""

    def __init__(self, resolver: Resolver | ResolverSettings, cache: DnsCache | None = None) -> None:
        self.resolver = resolver if isinstance(resolver, Resolver) else Resolver(resolver)
        self.cache = cache

    def resolve(self, domain: str, options: MxOptions = MxOptions(),
                deadline: float | None = None, *, cached_only: bool = False) -> DomainResolution:
        """Resolve `domain` (Unicode or A-label) by the monotonic `deadline` (default: the
        settings' lifetime from now). `cached_only`: from fresh cached answers alone, so it
        never waits (a hub's thread may call it); NotCached when a question must be asked."""
        started = time.monotonic()
        if deadline is None:
            deadline = started + self.resolver.settings.lifetime_seconds
        parsed = parse_domain(domain)
        if isinstance(parsed, str):
            shown = domain if isinstance(domain, str) else repr(domain)
            return DomainResolution(domain=shown, domain_unicode=shown, state="invalid_name",
                                    ip_protocol=options.ip_protocol, notes=(parsed,))
        run = _Resolution(self, parsed, options, deadline, cached_only)
        return run.result(started)

    def _ask(self, name: dns.name.Name, rdtype: str, deadline: float, cached_only: bool) -> Answer:
        """One question, through the cache when there is one (keyed by nameserver set too:
        two sets may see different answers, e.g. split horizon)."""
        if self.cache is None:
            if cached_only:
                raise NotCached(name)
            return self.resolver.query(name, rdtype, deadline)
        key = (self.resolver.settings.nameservers, name_text(name), rdtype)
        return self.cache.get(key, lambda: self.resolver.query(name, rdtype, deadline),
                              cached_only=cached_only)


class _Resolution:
    """The questions and findings of one domain resolution."""

    def __init__(self, owner: MxResolver, domain: DomainName, options: MxOptions,
                 deadline: float, cached_only: bool) -> None:
        self.owner = owner
        self.domain = domain
        self.options = options
        self.deadline = deadline
        self.cached_only = cached_only
        self.answers: list[Answer] = []
        self.notes: list[str] = []

    def ask(self, name: dns.name.Name, rdtype: str) -> Answer:
        answer = self.owner._ask(name, rdtype, self.deadline, self.cached_only)
        self.answers.append(answer)
        if answer.stale:
            self.notes.append(f"{rdtype} {answer.name}: {answer.detail}")
        return answer

    def result(self, started: float) -> DomainResolution:
        state, hosts, record_count, capped = self._resolve()
        lookups = tuple(
            Lookup(name=a.name, rdtype=a.rdtype, state=a.failed_state or a.state,
                   duration_seconds=a.duration_seconds, from_cache=a.from_cache, stale=a.stale,
                   ttl_seconds=a.ttl_seconds, detail=a.detail)
            for a in self.answers)
        failed = any(not a.is_answer for a in self.answers)
        return DomainResolution(
            domain=self.domain.a_label,
            domain_unicode=self.domain.unicode,
            state=state,
            mx_hosts=tuple(hosts),
            mx_record_count=record_count,
            mx_hosts_capped=capped,
            ip_protocol=self.options.ip_protocol,
            notes=tuple(dict.fromkeys(self.notes)),
            lookups=lookups,
            duration_seconds=time.monotonic() - started,
            from_cache=bool(self.answers) and all(a.from_cache and not a.stale for a in self.answers),
            stale=any(a.stale for a in self.answers),
            ttl_seconds=0.0 if failed else min((a.ttl_seconds for a in self.answers), default=0.0),
        )

    def _resolve(self) -> tuple[str, list[MxHost], int, bool]:
        domain = self.domain
        mx = self.ask(domain.dns_name, "MX")
        if not mx.is_answer:
            self.notes.append(f"MX {domain.a_label}: {mx.detail}")
            return mx.state, [], 0, False
        if mx.state == "nxdomain":
            self.notes.append(mx.detail or f"{domain.a_label} does not exist (NXDOMAIN)")
            return "nxdomain", [], 0, False
        if mx.cnames:
            self.notes.append(f"{domain.a_label} is an alias of {mx.canonical_name}: its MX "
                              "records are used (RFC 5321 5.1)")
        if mx.state == "nodata" or not mx.records:
            return self._implicit_mx(dns.name.from_text(mx.canonical_name or domain.a_label))
        return self._mx_hosts(mx.records)

    def _implicit_mx(self, name: dns.name.Name) -> tuple[str, list[MxHost], int, bool]:
        self.notes.append(f"{name_text(name)} has no MX records: mail goes to its own "
                          "addresses (implicit MX, RFC 5321 5.1)")
        host = self._host(0, name, implicit=True)
        if host.state in ("ok", "cname"):
            return "implicit_mx", [host], 0, False
        if host.state == "no_address":
            self.notes.append(f"{name_text(name)} has neither MX records nor addresses: "
                              "senders cannot deliver (RFC 5321 5.1)")
        return host.state, [host], 0, False

    def _mx_hosts(self, records: tuple) -> tuple[str, list[MxHost], int, bool]:
        records = sorted(records, key=lambda record: (record[0], name_text(record[1])))
        targets = [target for _, target in records]
        if targets == [dns.name.root]:
            preference = records[0][0]
            self.notes.append("null MX (RFC 7505): the domain says it accepts no mail")
            if preference != 0:
                self.notes.append(f"the null MX has preference {preference}; RFC 7505 says 0")
            return "null_mx", [], 1, False
        # One host named twice (at two preferences) is one host, at its best preference.
        unique: dict[dns.name.Name, int] = {}
        for preference, target in records:
            unique.setdefault(target, preference)
        if len(unique) < len(records):
            self.notes.append("an MX host is named more than once; its lowest preference counts")
        kept = list(unique.items())[:self.options.max_mx_hosts]
        capped = len(unique) > len(kept)
        if capped:
            self.notes.append(
                f"{len(unique)} MX hosts: resolving the {len(kept)} most preferred "
                f"(max_mx_hosts {self.options.max_mx_hosts}); the others are not probed")
        hosts = [self._host(preference, target) for target, preference in kept]
        return self._domain_state(hosts), hosts, len(records), capped

    def _domain_state(self, hosts: list[MxHost]) -> str:
        # A temporary failure first: until it clears, the picture is incomplete.
        for host in hosts:
            if host.state in TEMPORARY_STATES:
                return host.state
        if any(host.state in MISCONFIGURED_HOST_STATES for host in hosts):
            return "misconfigured"
        return "ok"

    def _host(self, preference: int, name: dns.name.Name, implicit: bool = False) -> MxHost:
        shown, unicode = name_text(name), name_unicode(name)
        what = "the domain" if implicit else f"MX {preference} {shown}"
        if name == dns.name.root:
            self.notes.append("a null MX (MX 0 .) next to other MX records: RFC 7505 forbids "
                              "the mix; senders may ignore either")
            return MxHost(preference, ".", ".", "null_mx")
        if is_ip_literal(name):
            self.notes.append(f"{what}: the target is an IP address, not a host name; senders "
                              "do not use it (Postfix: 'numeric domain name in resource data "
                              "of MX record')")
            return MxHost(preference, shown, unicode, "ip_literal")

        answers = {family: self.ask(name, _FAMILY_QUESTIONS[family])
                   for family in self.options.families}
        found: dict[str, list[str]] = {
            family: sorted(set(answer.records), key=_address_order)
            for family, answer in answers.items() if answer.state == "ok"}
        addresses = _interleave(found, self.options.families)
        kept = tuple(addresses[:self.options.max_addresses_per_host])
        canonical = next((a.canonical_name for a in answers.values()
                          if a.cnames and a.canonical_name), "")
        state = _host_state(answers.values(), kept, canonical)
        capped = len(addresses) > len(kept)
        if capped:
            self.notes.append(
                f"{what}: {len(addresses)} addresses, probing {len(kept)} "
                f"(max_addresses_per_host {self.options.max_addresses_per_host})")
        self._note_host(what, shown, state, answers.values(), canonical, implicit)
        return MxHost(preference=preference, name=shown, unicode_name=unicode, state=state,
                      addresses=kept, capped=capped, address_count=len(addresses),
                      implicit=implicit, canonical_name=canonical)

    def _note_host(self, what: str, shown: str, state: str, answers: Iterable[Answer],
                   canonical: str, implicit: bool) -> None:
        families = " or ".join(_FAMILY_QUESTIONS[f] for f in self.options.families)
        if canonical and not implicit:
            self.notes.append(f"{what} is an alias of {canonical} (CNAME): RFC 2181 10.3 says "
                              "an MX must name a host, not an alias; most senders follow it")
        if state == "nxdomain":
            self.notes.append(f"{what}: {shown} does not exist (NXDOMAIN)")
        elif state == "no_address":
            self.notes.append(f"{what}: {shown} has no {families} records")
        for answer in answers:
            if not answer.is_answer:
                self.notes.append(f"{answer.rdtype} {answer.name}: {answer.detail}")


def _host_state(answers: Iterable[Answer], addresses: tuple[Address, ...], canonical: str) -> str:
    answers = list(answers)
    if any(a.state == "nxdomain" for a in answers):
        return "nxdomain"
    for answer in answers:
        if not answer.is_answer:
            return answer.state
    if not addresses:
        return "no_address"
    return "cname" if canonical else "ok"


@functools.lru_cache(maxsize=16384)  # the same addresses at every probe; ipaddress is pure Python
def _address_order(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _interleave(found: dict[str, list[str]], families: tuple[str, ...]) -> list[Address]:
    """Addresses alternating between families (IPv6 first), so that a cap keeps both."""
    columns = [[Address(family, ip) for ip in found.get(family, [])] for family in families]
    return [address for row in itertools.zip_longest(*columns) for address in row if address]
