"""One DNS question at a time (a name and a type), every outcome a value, never an exception.

The questions go to the system resolver (/etc/resolv.conf) by default, or to the nameservers
the configuration names, as (address, port) pairs. dnspython does the protocol work: message
parsing, EDNS, the retry over TCP when a UDP answer is truncated, a per-attempt timeout and an
overall lifetime. What this module adds is the reading of the outcome in a sender's terms:
an answer, NODATA, NXDOMAIN, or one of the temporary failures (servfail, timeout,
bad_response, unreachable), each with a sentence saying what happened.

Blocking (dnspython's sync API): the daemon runs it on the lookup pool's threads.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from smtpmon.dns.names import name_text

# What one question can come to. `ok`, `nodata` and `nxdomain` are answers (cacheable, and
# final for a sender); the rest are temporary failures, after which a sender queues and retries.
ANSWER_STATES: tuple[str, ...] = ("ok", "nodata", "nxdomain")
FAILURE_STATES: tuple[str, ...] = ("servfail", "timeout", "bad_response", "unreachable")
LOOKUP_STATES: tuple[str, ...] = ANSWER_STATES + FAILURE_STATES

QUESTION_TYPES: tuple[str, ...] = ("MX", "A", "AAAA")
EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: larger answers come over TCP, unfragmented


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    """Where questions go and how long they may take.

    `nameservers` empty means the system resolver. `timeout_seconds` bounds one attempt at one
    server; `lifetime_seconds` is the default deadline of a whole domain resolution (several
    questions), used when the caller gives none. Raises ValueError naming the bad field.
    """

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout_seconds: float = 2.0
    lifetime_seconds: float = 5.0

    def __post_init__(self) -> None:
        ports: dict[str, int] = {}
        for entry in self.nameservers:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise ValueError(f"nameservers: {entry!r} is not an (address, port) pair")
            address, port = entry
            try:
                ip = str(ipaddress.ip_address(address))
            except ValueError:
                raise ValueError(f"nameservers: {address!r} is not an IP address") from None
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"nameservers: port {port!r} of {address} is not 1-65535")
            # dnspython 2.3 keeps one port per server address (Resolver.nameserver_ports).
            if ports.setdefault(ip, port) != port:
                raise ValueError(f"nameservers: {ip} is named with two ports ({ports[ip]}, {port})")
        for name in ("timeout_seconds", "lifetime_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}: {value!r} is not a positive number of seconds")

    def describe(self) -> str:
        if not self.nameservers:
            return "the system resolver"
        return ", ".join(_server_text(ip, port) for ip, port in self.nameservers)


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one question.

    `records` holds the answer's data: `(preference, target)` pairs for MX (target as a
    dns.name.Name, the root for a null MX), address strings for A and AAAA. `canonical_name`
    is the name the data belongs to after CNAMEs (== `name` without one). `ttl_seconds` is how
    long the outcome may be reused: the answer's TTL (the smallest along a CNAME chain), the
    negative TTL from the SOA for NODATA and NXDOMAIN, 0 for a failure; a cached answer shows
    what is left of it. `detail` says in a sentence what a failure was, or what is odd about
    an answer. A stale answer is a cached good answer served after `failed_state` happened.
    """

    name: str
    rdtype: str
    state: str
    records: tuple = ()
    canonical_name: str = ""
    ttl_seconds: float = 0.0
    detail: str = ""
    duration_seconds: float = 0.0
    from_cache: bool = False
    stale: bool = False
    failed_state: str = ""
    cnames: tuple[str, ...] = field(default=())  # the aliases followed, in order

    @property
    def is_answer(self) -> bool:
        """An answer from DNS (records, NODATA or NXDOMAIN), not a failure to get one."""
        return self.state in ANSWER_STATES


class Resolver:
    """Asks questions as `settings` say; safe to share between threads (each question is its
    own dnspython resolution; the configuration is not changed after set-up)."""

    def __init__(self, settings: ResolverSettings) -> None:
        self.settings = settings
        self._resolver: dns.resolver.Resolver | None = None
        self._setup_error = ""
        self._count_lock = threading.Lock()
        self._queries_sent = 0
        try:
            self._resolver = _make_resolver(settings)
        except (dns.exception.DNSException, OSError, ValueError) as error:
            # No /etc/resolv.conf, or no nameserver in it: every question says so.
            self._setup_error = f"no nameserver to ask: {error}"

    @property
    def queries_sent(self) -> int:
        """Questions handed to dnspython so far (its retries and TCP fallback not counted
        again): with a cache in front, the DNS queries a benchmark sees per minute."""
        with self._count_lock:
            return self._queries_sent

    def query(self, name: dns.name.Name, rdtype: str, deadline: float) -> Answer:
        """Ask for `rdtype` records of the absolute `name`, giving up at the monotonic
        `deadline`. Never raises."""
        shown = name_text(name)
        if self._resolver is None:
            return Answer(shown, rdtype, "unreachable", detail=self._setup_error)
        left = deadline - time.monotonic()
        if left <= 0:
            return Answer(shown, rdtype, "timeout", detail="no time left before the deadline")
        with self._count_lock:
            self._queries_sent += 1
        started = time.monotonic()
        answer = self._ask(name, rdtype, left)
        return _with_duration(answer, time.monotonic() - started)

    def _ask(self, name: dns.name.Name, rdtype: str, lifetime: float) -> Answer:
        shown = name_text(name)
        assert self._resolver is not None
        try:
            result = self._resolver.resolve(
                name, rdtype, search=False, raise_on_no_answer=False, lifetime=lifetime)
        except dns.resolver.NXDOMAIN as error:
            return _nxdomain(shown, rdtype, error)
        except dns.exception.Timeout as error:
            return _timeout(shown, rdtype, error, lifetime)
        except dns.resolver.NoNameservers as error:
            return _no_nameservers(shown, rdtype, error)
        except dns.resolver.YXDOMAIN:
            return Answer(shown, rdtype, "bad_response",
                          detail="a DNAME made the name longer than DNS allows (YXDOMAIN)")
        except Exception as error:  # dnspython's own surprises become a failed question
            return Answer(shown, rdtype, "bad_response",
                          detail=f"the answer could not be read: {_error_text(error)}")
        return _from_answer(shown, rdtype, result)


def _make_resolver(settings: ResolverSettings) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=not settings.nameservers)
    if settings.nameservers:
        resolver.nameservers = [str(ipaddress.ip_address(ip)) for ip, _ in settings.nameservers]
        resolver.nameserver_ports = {
            str(ipaddress.ip_address(ip)): port for ip, port in settings.nameservers}
    resolver.timeout = settings.timeout_seconds
    resolver.lifetime = settings.lifetime_seconds
    resolver.use_edns(0, 0, EDNS_PAYLOAD)
    resolver.cache = None  # smtpmon.dns.cache keeps answers, with bounds and a grace time
    resolver.retry_servfail = False  # a SERVFAIL is an answer to report, not to hide
    resolver.search = []
    resolver.use_search_by_default = False
    return resolver


def _from_answer(shown: str, rdtype: str, result: dns.resolver.Answer) -> Answer:
    response = result.response
    chain = response.resolve_chaining()
    cnames = tuple(name_text(rrset.name) for rrset in chain.cnames)
    common = dict(canonical_name=name_text(chain.canonical_name),
                  ttl_seconds=float(chain.minimum_ttl), cnames=cnames)
    if result.rrset is None:
        if _is_referral(response):
            servers = ", ".join(sorted(name_text(rrset.name) for rrset in response.authority
                                       if rrset.rdtype == dns.rdatatype.NS))
            return Answer(shown, rdtype, "servfail",
                          detail=(f"{_server_text(result.nameserver, result.port)} answered "
                                  f"with a referral to the nameservers of {servers} instead of "
                                  "an answer: it does not resolve recursively"))
        return Answer(shown, rdtype, "nodata", **common)
    if rdtype == "MX":
        records: tuple = tuple((rdata.preference, rdata.exchange) for rdata in result.rrset)
    else:
        records = tuple(rdata.address for rdata in result.rrset)
    return Answer(shown, rdtype, "ok", records=records, **common)


def _is_referral(response: dns.message.Message) -> bool:
    """A 'go ask them' answer: an authoritative server's delegation (NS records in the
    authority section, no SOA, not authoritative itself), which a recursive resolver would
    have followed. dnspython takes it for NODATA; a sender's resolver would not."""
    if response.flags & dns.flags.AA:
        return False
    kinds = {rrset.rdtype for rrset in response.authority}
    return dns.rdatatype.NS in kinds and dns.rdatatype.SOA not in kinds


def _nxdomain(shown: str, rdtype: str, error: dns.resolver.NXDOMAIN) -> Answer:
    ttl, canonical, cnames = 0.0, shown, ()
    try:
        response = error.response(error.qnames()[0])
        chain = response.resolve_chaining()
        ttl, canonical = float(chain.minimum_ttl), name_text(chain.canonical_name)
        cnames = tuple(name_text(rrset.name) for rrset in chain.cnames)
    except Exception:  # a response without a usable SOA: not cached beyond the lower bound
        pass
    detail = f"{shown} is an alias of {canonical}, which does not exist" if cnames else ""
    return Answer(shown, rdtype, "nxdomain", canonical_name=canonical, ttl_seconds=ttl,
                  detail=detail, cnames=cnames)


def _timeout(shown: str, rdtype: str, error: dns.exception.Timeout, lifetime: float) -> Answer:
    errors = error.kwargs.get("errors") or []
    broken = [entry for entry in errors if not isinstance(entry[3], dns.exception.Timeout)]
    if broken:  # the server kept answering, with something that could not be used
        return Answer(shown, rdtype, "bad_response",
                      detail="no usable answer before the deadline: " + _errors_text(broken))
    return Answer(shown, rdtype, "timeout",
                  detail=f"no answer within {lifetime:.2f} s{_servers_tried(errors)}")


def _no_nameservers(shown: str, rdtype: str, error: dns.resolver.NoNameservers) -> Answer:
    """Every server was given up on. SERVFAIL (or another error code) from any of them makes
    it a servfail; otherwise what went wrong with the answers decides."""
    errors = error.kwargs.get("errors") or []
    coded = [entry for entry in errors
             if entry[4] is not None and entry[4].rcode() != dns.rcode.NOERROR]
    if coded:
        return Answer(shown, rdtype, "servfail", detail=_errors_text(coded))
    if errors and all(isinstance(entry[3], OSError) for entry in errors):
        return Answer(shown, rdtype, "unreachable", detail=_errors_text(errors))
    return Answer(shown, rdtype, "bad_response",
                  detail=_errors_text(errors) or "no nameserver gave a usable answer")


def _errors_text(errors: Iterable[tuple]) -> str:
    texts: list[str] = []
    for server, tcp, port, error, response in errors:
        where = f"{_server_text(server, port)} over {'TCP' if tcp else 'UDP'}"
        if response is not None and response.rcode() != dns.rcode.NOERROR:
            what = f"answered {dns.rcode.to_text(response.rcode())}"
        elif isinstance(error, dns.message.Truncated):
            what = "answered truncated (TC) even over TCP" if tcp else "answered truncated"
        elif isinstance(error, ConnectionRefusedError):
            what = "refused the connection (nothing listens there)"
        else:
            what = f"answered something unusable ({_error_text(error)})"
        text = f"{where} {what}"
        if text not in texts:
            texts.append(text)
    return "; ".join(texts)


def _servers_tried(errors: Iterable[tuple]) -> str:
    servers = sorted({_server_text(entry[0], entry[2]) for entry in errors})
    return f" from {', '.join(servers)}" if servers else ""


def _error_text(error: object) -> str:
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text and text != name else name


def _server_text(address: object, port: object) -> str:
    text = str(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _with_duration(answer: Answer, seconds: float) -> Answer:
    return replace(answer, duration_seconds=seconds)
