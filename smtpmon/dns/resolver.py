"""One DNS question at a time (a name and a type), every outcome a value, never an exception.

The questions go to the nameservers of the system resolver (/etc/resolv.conf) by default, or
to the nameservers the configuration names, as (address, port) pairs. dnspython does the
protocol work: building and parsing messages, EDNS, the retry over TCP when a UDP answer is
truncated; except that the plain answers to MX, A, AAAA, TLSA and TXT questions (with DNSSEC
or without), nearly every answer a domain probe gets, are read by smtpmon.dns.wire, which
leaves anything else to dnspython and agrees with it wherever it answers (parsing was most of
a refreshed resolution's CPU). This module keeps the deadline and reads the outcome in a
sender's terms: an answer, NODATA, NXDOMAIN, or one of the temporary failures (servfail,
timeout, bad_response, unreachable), each with a sentence saying what happened.

Blocking (dnspython's sync API): the daemon runs it on the lookup pool's threads.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import dns.entropy
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from smtpmon.dns import wire
from smtpmon.dns.names import name_text

# What one question can come to. `ok`, `nodata` and `nxdomain` are answers (cacheable, and
# final for a sender); the rest are temporary failures, after which a sender queues and retries.
ANSWER_STATES: tuple[str, ...] = ("ok", "nodata", "nxdomain")
FAILURE_STATES: tuple[str, ...] = ("servfail", "timeout", "bad_response", "unreachable")
LOOKUP_STATES: tuple[str, ...] = ANSWER_STATES + FAILURE_STATES

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: larger answers come over TCP, unfragmented
# A question gets this many attempts at each server (within the resolution's deadline), so
# that one silent question cannot use up the time of the questions after it.
ATTEMPTS_PER_SERVER = 2
FIRST_PAUSE_SECONDS = 0.05  # between rounds over servers that all timed out, doubling
MAX_PAUSE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    """Where questions go and how long they may take.

    `nameservers` empty means the system resolver. `timeout_seconds` bounds one attempt at one
    server, and a question gets ATTEMPTS_PER_SERVER attempts at each; `lifetime_seconds` is the
    default deadline of a whole domain resolution (several questions), used when the caller
    gives none. Raises ValueError naming the bad field.
    """

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout_seconds: float = 2.0
    lifetime_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.nameservers, tuple):
            raise ValueError(f"nameservers: {self.nameservers!r} is not a tuple of "
                             "(address, port) pairs")
        for entry in self.nameservers:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise ValueError(f"nameservers: {entry!r} is not an (address, port) pair")
            address, port = entry
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"nameservers: {address!r} is not an IP address") from None
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"nameservers: port {port!r} of {address} is not 1-65535")
        for name in ("timeout_seconds", "lifetime_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}: {value!r} is not a positive number of seconds")


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
    # For DNSSEC questions (`dnssec=True`): the AD bit of the answer, i.e. the resolver
    # validated it (trusted only from a validating resolver, see docs/mail-tls-policy.md);
    # whether it was asked with CD (checking disabled: the data as served, unvalidated); and
    # the rcode of the answer that decided ("" when no server answered).
    authenticated: bool = False
    checking_disabled: bool = False
    rcode: str = ""

    @property
    def is_answer(self) -> bool:
        """An answer from DNS (records, NODATA or NXDOMAIN), not a failure to get one."""
        return self.state in ANSWER_STATES


class _Failure(NamedTuple):
    state: str  # one of FAILURE_STATES
    what: str  # what the server did, for the detail
    drop: bool  # whether to stop asking this server
    rcode: str = ""  # the failure rcode it answered, if it answered one


class Resolver:
    """Asks questions as `settings` say; safe to share between threads (nothing changes
    after set-up but a counter).

    dnspython's Resolver.resolve() is not used for the asking: in 2.3 it sleeps a back-off of
    up to 2 s between rounds without looking at the lifetime, so a server that answers junk
    at once holds a question up to 2 s past its deadline. The loop here is the same (each
    server in turn, round after round; a server that fails for good is dropped) with every
    wait cut at the deadline; dnspython still builds, sends and reads the messages (but for
    the plain MX, A, AAAA, TLSA and TXT answers: smtpmon.dns.wire), and the retry over TCP
    of a truncated UDP answer is made here, in what is left of the attempt's time
    (dns.query.udp_with_fallback would give TCP a whole timeout of its own).
    """

    def __init__(self, settings: ResolverSettings) -> None:
        self.settings = settings
        self._count_lock = threading.Lock()
        self._queries_sent = 0
        self._setup_error = ""
        self._servers: tuple[tuple[str, int], ...] = ()
        if settings.nameservers:
            self._servers = tuple((str(ipaddress.ip_address(ip)), port)
                                  for ip, port in settings.nameservers)
            return
        try:
            system = dns.resolver.Resolver(configure=True)
            self._servers = tuple((ip, system.nameserver_ports.get(ip, system.port))
                                  for ip in system.nameservers if _is_ip(ip))
        except (dns.exception.DNSException, OSError, ValueError) as error:
            self._setup_error = f"no nameserver to ask: {error}"
            return
        if not self._servers:
            self._setup_error = "no nameserver to ask: /etc/resolv.conf names none"

    @property
    def queries_sent(self) -> int:
        """Questions asked so far (one per call that had time to ask; the retries and the
        TCP fallback of one question are not counted again): with a cache in front, the DNS
        queries a benchmark sees per minute."""
        with self._count_lock:
            return self._queries_sent

    def query(self, name: dns.name.Name, rdtype: str, deadline: float, *,
              dnssec: bool = False, checking_disabled: bool = False) -> Answer:
        """Ask for `rdtype` records of the absolute `name`, giving up at the monotonic
        `deadline`. Never raises. `dnssec` sets the DO bit (the answer's AD bit is then read
        into `authenticated`); `checking_disabled` sets CD, so that a validating resolver
        answers the data even when its validation fails (how DANE tells a bogus zone from a
        resolver that cannot reach anyone)."""
        shown = name_text(name)
        if self._setup_error:
            return Answer(shown, rdtype, "unreachable", detail=self._setup_error)
        if deadline <= time.monotonic():
            return Answer(shown, rdtype, "timeout", detail="no time left before the deadline")
        with self._count_lock:
            self._queries_sent += 1
        started = time.monotonic()
        budget = self.settings.timeout_seconds * ATTEMPTS_PER_SERVER * len(self._servers)
        answer = self._ask(name, rdtype, min(deadline, started + budget), dnssec,
                           checking_disabled)
        return replace(answer, duration_seconds=time.monotonic() - started,
                       checking_disabled=checking_disabled)

    def _ask(self, name: dns.name.Name, rdtype: str, deadline: float, dnssec: bool,
             checking_disabled: bool) -> Answer:
        shown = name_text(name)
        query: dns.message.Message | _PlainQuery
        if rdtype in wire.TYPES and name.is_absolute():
            query = _PlainQuery(name, rdtype, dnssec, checking_disabled)
        else:
            query = _message(name, rdtype, dnssec, checking_disabled)
        servers = list(self._servers)
        failures: dict[str, list[str]] = {}  # state -> what each server did
        rcode = ""  # of the last server that answered with a failure rcode
        pause = FIRST_PAUSE_SECONDS
        while servers:
            for server in list(servers):
                if deadline <= time.monotonic():
                    return _gave_up(shown, rdtype, failures, final=False, rcode=rcode)
                outcome = self._ask_server(query, shown, rdtype, server, deadline)
                if isinstance(outcome, Answer):
                    return outcome
                state, what, drop, failed_rcode = outcome
                rcode = failed_rcode or rcode
                failures.setdefault(state, [])
                if what not in failures[state]:
                    failures[state].append(what)
                if drop:
                    servers.remove(server)
            if servers:  # every server left timed out: a short pause, then another round
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(pause * 2, MAX_PAUSE_SECONDS)
        return _gave_up(shown, rdtype, failures, final=True, rcode=rcode)

    def _ask_server(self, query: dns.message.Message | _PlainQuery, shown: str, rdtype: str,
                    server: tuple[str, int], deadline: float) -> Answer | _Failure:
        """The answer, or what failed (with whether to stop asking this server)."""
        ip, port = server
        where = _server_text(ip, port)
        tcp = False
        timeout = min(self.settings.timeout_seconds, deadline - time.monotonic())
        try:
            try:
                if isinstance(query, _PlainQuery):
                    response = _plain_udp(query, ip, port, timeout)
                    if isinstance(response, wire.WireAnswer):
                        return _from_wire_answer(shown, rdtype, response)
                else:
                    response = dns.query.udp(query, ip, timeout=timeout, port=port,
                                             raise_on_truncation=True)
            except dns.message.Truncated:
                # Asked again over TCP, in what is left of the same attempt's time.
                tcp = True
                timeout = min(self.settings.timeout_seconds, deadline - time.monotonic())
                if timeout <= 0:
                    raise dns.exception.Timeout() from None
                message = query.message() if isinstance(query, _PlainQuery) else query
                response = dns.query.tcp(message, ip, timeout=timeout, port=port)
        except dns.exception.Timeout:
            over = " over TCP" if tcp else ""
            return _Failure("timeout", f"{where} did not answer{over} within {max(timeout, 0):.2f} s", False)
        except ConnectionRefusedError:  # only TCP learns it: UDP sockets are not connected
            return _Failure("unreachable", (f"{where} answered truncated over UDP and refused the TCP "
                                            "connection to ask again (is TCP port 53 blocked?)"), True)
        except OSError as error:
            return _Failure("unreachable", f"{where} cannot be reached ({_error_text(error)})", True)
        except Exception as error:  # anything dnspython could not read
            return _Failure("bad_response", f"{where} answered something unusable ({_error_text(error)})", True)
        return _judge_response(response, f"{where} over {'TCP' if tcp else 'UDP'}", shown, rdtype)


def _judge_response(response: dns.message.Message, where: str, shown: str,
                    rdtype: str) -> Answer | _Failure:
    """What a parsed response to the question comes to (`where`: the server, for the detail)."""
    if response.flags & dns.flags.TC:
        return _Failure("bad_response", f"{where} answered truncated (TC) even over TCP", True)
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return _Failure("servfail", f"{where} answered {dns.rcode.to_text(rcode)}", True,
                        dns.rcode.to_text(rcode))
    if rcode == dns.rcode.NOERROR and _is_referral(response):
        servers = ", ".join(sorted({name_text(rrset.name) for rrset in response.authority
                                    if rrset.rdtype == dns.rdatatype.NS}))
        return _Failure("servfail", (f"{where} answered with a referral to the nameservers of "
                                     f"{servers} instead of an answer: it does not resolve "
                                     "recursively"), True)
    try:
        return _from_response(shown, rdtype, response)
    except Exception as error:  # an answer that contradicts itself
        return _Failure("bad_response", f"{where} answered something unusable ({_error_text(error)})", True)


class _PlainQuery:
    """An MX, A, AAAA, TLSA or TXT question: its octets built directly (smtpmon.dns.wire),
    the dnspython message only when needed (a response that wire.read_answer leaves to
    dnspython, the retry over TCP), with the same ID and flags."""

    __slots__ = ("name", "rdtype", "dnssec", "checking_disabled", "id", "wire", "_message")

    def __init__(self, name: dns.name.Name, rdtype: str, dnssec: bool = False,
                 checking_disabled: bool = False) -> None:
        self.name = name
        self.rdtype = rdtype
        self.dnssec = dnssec
        self.checking_disabled = checking_disabled
        self.id = dns.entropy.random_16()  # as dnspython draws a query's ID
        self.wire = wire.query_wire(name, rdtype, self.id, EDNS_PAYLOAD, dnssec=dnssec,
                                    checking_disabled=checking_disabled)
        self._message: dns.message.Message | None = None

    def message(self) -> dns.message.Message:
        if self._message is None:
            self._message = _message(self.name, self.rdtype, self.dnssec, self.checking_disabled,
                                     self.id)
        return self._message


def _message(name: dns.name.Name, rdtype: str, dnssec: bool, checking_disabled: bool,
             query_id: int | None = None) -> dns.message.Message:
    """dnspython's query: EDNS with EDNS_PAYLOAD, the DO bit for `dnssec`, CD when asked."""
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD,
                                   want_dnssec=dnssec, id=query_id)
    if checking_disabled:
        query.flags |= dns.flags.CD
    return query


def _plain_udp(query: _PlainQuery, ip: str, port: int,
               timeout: float) -> wire.WireAnswer | dns.message.Message:
    """dns.query.udp(query, ip, port=port, timeout=timeout, raise_on_truncation=True), with
    the same exceptions, but the response read by wire.read_answer when it is a plain one;
    else parsed and checked as dns.query.udp does (dns.message.from_wire, the source address,
    is_response)."""
    family = dns.inet.af_for_address(ip)
    destination = dns.inet.low_level_address_tuple((ip, port), family)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(max(timeout, 1e-6))
        try:
            sock.sendto(query.wire, destination)
            octets, source = sock.recvfrom(65535)
        except TimeoutError:
            raise dns.exception.Timeout() from None
    if not _from_destination(family, source, destination):
        raise dns.query.UnexpectedSource(f"got a response from {source} instead of "
                                         f"{destination}")
    answer = wire.read_answer(octets, query.id, query.name, query.rdtype)
    if answer is not None:
        return answer
    response = dns.message.from_wire(octets, raise_on_truncation=True)
    if not query.message().is_response(response):
        raise dns.query.BadResponse
    return response


def _from_destination(family: int, source: tuple, destination: tuple) -> bool:
    """Whether a response came from where the query went, as dnspython checks it."""
    try:
        if (dns.inet.inet_pton(family, source[0]) == dns.inet.inet_pton(family, destination[0])
                and source[1:] == destination[1:]):
            return True
    except dns.exception.SyntaxError:
        pass
    return dns.inet.is_multicast(destination[0]) and source[1:] == destination[1:]


def _from_wire_answer(shown: str, rdtype: str, answer: wire.WireAnswer) -> Answer:
    """The Answer that _from_response gives for the same response (tests/test_dns_wire.py)."""
    common = dict(canonical_name=shown,
                  ttl_seconds=float(answer.ttl) if answer.records or answer.has_soa else 0.0,
                  authenticated=answer.authenticated,
                  rcode=dns.rcode.to_text(answer.rcode))
    if answer.rcode == dns.rcode.NXDOMAIN:
        return Answer(shown, rdtype, "nxdomain", **common)
    if not answer.records:
        return Answer(shown, rdtype, "nodata", **common)
    return Answer(shown, rdtype, "ok", records=answer.records, **common)


def _from_response(shown: str, rdtype: str, response: dns.message.Message) -> Answer:
    chain = response.resolve_chaining()
    cnames = tuple(name_text(rrset.name) for rrset in chain.cnames)
    canonical = name_text(chain.canonical_name)
    ttl = float(chain.minimum_ttl)
    if chain.answer is None and not any(rrset.rdtype == dns.rdatatype.SOA
                                        for rrset in response.authority):
        ttl = 0.0  # a negative answer without an SOA is not to be kept (RFC 2308 5)
    common = dict(canonical_name=canonical, ttl_seconds=ttl, cnames=cnames,
                  authenticated=bool(response.flags & dns.flags.AD),
                  rcode=dns.rcode.to_text(response.rcode()))
    if response.rcode() == dns.rcode.NXDOMAIN:
        detail = f"{shown} is an alias of {canonical}, which does not exist" if cnames else ""
        return Answer(shown, rdtype, "nxdomain", detail=detail, **common)
    if chain.answer is None:
        return Answer(shown, rdtype, "nodata", **common)
    if rdtype == "MX":
        records: tuple = tuple((rdata.preference, rdata.exchange) for rdata in chain.answer)
    elif rdtype in ("A", "AAAA"):
        records = tuple(rdata.address for rdata in chain.answer)
    else:  # TLSA, TXT, ...: dnspython's rdata, immutable
        records = tuple(chain.answer)
    return Answer(shown, rdtype, "ok", records=records, **common)


def _is_referral(response: dns.message.Message) -> bool:
    """A 'go ask them' answer: an authoritative server's delegation (NS records in the
    authority section, no SOA, no answer, not authoritative itself), which a recursive
    resolver would have followed. Taken for NODATA it would make an implicit MX."""
    if response.flags & dns.flags.AA or response.answer:
        return False
    kinds = {rrset.rdtype for rrset in response.authority}
    return dns.rdatatype.NS in kinds and dns.rdatatype.SOA not in kinds


def _gave_up(shown: str, rdtype: str, failures: dict[str, list[str]], final: bool,
             rcode: str = "") -> Answer:
    """No answer: at the deadline (`final` False) or with every server dropped. A server's
    SERVFAIL says most, then an unusable answer; silence is a timeout."""
    order = ("servfail", "bad_response", "timeout", "unreachable" if final else "timeout")
    state = next((s for s in order if s in failures), "timeout")
    what = "; ".join(text for texts in failures.values() for text in texts)
    if not final:
        what = f"no answer in time{': ' + what if what else ''}"
    return Answer(shown, rdtype, state, detail=what, rcode=rcode)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _error_text(error: object) -> str:
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text and text != name else name


def _server_text(address: object, port: object) -> str:
    text = str(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"
