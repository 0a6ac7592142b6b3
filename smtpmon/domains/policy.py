"""A mail domain's TLS policy checked as senders check it, around the SMTP sessions of
probe_domain: DANE (RFC 7672) per MX host and address, MTA-STS (RFC 8461) per domain and
address, TLS-RPT (RFC 8460) per domain.

Two steps, because the sessions sit between them:
1. `PolicyChecker.look_up(...)` before the sessions (blocking DNS and HTTPS: the lookup pool
   runs it): the MX answer's DNSSEC status and each MX host's TLSA records from the
   validating resolver, the `_mta-sts` record and policy (cached by max_age, refetched when
   the id changes), the `_smtp._tls` record. Its `wants_chain(host)` tells which sessions
   must read the presented chain (only those of hosts DANE applies to: every other session,
   and every host target, pays nothing).
2. `judge(lookups, probes)` after them: a DANE verdict and an MTA-STS verdict per address.

Plain values out (`DomainPolicy`); the checker keeps the caches (one DNS cache with the MX
resolution, one MTA-STS policy cache per CA file) between probes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from smtpmon.dns import DnsCache, MxHost, Resolver
from smtpmon.dns.cached import CachedResolver
from smtpmon.mailtls import tlsrpt
from smtpmon.mailtls.dane import (
    DANE_VERDICTS,
    DaneCheck,
    TlsaLookup,
    check_address,
    lookup_tlsa,
    mx_secure,
)
from smtpmon.mailtls.mtasts import STS_MX_VERDICTS, MtaSts, StsMxCheck, StsResult, check_mx
from smtpmon.mailtls.tlsrpt import TlsRptRecord

# Per MX address, DANE: dane.DANE_VERDICTS, and "no_session" when the session ended before
# EHLO (refused, timed out): nothing was presented to judge; the session's failure says why.
NO_SESSION = "no_session"
ADDRESS_DANE_VERDICTS: tuple[str, ...] = DANE_VERDICTS + (NO_SESSION,)
ADDRESS_STS_VERDICTS: tuple[str, ...] = STS_MX_VERDICTS + (NO_SESSION,)
# DANE verdicts after which DANE-validating senders defer all mail to the address.
DANE_FAILURES = ("mismatch", "starttls_missing", "bogus", "lookup_failed")


@dataclass(frozen=True, slots=True)
class PolicySwitches:
    """What one domain entry checks. `mta_sts_ca_file`: CAs trusted for the policy fetch
    beside the system's (for a private CA)."""

    dane: bool = False
    mta_sts: bool = False
    mta_sts_ca_file: str | None = None

    @property
    def any(self) -> bool:
        return self.dane or self.mta_sts


def judgeable_switches(module, *, dane: bool, mta_sts: bool,
                       mta_sts_ca_file: str | None = None) -> PolicySwitches:
    """The switches asked for, less what `module`'s sessions cannot judge: DANE needs a
    session that starts TLS, MTA-STS one that also verifies certificates."""
    starts_tls = module.tls != "none"
    return PolicySwitches(dane=dane and starts_tls, mta_sts=mta_sts and starts_tls and module.tls_verify,
                          mta_sts_ca_file=mta_sts_ca_file)


@dataclass(frozen=True, slots=True)
class PolicyLookups:
    """What DNS (and HTTPS) said before the sessions."""

    switches: PolicySwitches
    mx_lookup_state: str  # the validating resolver's MX answer: dns LOOKUP_STATES, "" without DANE
    mx_secure: bool
    tlsa: tuple[TlsaLookup, ...]  # one per MX host, in MX order (empty without DANE)
    sts: StsResult | None
    tlsrpt: TlsRptRecord | None
    duration_seconds: float = 0.0

    def tlsa_of(self, mx_host: str) -> TlsaLookup | None:
        host = mx_host.rstrip(".").lower()
        return next((lookup for lookup in self.tlsa if lookup.mx_host == host), None)

    def wants_chain(self, mx_host: str) -> bool:
        lookup = self.tlsa_of(mx_host)
        return lookup is not None and lookup.dane_applies


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    mx_host: str
    address: str
    dane: str  # dane.DANE_VERDICTS or NO_SESSION; "not_applicable" without DANE
    dane_check: DaneCheck | None
    sts: StsMxCheck | None  # None without MTA-STS
    pkix_valid: bool  # the address presented a certificate PKIX-valid for the MX host


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    lookups: PolicyLookups
    addresses: tuple[AddressPolicy, ...]

    def address(self, mx_host: str, ip: str) -> AddressPolicy | None:
        return next((a for a in self.addresses if a.mx_host == mx_host and a.address == ip), None)


class PolicyChecker:
    """The lookups of every domain's policy: `validating` is the validating resolver alone
    (DANE trusts its AD bit; None: DANE is off), `resolver` the one for MTA-STS and TLS-RPT
    records and the policy host's address (the validating one when configured). Both put
    their answers in the same DnsCache as the MX resolution."""

    def __init__(self, validating: CachedResolver | None, resolver: CachedResolver, *,
                 fetch_timeout_seconds: float = 10.0) -> None:
        self.validating = validating
        self.resolver = resolver
        self._fetch_timeout = fetch_timeout_seconds
        self._sts: dict[str | None, MtaSts] = {}
        self._lock = threading.Lock()

    def sts_checker(self, ca_file: str | None) -> MtaSts:
        with self._lock:
            checker = self._sts.get(ca_file)
            if checker is None:
                checker = self._sts[ca_file] = MtaSts(self.resolver, extra_ca_file=ca_file,
                                                      fetch_timeout=self._fetch_timeout)
            return checker

    @property
    def policy_fetches(self) -> int:
        with self._lock:
            return sum(checker.fetches for checker in self._sts.values())

    def look_up(self, domain: str, hosts: Sequence[MxHost], port: int, switches: PolicySwitches,
                deadline: float, *, cached_only: bool = False) -> PolicyLookups:
        """Never raises for anything DNS or HTTPS does. `cached_only`: from the DNS and policy
        caches alone, so it never waits (a hub's thread may call it); NotCached when anything
        must be asked or fetched: then call it again where waiting is allowed."""
        started = time.monotonic()
        validating, resolver = self.validating, self.resolver
        if cached_only:
            validating = validating and validating.cache_only
            resolver = resolver.cache_only
        mx_state, secure, tlsa = "", False, ()
        if switches.dane and validating is not None:
            answer = mx_secure(validating, domain, deadline=deadline)
            mx_state, secure = answer.state, answer.state == "ok" and answer.authenticated
            tlsa = tuple(lookup_tlsa(validating, host.name, port, mx_is_secure=secure,
                                     deadline=deadline)
                         for host in hosts if host.usable)
        sts = record = None
        if switches.mta_sts:
            sts = self.sts_checker(switches.mta_sts_ca_file).check(domain, deadline=deadline,
                                                                   cached_only=cached_only)
            record = tlsrpt.lookup(resolver, domain, deadline=deadline)
        return PolicyLookups(switches, mx_state, secure, tlsa, sts, record,
                             time.monotonic() - started)


def policy_checker(dns_settings, mx_resolver) -> PolicyChecker:
    """The checker for a configuration's `dns:` (smtpmon.config.domains.DnsSettings): DANE
    asks the validating resolver alone, MTA-STS and TLS-RPT ask it too when there is one
    (else the MX resolver's nameservers); every answer goes into the MX resolver's cache."""
    cache = mx_resolver.cache if mx_resolver.cache is not None else DnsCache()
    validating = None
    if dns_settings.validating_settings is not None:
        if dns_settings.validating_settings.nameservers == mx_resolver.resolver.settings.nameservers:
            validating = CachedResolver(mx_resolver.resolver, cache)
        else:
            validating = CachedResolver(Resolver(dns_settings.validating_settings), cache)
    return PolicyChecker(validating, validating or CachedResolver(mx_resolver.resolver, cache))


def judge(lookups: PolicyLookups, probes: Sequence) -> DomainPolicy:
    """The verdicts per address, from the lookups and each address's session (an
    smtpmon.domains.results.AddressProbe)."""
    addresses = []
    for probe in probes:
        result = probe.result
        offered = result.ehlo is not None and "STARTTLS" in result.ehlo.extensions
        tls = result.tls
        pkix_valid = bool(tls is not None and tls.verified)
        verdict, check = "not_applicable", None
        tlsa = lookups.tlsa_of(probe.mx.name)
        if tlsa is not None:
            if result.ehlo is None and tlsa.dane_applies:
                verdict = NO_SESSION
            else:
                check = check_address(tlsa, starttls_offered=offered,
                                      chain=tls.chain if tls is not None else None)
                verdict = check.verdict
        sts = None
        if lookups.sts is not None:
            if result.ehlo is None and lookups.sts.policy is not None and lookups.sts.policy.covers(probe.mx.name):
                sts = StsMxCheck(NO_SESSION, "none", "the session ended before EHLO")
            else:
                sts = check_mx(lookups.sts, probe.mx.name, starttls_offered=offered,
                               certificate_valid=pkix_valid)
        addresses.append(AddressPolicy(probe.mx.name, probe.address.ip, verdict, check, sts,
                                       pkix_valid))
    return DomainPolicy(lookups, tuple(addresses))


@dataclass(frozen=True, slots=True)
class PolicyFinding:
    """What a domain's TLS policy costs it with the senders that honour it, in words:
    `critical` (they do not deliver to that MX address: a DANE failure, an MX failing an
    enforced MTA-STS policy) or `warning` (an MX failing a testing policy, a policy that
    cannot be fetched). `where` is "mx [address]", or "" for the whole domain."""

    severity: str
    where: str
    words: str

    def __str__(self) -> str:
        return f"{self.where}: {self.words}" if self.where else self.words


def findings(policy: DomainPolicy | None) -> list[PolicyFinding]:
    """The findings of a domain's policy verdicts, worst first; none without a policy. The
    command line's exit code and the status page's state both come from these."""
    if policy is None:
        return []
    found = []
    for address in policy.addresses:
        where = f"{address.mx_host} [{address.address}]"
        if address.dane in DANE_FAILURES:
            found.append(PolicyFinding("critical", where, f"DANE {address.dane}"))
        sts = address.sts
        if sts is not None and sts.severity in ("critical", "warning"):
            found.append(PolicyFinding(sts.severity, where, f"MTA-STS {sts.verdict}"))
    sts = policy.lookups.sts
    if sts is not None and sts.fetch_failing:
        found.append(PolicyFinding("warning", "", f"MTA-STS policy fetch failing ({sts.fetch.error})"))
    found.sort(key=lambda finding: finding.severity != "critical")
    return found
