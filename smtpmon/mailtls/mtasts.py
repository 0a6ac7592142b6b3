"""MTA-STS (RFC 8461): the `_mta-sts` record, the policy fetched over HTTPS, and what the
policy says about each MX, as a sender that honours it sees it.

The fetch uses the standard library (`ssl` for the connection, `http.client` to parse the
answer) rather than an HTTP client library, because what the RFC asks is the opposite of what
those libraries make easy: never follow a redirect, connect to an address found through the
configured resolver (not getaddrinfo) while checking the certificate for the policy host's
name, and bound the whole fetch in time and size. Here the answer is read, under one deadline
and a byte limit, into memory, and only then handed to `http.client` to parse.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtpmon.dns.cache import NotCached
from smtpmon.dns.cached import CachedResolver, absolute_name
from smtpmon.dns.names import name_matches, name_text
from smtpmon.dns.resolver import Answer
from smtpmon.smtp.chain import ca_file_version

# RFC 8461 3.2 suggests 64 KiB as the most a sender reads of a policy.
MAX_POLICY_BYTES = 64 * 1024
# The status line and headers of the policy answer: real ones are well under 1 KiB.
MAX_HEADER_BYTES = 16 * 1024
MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: about one year
HTTPS_PORT = 443
POLICY_PATH = "/.well-known/mta-sts.txt"
MODES = ("enforce", "testing", "none")

# The `_mta-sts.<domain>` TXT record.
#   present        one valid `v=STSv1; id=...` record
#   absent         no STSv1 record (the name may have other TXT records)
#   invalid        a record starting with v=STSv1 that does not parse (or has no id)
#   multiple       more than one STSv1 record: senders treat it as no policy (RFC 8461 3.1)
#   lookup_failed  the TXT lookup got no answer (SERVFAIL, timeout)
STS_RECORD_STATES = ("present", "absent", "invalid", "multiple", "lookup_failed")

# Why a policy fetch failed; None when it did not.
STS_FETCH_ERRORS = (
    "address_lookup_failed",  # mta-sts.<domain> has no address, or its lookup failed
    "connect_failed",  # no TCP connection to any of its addresses
    "timeout",  # the fetch did not finish in its time
    "tls_failed",  # the TLS handshake failed for another reason than the certificate
    "certificate_untrusted",  # no PKIX path to a trusted CA
    "certificate_name_mismatch",  # the certificate does not name mta-sts.<domain>
    "certificate_expired",  # outside its validity period
    "redirect",  # a 3xx: RFC 8461 3.3 forbids following it
    "http_status",  # any other status than 200 (the status is in `http_status`)
    "content_type",  # not text/plain
    "too_large",  # more than MAX_POLICY_BYTES
    "bad_response",  # not a readable HTTP answer
    "syntax",  # a line that is not `key: value`, or not UTF-8
    "version_invalid",  # `version` missing or not STSv1
    "mode_invalid",  # `mode` missing or not enforce / testing / none
    "mx_missing",  # no `mx` line with mode enforce or testing
    "mx_invalid",  # an `mx` pattern that is not a host name (a wildcard only as `*.` first)
    "max_age_invalid",  # `max_age` missing or not 1-10 digits
    "max_age_too_large",  # `max_age` above MAX_AGE_LIMIT
)

# Per MX address under a policy in use.
#   ok                   the MX host is listed and the address presented a PKIX-valid
#                        certificate for it over STARTTLS
#   mx_not_listed        the MX host matches no `mx` pattern of the policy
#   starttls_missing     the address does not offer STARTTLS
#   certificate_invalid  its certificate is not PKIX-valid for the MX host name
#   not_applicable       no policy in use, or mode none
STS_MX_VERDICTS = ("ok", "mx_not_listed", "starttls_missing", "certificate_invalid", "not_applicable")
# What a failed MX verdict costs: senders refuse that MX under enforce, only report under testing.
SEVERITY_BY_MODE = {"enforce": "critical", "testing": "warning", "none": "none"}

_RECORD_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXTENSION_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_VERIFY_ERRORS = {9: "certificate_expired", 10: "certificate_expired", 62: "certificate_name_mismatch",
                  64: "certificate_name_mismatch"}


@dataclass(frozen=True)
class StsRecord:
    state: str  # one of STS_RECORD_STATES
    id: str | None  # the policy id when present
    text: str | None  # the record as published (the first STSv1 one)
    detail: str


@dataclass(frozen=True)
class StsPolicy:
    mode: str  # one of MODES
    mx: tuple[str, ...]  # patterns as published, lower case
    max_age: int  # seconds
    id: str  # the record's id when this policy was fetched
    fetched_at: float  # wall-clock time of the fetch
    text: str  # the policy as served

    def covers(self, mx_host: str) -> bool:
        return any(name_matches(pattern, mx_host) for pattern in self.mx)


@dataclass(frozen=True)
class PolicyFetch:
    """One attempt to fetch a policy: the policy, or the error (one of STS_FETCH_ERRORS)."""

    policy: StsPolicy | None
    error: str | None
    detail: str
    http_status: int | None = None
    address: str | None = None  # the address the policy host was reached at


@dataclass(frozen=True)
class StsResult:
    """A domain's MTA-STS state at one check."""

    domain: str
    record: StsRecord
    policy: StsPolicy | None  # the policy a sender would apply now (fresh or cached)
    fetch: PolicyFetch | None  # the latest fetch for the record's id; None: no record, none yet
    fetched: bool  # whether this check fetched (False: the cache or a recent failure served)
    policy_changed_at: float | None  # wall-clock time the policy id in use was first seen

    @property
    def mode(self) -> str:
        return self.policy.mode if self.policy else "none"

    @property
    def fetch_failing(self) -> bool:
        """The record says a policy exists, but it cannot be fetched (whether or not a cached
        one is still in use)."""
        return self.fetch is not None and self.fetch.error is not None


@dataclass(frozen=True)
class StsMxCheck:
    verdict: str  # one of STS_MX_VERDICTS
    severity: str  # "critical", "warning" or "none": what a failed verdict costs (by mode)
    detail: str


def parse_record(texts: list[str]) -> StsRecord:
    """The `_mta-sts` TXT record among a name's TXT records (each as one joined string)."""
    candidates = [text for text in texts if re.match(r"v=STSv1\s*(;|$)", text)]
    if not candidates:
        return StsRecord("absent", None, None, "no v=STSv1 TXT record")
    if len(candidates) > 1:
        return StsRecord("multiple", None, candidates[0], f"{len(candidates)} v=STSv1 records: senders see no policy")
    text = candidates[0]
    fields = [field.strip() for field in text.split(";")]
    if fields[-1] == "":
        fields.pop()
    record_id = None
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if not equals or not _EXTENSION_NAME.fullmatch(name) or not _EXTENSION_VALUE.fullmatch(value):
            return StsRecord("invalid", None, text, f"not a name=value field: {field!r}")
        if name == "id" and record_id is None:
            if not _RECORD_ID.fullmatch(value):
                return StsRecord("invalid", None, text, "id must be 1 to 32 letters and digits")
            record_id = value
    if record_id is None:
        return StsRecord("invalid", None, text, "no id= field")
    return StsRecord("present", record_id, text, f"policy id {record_id}")


def txt_strings(answer: Answer) -> list[str]:
    """Each TXT record as one string (its character-strings joined, RFC 8461 3.1)."""
    return [b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in answer.records]


def parse_policy(text: str, *, policy_id: str, fetched_at: float) -> tuple[StsPolicy | None, str | None, str]:
    """(policy, None, detail) or (None, error, detail), error from STS_FETCH_ERRORS."""
    fields: dict[str, str] = {}
    patterns: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip():
            return None, "syntax", f"line {number} is not 'key: value'"
        value = value.strip()
        if key == "mx":
            patterns.append(value.lower())
        else:
            fields.setdefault(key, value)  # RFC 8461 3.2: only the first of a repeated field
    if fields.get("version") != "STSv1":
        return None, "version_invalid", f"version is {fields.get('version')!r}, not 'STSv1'"
    mode = fields.get("mode")
    if mode not in MODES:
        return None, "mode_invalid", f"mode is {mode!r}, not one of {', '.join(MODES)}"
    max_age = fields.get("max_age")
    if max_age is None or not re.fullmatch(r"[0-9]{1,10}", max_age):
        return None, "max_age_invalid", f"max_age is {max_age!r}, not a number of seconds"
    if int(max_age) > MAX_AGE_LIMIT:
        return None, "max_age_too_large", f"max_age {max_age} is above {MAX_AGE_LIMIT}"
    for pattern in patterns:
        if not valid_mx_pattern(pattern):
            return None, "mx_invalid", f"mx {pattern!r} is not a host name (a wildcard only as '*.' first)"
    if not patterns and mode != "none":
        return None, "mx_missing", f"no mx line in mode {mode}"
    policy = StsPolicy(mode, tuple(patterns), int(max_age), policy_id, fetched_at, text)
    return policy, None, f"mode {mode}, {len(patterns)} mx pattern(s), max_age {max_age}"


def valid_mx_pattern(pattern: str) -> bool:
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.rstrip(".").split(".")
    return len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)


def check_mx(result: StsResult, mx_host: str, *, starttls_offered: bool, certificate_valid: bool) -> StsMxCheck:
    """What a sender applying the domain's policy makes of one MX address: its MX host must
    match a policy pattern, and the address must present over STARTTLS a certificate that is
    PKIX-valid for the MX host name (the probe's verifying handshake says whether it is)."""
    policy = result.policy
    if policy is None or policy.mode == "none":
        return StsMxCheck("not_applicable", "none", "no MTA-STS policy in use")
    severity = SEVERITY_BY_MODE[policy.mode]
    host = mx_host.rstrip(".").lower()
    if not policy.covers(host):
        return StsMxCheck("mx_not_listed", severity, f"{host} matches no mx pattern of the {policy.mode} policy")
    if not starttls_offered:
        return StsMxCheck("starttls_missing", severity, f"{host} does not offer STARTTLS")
    if not certificate_valid:
        return StsMxCheck("certificate_invalid", severity, f"the certificate is not PKIX-valid for {host}")
    return StsMxCheck("ok", "none", f"{host} is listed and presents a valid certificate")


class PolicyFetcher:
    """Fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt` as RFC 8461 3.3 says."""

    def __init__(self, resolver: CachedResolver, *,
                 extra_ca_file: str | None = None, wall_clock: Callable[[], float] = time.time):
        self._resolver = resolver
        self._extra_ca_file = extra_ca_file
        self._clock = time.monotonic  # deadlines are time.monotonic() values, as everywhere
        self._wall_clock = wall_clock

    def fetch(self, domain: str, policy_id: str, *, deadline: float) -> PolicyFetch:
        """Never raises; every failure is one of STS_FETCH_ERRORS with a detail."""
        host = "mta-sts." + name_text(absolute_name(domain))
        try:
            context = _tls_context(self._extra_ca_file, ca_file_version(self._extra_ca_file))
        except OSError as error:
            return PolicyFetch(None, "tls_failed", f"cannot load the CA file {self._extra_ca_file}: {error}")
        addresses = self._addresses(host, deadline)
        if isinstance(addresses, PolicyFetch):
            return addresses
        failure = PolicyFetch(None, "connect_failed", f"no address of {host} answered")
        for address in addresses:
            sock_or_failure = self._connect(address, deadline)
            if isinstance(sock_or_failure, PolicyFetch):
                failure = sock_or_failure
                if failure.error == "timeout":
                    return failure
                continue
            with sock_or_failure as sock:
                fetched = self._fetch_over(sock, context, host, address, policy_id, deadline)
            return dataclasses.replace(fetched, address=address)
        return failure

    def _addresses(self, host: str, deadline: float) -> list[str] | PolicyFetch:
        found: list[str] = []
        problems = []
        for rdtype in ("A", "AAAA"):
            answer = self._resolver.ask(host, rdtype, deadline=deadline)
            found += list(answer.records)
            if answer.state not in ("ok", "nodata"):
                problems.append(answer.detail or f"{host} {rdtype}: {answer.state}")
            if answer.state == "nxdomain":
                break
        if not found:
            return PolicyFetch(None, "address_lookup_failed", "; ".join(problems) or f"{host} has no address")
        return found

    def _connect(self, address: str, deadline: float) -> socket.socket | PolicyFetch:
        left = deadline - self._clock()
        if left <= 0:
            return PolicyFetch(None, "timeout", "no time left to connect")
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(left)
        try:
            sock.connect((address, HTTPS_PORT))
        except TimeoutError:
            sock.close()
            return PolicyFetch(None, "timeout", f"no connection to {address} port {HTTPS_PORT} in time")
        except OSError as error:
            sock.close()
            return PolicyFetch(None, "connect_failed",
                               f"connecting to {address} port {HTTPS_PORT}: {error.strerror or error}")
        return sock

    def _fetch_over(self, sock: socket.socket, context: ssl.SSLContext, host: str, address: str,
                    policy_id: str, deadline: float) -> PolicyFetch:
        try:
            sock.settimeout(max(deadline - self._clock(), 0.001))
            tls = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as error:
            reason = _VERIFY_ERRORS.get(error.verify_code, "certificate_untrusted")
            return PolicyFetch(None, reason, f"{host} at {address}: {error.verify_message or error}")
        except TimeoutError:
            return PolicyFetch(None, "timeout", f"the TLS handshake with {address} did not finish in time")
        except (ssl.SSLError, OSError) as error:
            return PolicyFetch(None, "tls_failed", f"TLS with {address} failed: {error}")
        with tls:
            raw = self._exchange(tls, host, deadline)
        if isinstance(raw, PolicyFetch):
            return raw
        data, cut = raw
        return self._judge(data, cut, host, policy_id)

    def _exchange(self, tls: ssl.SSLSocket, host: str, deadline: float) -> tuple[bytes, bool] | PolicyFetch:
        """Send the request, read the answer until the server closes: (bytes, cut) where cut
        says the byte limit stopped the reading."""
        request = (f"GET {POLICY_PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: smtpmon\r\n"
                   "Accept: text/plain\r\nConnection: close\r\n\r\n").encode("ascii")
        limit = MAX_HEADER_BYTES + MAX_POLICY_BYTES
        received = bytearray()
        try:
            tls.settimeout(max(deadline - self._clock(), 0.001))
            tls.sendall(request)
            while len(received) <= limit:
                left = deadline - self._clock()
                if left <= 0:
                    raise TimeoutError
                tls.settimeout(left)  # each read gets what is left: a trickle ends at the deadline
                try:
                    chunk = tls.recv(16384)
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    chunk = b""  # closed without close_notify: the framing says if it is whole
                if not chunk:
                    return bytes(received), False
                received += chunk
        except TimeoutError:
            return PolicyFetch(None, "timeout", f"the policy from {host} did not arrive in time")
        except (ssl.SSLError, OSError) as error:
            return PolicyFetch(None, "bad_response", f"reading the policy from {host} failed: {error}")
        return bytes(received), True

    def _judge(self, data: bytes, cut: bool, host: str, policy_id: str) -> PolicyFetch:
        response = http.client.HTTPResponse(_Replay(data), method="GET")
        try:
            response.begin()
        except (http.client.HTTPException, ValueError) as error:
            return PolicyFetch(None, "bad_response", f"{host} did not answer in HTTP: {error!r}")
        status = response.status
        if 300 <= status < 400:
            where = response.getheader("Location", "nowhere")
            return PolicyFetch(None, "redirect", f"{host} redirects ({status}) to {where}: senders do not follow",
                               status)
        if status != 200:
            return PolicyFetch(None, "http_status", f"{host} answered {status} {response.reason}", status)
        content_type = response.headers.get_content_type()
        if content_type != "text/plain":
            return PolicyFetch(None, "content_type", f"the policy is {content_type}, not text/plain", status)
        declared = response.getheader("Content-Length")
        if cut or (declared and declared.isdigit() and int(declared) > MAX_POLICY_BYTES):
            return PolicyFetch(None, "too_large", f"the policy is larger than {MAX_POLICY_BYTES} bytes", status)
        try:
            body = response.read()
        except (http.client.HTTPException, ValueError) as error:
            return PolicyFetch(None, "bad_response", f"the policy body is incomplete: {error!r}", status)
        if len(body) > MAX_POLICY_BYTES:
            return PolicyFetch(None, "too_large", f"the policy is larger than {MAX_POLICY_BYTES} bytes", status)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return PolicyFetch(None, "syntax", "the policy is not UTF-8", status)
        policy, error, detail = parse_policy(text, policy_id=policy_id, fetched_at=self._wall_clock())
        return PolicyFetch(policy, error, detail, status)


class _Replay:
    """Received bytes, handed to http.client.HTTPResponse as if they were its socket."""

    def __init__(self, data: bytes):
        self._data = data

    def makefile(self, mode: str, *args, **kwargs) -> io.BytesIO:
        return io.BytesIO(self._data)


@functools.lru_cache(maxsize=16)
def _tls_context(extra_ca_file: str | None, version: tuple[int, int] | None) -> ssl.SSLContext:
    """The system's CAs and an extra CA file (e.g. a private CA); `version` is the file's
    modification time and size, so a replaced file is loaded afresh."""
    context = ssl.create_default_context()
    if extra_ca_file is not None:
        context.load_verify_locations(cafile=extra_ca_file)
    return context


@dataclass
class _Cached:
    policy: StsPolicy
    expires: float  # monotonic


class MtaSts:
    """A domain's MTA-STS state, with the policy cache a sender keeps (RFC 8461 5.1): a
    policy is used for its max_age, refetched early only when the record's id changes, and a
    cached policy stays in use while its record disappears or a refetch fails. Safe to share
    between threads; one fetch at a time per domain."""

    def __init__(self, resolver: CachedResolver, *,
                 extra_ca_file: str | None = None, fetch_timeout: float = 10.0,
                 retry_failed_after: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        """`retry_failed_after`: seconds a failed fetch stands before the next attempt for
        the same policy id, so a broken policy host costs one request per domain per that
        time, not one per check. `clock` times the cache (max_age, retries); deadlines are
        time.monotonic() values."""
        self._resolver = resolver
        self._fetcher = PolicyFetcher(resolver, extra_ca_file=extra_ca_file, wall_clock=wall_clock)
        self._fetch_timeout = fetch_timeout
        self._retry_failed_after = retry_failed_after
        self._clock = clock
        self._wall_clock = wall_clock
        self._cached: dict[str, _Cached] = {}
        # Per domain, the id of the last policy fetched and when it was first seen; kept past
        # the policy's expiry, so a refetch of the same policy is not taken for a change.
        self._ids: dict[str, tuple[str, float]] = {}
        # Per domain, the latest fetch: (the record id it was for, its outcome, monotonic time).
        self._last_fetch: dict[str, tuple[str, PolicyFetch, float]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # for the benchmark's figure: fetches, not checks

    def record(self, domain: str, *, deadline: float, cached_only: bool = False) -> StsRecord:
        resolver = self._resolver.cache_only if cached_only else self._resolver
        answer = resolver.ask(f"_mta-sts.{domain.rstrip('.')}.", "TXT", deadline=deadline)
        if answer.state in ("nodata", "nxdomain"):
            return StsRecord("absent", None, None, answer.detail or f"no TXT record at {answer.name}")
        if answer.state != "ok":
            return StsRecord("lookup_failed", None, None, answer.detail)
        return parse_record(txt_strings(answer))

    def check(self, domain: str, *, deadline: float, cached_only: bool = False) -> StsResult:
        """Never raises for anything DNS or HTTPS does. The fetch gets at most fetch_timeout
        within `deadline`. `cached_only`: from the DNS cache and the policy cache alone, never
        waiting: NotCached when a question, a fetch or another thread's fetch would be waited
        for."""
        domain = name_text(absolute_name(domain))
        with self._lock:
            lock = self._locks.setdefault(domain, threading.Lock())
        if not lock.acquire(blocking=not cached_only):
            raise NotCached(domain)
        try:
            return self._check(domain, deadline, cached_only)
        finally:
            lock.release()

    def _check(self, domain: str, deadline: float, cached_only: bool) -> StsResult:
        record = self.record(domain, deadline=deadline, cached_only=cached_only)
        now = self._clock()
        cached = self._cached.get(domain)
        if cached is not None and cached.expires <= now:
            cached = None
            del self._cached[domain]
        if record.state != "present":
            # No record (or a broken one): a sender keeps applying its unexpired policy.
            return self._result(domain, record, cached, None, False)
        last = self._last_fetch.get(domain)
        last_for_id = last if last is not None and last[0] == record.id else None
        if cached is not None and cached.policy.id == record.id:
            return self._result(domain, record, cached, last_for_id and last_for_id[1], False)
        if (last_for_id is not None and last_for_id[1].error is not None
                and now - last_for_id[2] < self._retry_failed_after):
            return self._result(domain, record, cached, last_for_id[1], False)
        if cached_only:
            raise NotCached(domain)
        fetch_deadline = min(deadline, time.monotonic() + self._fetch_timeout)
        fetch = self._fetcher.fetch(domain, record.id, deadline=fetch_deadline)
        self.fetches += 1
        self._last_fetch[domain] = (record.id, fetch, now)
        if fetch.policy is not None:
            cached = _Cached(fetch.policy, self._clock() + fetch.policy.max_age)
            self._cached[domain] = cached
            if self._ids.get(domain, ("",))[0] != fetch.policy.id:
                self._ids[domain] = (fetch.policy.id, self._wall_clock())
        return self._result(domain, record, cached, fetch, True)

    def _result(self, domain: str, record: StsRecord, cached: _Cached | None,
                fetch: PolicyFetch | None, fetched: bool) -> StsResult:
        changed_at = None
        if cached is not None:
            seen_id, seen_at = self._ids[domain]
            changed_at = seen_at if seen_id == cached.policy.id else None
        return StsResult(domain, record, cached.policy if cached else None, fetch, fetched, changed_at)
