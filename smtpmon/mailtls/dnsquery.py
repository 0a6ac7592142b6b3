"""Questions to the one validating resolver whose AD bit smtpmon trusts, cached by TTL.

DANE rests on DNSSEC, and smtpmon does not validate signatures itself: like Postfix with
`smtp_dns_support_level = dnssec`, it asks a validating resolver named in the configuration
and trusts the AD (authenticated data) bit of its answers. The question goes to that one
resolver and no other: a fallback to a second, non-validating nameserver would turn every
"insecure" verdict into a lie. That is also why this module sends its own queries (dnspython's
message and query layers) instead of a `dns.resolver.Resolver`, which moves on to the next
nameserver on SERVFAIL, hides the rcode and the flags of a failed answer, and cannot tell a
bogus answer (SERVFAIL, data visible with CD) from a resolver that cannot reach anyone.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

# What a question can come to. "answer": records of the type asked; "nodata": the name exists
# without them; "nxdomain": no such name; "servfail": the resolver gave up (for a validating
# resolver, often a validation failure); "timeout": no answer in time; "error": anything else
# (REFUSED, a malformed answer, a socket error).
ANSWER_STATUSES = ("answer", "nodata", "nxdomain", "servfail", "timeout", "error")

# The EDNS buffer size of DNS Flag Day 2020: larger answers come over TCP.
EDNS_PAYLOAD = 1232
# A negative answer without an SOA (a resolver may strip it) is kept this long.
DEFAULT_NEGATIVE_TTL = 60


@dataclass(frozen=True)
class ValidatingResolver:
    """The DNSSEC-validating resolver whose AD bit is trusted: an IP address and a port."""

    address: str
    port: int = 53
    timeout: float = 5.0  # per question, within the caller's deadline


@dataclass(frozen=True)
class DnsAnswer:
    qname: str  # as asked, absolute, lower case
    rdtype: str  # "TLSA", "TXT", "A", ...
    status: str  # one of ANSWER_STATUSES
    secure: bool  # the AD bit: the resolver validated the whole answer
    records: tuple  # dnspython rdata of the type asked (immutable), in the order received
    ttl: int  # seconds the answer may be kept (negative answers: the SOA's minimum)
    checking_disabled: bool = False  # asked with CD: the resolver did not validate
    from_cache: bool = False
    detail: str = ""  # for the transcript and the status page


def absolute(name: str) -> str:
    """`name` as an absolute, lower-case DNS name in presentation form (IDNA A-labels).
    ValueError for a name DNS cannot carry: names are the caller's to validate (domains from
    the configuration, MX hosts from DNS answers), so this is a programming error, not a
    network outcome."""
    try:
        return dns.name.from_text(name).to_text().lower()
    except (dns.exception.DNSException, UnicodeError) as error:
        raise ValueError(f"{name!r} is not a DNS name: {error}") from None


def ask(
    resolver: ValidatingResolver,
    qname: str,
    rdtype: str,
    *,
    deadline: float,
    checking_disabled: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> DnsAnswer:
    """One question with the DO bit (and CD when asked), over UDP with TCP on truncation;
    never raises for anything the network or the resolver does (see `absolute` for names)."""
    qname = absolute(qname)
    query = dns.message.make_query(qname, rdtype, use_edns=0, want_dnssec=True, payload=EDNS_PAYLOAD)
    if checking_disabled:
        query.flags |= dns.flags.CD

    def failed(status: str, detail: str) -> DnsAnswer:
        return DnsAnswer(qname, rdtype, status, False, (), 0, checking_disabled, detail=detail)

    where = f"{resolver.address}#{resolver.port}"
    try:
        left = min(deadline - clock(), resolver.timeout)
        if left <= 0:
            return failed("timeout", f"no time left to ask {where} for {qname} {rdtype}")
        try:
            response = dns.query.udp(query, resolver.address, timeout=left, port=resolver.port,
                                     raise_on_truncation=True)
        except dns.message.Truncated:
            left = min(deadline - clock(), resolver.timeout)
            if left <= 0:
                return failed("timeout", f"no time left for TCP after a truncated answer from {where}")
            response = dns.query.tcp(query, resolver.address, timeout=left, port=resolver.port)
    except dns.exception.Timeout:
        return failed("timeout", f"{where} did not answer {qname} {rdtype} in time")
    except (OSError, dns.exception.DNSException, ValueError) as error:
        return failed("error", f"asking {where} for {qname} {rdtype} failed: {error}")
    return _read(response, qname, rdtype, checking_disabled)


def _read(response: dns.message.Message, qname: str, rdtype: str, checking_disabled: bool) -> DnsAnswer:
    secure = bool(response.flags & dns.flags.AD)
    rcode = response.rcode()
    wanted = dns.rdatatype.from_text(rdtype)
    if rcode == dns.rcode.NOERROR:
        rrsets = [rrset for rrset in response.answer if rrset.rdtype == wanted]
        if rrsets:
            records = tuple(rdata for rrset in rrsets for rdata in rrset)
            ttl = min(rrset.ttl for rrset in response.answer)  # CNAMEs on the way count too
            return DnsAnswer(qname, rdtype, "answer", secure, records, ttl, checking_disabled)
        return DnsAnswer(qname, rdtype, "nodata", secure, (), _negative_ttl(response), checking_disabled,
                         detail=f"{qname} has no {rdtype} records")
    if rcode == dns.rcode.NXDOMAIN:
        return DnsAnswer(qname, rdtype, "nxdomain", secure, (), _negative_ttl(response), checking_disabled,
                         detail=f"{qname} does not exist")
    status = "servfail" if rcode == dns.rcode.SERVFAIL else "error"
    return DnsAnswer(qname, rdtype, status, False, (), 0, checking_disabled,
                     detail=f"the resolver answered {dns.rcode.to_text(rcode)} for {qname} {rdtype}")


def _negative_ttl(response: dns.message.Message) -> int:
    """RFC 2308 5: the SOA's TTL or its minimum field, whichever is lower."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return min(rrset.ttl, rrset[0].minimum)
    return DEFAULT_NEGATIVE_TTL


class AnswerCache:
    """Answers by (resolver, name, type, CD), kept for their TTL bounded to [min_ttl, max_ttl].

    A SERVFAIL is kept for `failure_ttl` (the resolver keeps a bogus answer itself, and asking
    again at every probe of every address would only multiply the traffic); a timeout or an
    error is not kept, so the next probe asks again. Safe to share between threads.
    """

    def __init__(self, *, min_ttl: int = 5, max_ttl: int = 3600, failure_ttl: int = 30,
                 max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._failure_ttl = failure_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[tuple, tuple[float, DnsAnswer]] = {}
        self._lock = threading.Lock()
        self.questions_sent = 0  # for the benchmark's queries-per-minute figure

    def ask(self, resolver: ValidatingResolver, qname: str, rdtype: str, *, deadline: float,
            checking_disabled: bool = False) -> DnsAnswer:
        key = (resolver, absolute(qname), rdtype, checking_disabled)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                return dataclasses.replace(entry[1], from_cache=True)
        answer = ask(resolver, qname, rdtype, deadline=deadline, checking_disabled=checking_disabled,
                     clock=self._clock)
        keep = self._keep_seconds(answer)
        with self._lock:
            self.questions_sent += 1
            if keep > 0:
                self._entries.pop(key, None)
                self._entries[key] = (self._clock() + keep, answer)
                if len(self._entries) > self._max_entries:
                    del self._entries[next(iter(self._entries))]  # the oldest
        return answer

    def _keep_seconds(self, answer: DnsAnswer) -> float:
        if answer.status in ("answer", "nodata", "nxdomain"):
            return max(self._min_ttl, min(answer.ttl, self._max_ttl))
        if answer.status == "servfail":
            return self._failure_ttl
        return 0
