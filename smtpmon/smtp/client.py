"""The one place that touches sockets and ssl: an SMTP connection under one overall deadline.

Why not `smtplib`: its reply reader (`file.readline`) cannot give each read the time that is
left, so a server trickling a byte a second keeps it waiting far past any timeout; it drops
the partial reply when the connection closes; it has no bound on the number of continuation
lines; and its `__exit__` sends QUIT and can hide the original error. We also need every line
for the transcript, with AUTH secrets masked before they are recorded. What would remain of
`smtplib` (dot-stuffing, CRLF framing) is a few lines, so this is a small client over
`socket` and `ssl`, with replies parsed by `smtpmon.smtp.replycodes`.

Every blocking call gets `deadline - now` as its socket timeout, so the session ends at the
deadline whatever the server does. On plain TCP that timeout is the kernel's (SO_RCVTIMEO /
SO_SNDTIMEO on a blocking socket, at most KERNEL_TIMEOUT_CAP_SECONDS at a time), set once
per session when replies come fast, and connect() waits in poll(). Python's own socket timeout
costs a poll() before every call and an ioctl() for each settimeout(), and each of those hands
the GIL to another thread when many probes run at once. A TLS socket keeps Python's timeout:
the ssl module retries a blocking read that the kernel timed out instead of giving up.

Given a `smtpmon.net.hub.Hub` (the daemon's scheduler), the socket is non-blocking instead and
every wait parks the session on the hub until the socket is ready or the deadline passes, so
one thread runs many sessions. The session code above this module is the same either way.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import functools
import ipaddress
import math
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable

from smtpmon.net.hub import READ, WRITE, Hub
from smtpmon.net.lookups import LookupPool
from smtpmon.smtp.chain import (
    VERIFY_REASONS,
    ca_file_version,
    certificate_validity,
    presented_chain,
)
from smtpmon.smtp.replycodes import make_reply, parse_line
from smtpmon.smtp.results import Reply, TlsInfo, TranscriptLine

# RFC 5321 4.5.3.1.5 allows 512 bytes per reply line; real servers exceed it a little. Past this
# a line is a protocol error, not a reason to grow memory.
MAX_LINE_BYTES = 4096
# Endless "250-" lines end as a protocol error rather than a session that never finishes.
MAX_REPLY_LINES = 200
# And a reply's lines together: 200 lines near MAX_LINE_BYTES would otherwise hold 1.6 MB (text
# kept in the reply and the transcript) per probe. Real EHLO replies and banners stay under 4 KB.
MAX_REPLY_BYTES = 65536
_RECV_BYTES = 4096
_MASK_BYTES = b"********"
# A secret's beginning this long or longer, where a server's words end, is masked too: shorter
# ones would mask innocent words for a character or two of the secret.
MIN_MASKED_PREFIX = 3
# How much of an over-long line the transcript shows.
SHOWN_HEAD_CHARACTERS = 60
# A kernel timeout set for an earlier call is kept while it overshoots the deadline by no more.
REARM_SLACK_SECONDS = 0.005
# The longest socket timeout given to the kernel; a longer wait is several, one after the other.
# The kernel rounds a timeout up to its timer wheel's slot, which is coarse for long ones:
# enough, for a timeout of seconds, to overrun a scrape's 0.5 s margin; up to this cap the
# slots are a few milliseconds (benchmarks/README.md).
KERNEL_TIMEOUT_CAP_SECONDS = 0.25
_MAX_POLL_MILLISECONDS = 2**31 - 1  # poll() takes a C int
_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO / SO_SNDTIMEO
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only

_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


class SessionError(Exception):
    """The session cannot go on. `reason` is one of results.FAILURE_REASONS; the connection
    is no longer usable (nothing more may be sent on it)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class CertificateError(SessionError):
    """The TLS handshake failed on certificate verification; `verify_error` is OpenSSL's words."""

    def __init__(self, reason: str, detail: str, verify_error: str):
        super().__init__(reason, detail)
        self.verify_error = verify_error


class Transcript:
    """The session as lines with their offset since the probe started."""

    def __init__(self, started: float, clock: Callable[[], float]):
        self._started = started
        self._clock = clock
        self.lines: list[TranscriptLine] = []

    def add(self, direction: str, text: str) -> None:
        offset = max(0.0, self._clock() - self._started)
        # Interned: most lines are the same on every probe (kept per target until the next).
        self.lines.append(TranscriptLine(offset, direction, sys.intern(printable(text))))

    def note(self, text: str) -> None:
        self.add("*", text)

    def add_received(self, texts: tuple[str, ...]) -> None:
        """Server lines already made printable and interned (a cached reply's lines)."""
        offset = max(0.0, self._clock() - self._started)
        self.lines.extend([TranscriptLine(offset, "S", text) for text in texts])


class ReplyCache:
    """Parsed replies by their exact bytes, with the transcript text of their lines.

    A server sends the same banner, EHLO and QUIT replies on every probe, and parsing them
    line by line was most of a plain probe's Python work. Parsing is a pure function of the
    bytes, so a reply that arrives whole in one read and matches a cached one is taken from
    here. Only clean replies (a code, nothing left over, no secrets to mask) are kept, and
    only once the same bytes came twice: a banner with the time in it or a reply with a
    queue id never repeats, and would only push out the replies that do. Bounded by an
    estimate of the memory it holds, oldest out first; safe to share between threads.
    """

    # Per entry beyond the key, its texts and its lines: the Reply, the pair, the dict slot.
    ENTRY_OVERHEAD = 250
    # Hashes of replies seen once, direct-mapped: a collision only delays an admission.
    SEEN_SLOTS = 1 << 16

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: dict[bytes, tuple[Reply, tuple[str, ...]]] = {}
        self._seen = array.array("q", bytes(8 * self.SEEN_SLOTS))
        self._lock = threading.Lock()
        self.get = self._entries.get

    def put(self, raw: bytes, reply: Reply, texts: tuple[str, ...]) -> None:
        if len(raw) > _RECV_BYTES:  # could never arrive in the one read a hit needs
            return
        key = hash(raw)
        with self._lock:
            if raw in self._entries:
                return
            slot = key & (self.SEEN_SLOTS - 1)
            if self._seen[slot] != key:
                self._seen[slot] = key
                return
            self._entries[raw] = (reply, texts)
            self._bytes += self._cost(raw, reply, texts)
            while self._bytes > self._max_bytes:
                oldest = next(iter(self._entries))
                self._bytes -= self._cost(oldest, *self._entries.pop(oldest))

    def _cost(self, raw: bytes, reply: Reply, texts: tuple[str, ...]) -> int:
        # The strings are interned and shared with the transcripts: not counted.
        return (sys.getsizeof(raw) + sys.getsizeof(texts) + sys.getsizeof(reply.lines)
                + self.ENTRY_OVERHEAD)

    def __len__(self) -> int:
        return len(self._entries)


# The banner, EHLO (before and after TLS) and QUIT replies of some 10,000 distinct servers
# (about 700 bytes each). Past that, oldest-out-first misses for targets probed in turn.
REPLIES = ReplyCache(max_bytes=32 * 1024 * 1024)
# Name lookups of every probe in the process (the daemon's, /probe's, the command line's).
LOOKUPS = LookupPool()


def set_kernel_timeout(sock: socket.socket, option: int, seconds: float) -> None:
    """SO_RCVTIMEO or SO_SNDTIMEO: a blocking read or write on `sock` gives up after
    `seconds` (> 0) with EAGAIN."""
    whole = int(seconds)
    micros = max(int((seconds - whole) * 1e6), 0 if whole else 1)  # 0 s would mean "never"
    sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(whole, micros))


def printable(text: str) -> str:
    """Escape control characters: a server must not drive the operator's terminal."""
    if text.isprintable():  # nearly every line: no per-character walk
        return text
    return "".join(
        char if char.isprintable() or char == "\t" else f"\\x{ord(char):02x}" for char in text
    )


@functools.lru_cache(maxsize=16384)  # parsed on every probe otherwise: ipaddress is pure Python
def _literal_family(host: str) -> int | None:
    """AF_INET or AF_INET6 when host is an IP address literal, else None (a name)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if literal.version == 6 else socket.AF_INET


def resolve(
    host: str, port: int, family: int, timeout: float, hub: Hub | None = None
) -> list[tuple[int, tuple]]:
    """Addresses for host as (family, sockaddr), IP literals without a lookup.

    getaddrinfo cannot be given a timeout: it runs on smtpmon.net.lookups' threads, and the probe
    gives up at the deadline (with a hub, the session parks on the hub meanwhile).
    """
    literal_family = _literal_family(host)
    if literal_family is not None:
        if family not in (socket.AF_UNSPEC, literal_family):
            wanted = "IPv4" if family == socket.AF_INET else "IPv6"
            raise SessionError("dns_failure", f"{host} is not an {wanted} address, as the module asks")
        sockaddr = (host, port, 0, 0) if literal_family == socket.AF_INET6 else (host, port)
        return [(literal_family, sockaddr)]
    if timeout <= 0:
        raise SessionError("dns_failure", f"no time left to resolve {host}")
    lookup = functools.partial(socket.getaddrinfo, host, port, family, socket.SOCK_STREAM)
    answered, answer = LOOKUPS.run((host, port, family), lookup, time.monotonic() + timeout, hub)
    if not answered:
        raise SessionError("dns_failure", f"no answer resolving {host} within {timeout:.1f}s")
    if isinstance(answer, Exception):
        raise SessionError("dns_failure", f"cannot resolve {host}: {answer}")
    unique = list(dict.fromkeys((info[0], info[4]) for info in answer))  # type: ignore[union-attr]
    if not unique:
        raise SessionError("dns_failure", f"no addresses for {host}")
    return unique


def make_tls_context(
    *, verify: bool, ca_file: str | None = None, min_version: str | None = None
) -> ssl.SSLContext:
    """A client context: verifying by default (system CAs, or only ca_file when given).

    Contexts are shared between probes (an SSLContext is safe to use from many threads):
    loading the CAs is most of the cost of a STARTTLS probe otherwise. The CA file's size and
    modification time are part of the key, so a replaced file is loaded afresh.
    """
    version = ca_file_version(ca_file) if verify else None
    return _cached_tls_context(verify, ca_file, version, min_version)


@functools.lru_cache(maxsize=64)
def _cached_tls_context(
    verify: bool, ca_file: str | None, version: tuple[int, int] | None, min_version: str | None
) -> ssl.SSLContext:
    if verify:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except OSError as error:  # includes ssl.SSLError for a file that is not PEM
            raise SessionError("internal_error",
                               f"cannot load the CA file {ca_file}: {error.strerror or error}") from None
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if min_version is not None:
        context.minimum_version = _TLS_VERSIONS[min_version]
    return context


def prepare_tls(
    *, verify: bool, ca_file: str | None = None, min_version: str | None = None
) -> ssl.SSLContext | None:
    """The local set-up a TLS session needs, for a caller to do before it starts timing: the
    client context (as make_tls_context; None when it cannot be made, which the handshake then
    reports), the certificate parser and OpenSSL's own first-handshake set-up. A process's
    first TLS probe would otherwise count them (loading the system's CA bundle, importing the
    parser: tens of milliseconds, benchmarks/README.md) as the server's time in its starttls
    stage."""
    from cryptography import x509  # noqa: F401 - imported now rather than in the stage

    try:
        context = make_tls_context(verify=verify, ca_file=ca_file, min_version=min_version)
    except SessionError:
        return None
    if not _openssl_warmed.is_set():
        _warm_openssl(context)
    return context


_openssl_warmed = threading.Event()


def _warm_openssl(context: ssl.SSLContext) -> None:
    """Start a handshake in memory, as far as the ClientHello (nothing is sent anywhere):
    OpenSSL fetches its algorithms and sets itself up at a process's first handshake, time
    that would otherwise be the first probe's starttls time."""
    client = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="warm-up.invalid")
    try:
        client.do_handshake()
    except ssl.SSLError:  # SSLWantReadError: the ClientHello is written, a reply is awaited
        pass
    _openssl_warmed.set()


def certificate_facts(der: bytes | None) -> dict:
    """Subject, issuer, SANs and validity from a DER certificate (TlsInfo's field names)."""
    if not der:
        return {}
    return dict(_parsed_certificate_facts(der))


# A server shows the same certificate on every probe: parse it once (keyed by its DER bytes).
@functools.lru_cache(maxsize=256)
def _parsed_certificate_facts(der: bytes) -> tuple[tuple[str, object], ...]:
    # Imported at the first certificate: cryptography adds megabytes to the resident memory of
    # a daemon whose probes never use TLS (benchmarks/README.md).
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            [f"DNS:{name}" for name in san.get_values_for_type(x509.DNSName)]
            + [f"IP:{address}" for address in san.get_values_for_type(x509.IPAddress)]
        )
    except (x509.ExtensionNotFound, ValueError):
        sans = ()
    not_before, not_after = certificate_validity(cert)
    return (
        ("subject", cert.subject.rfc4514_string()),
        ("issuer", cert.issuer.rfc4514_string()),
        ("sans", sans),
        ("not_before", not_before.timestamp()),
        ("not_after", not_after.timestamp()),
    )


class SmtpConnection:
    """One TCP (and maybe TLS) connection speaking SMTP, recording every line it moves."""

    def __init__(self, deadline: float, transcript: Transcript, clock: Callable[[], float] = time.monotonic,
                 hub: Hub | None = None):
        self._hub = hub  # with a hub, `clock` must be time.monotonic (the hub's deadlines)
        self._deadline = deadline
        self._clock = clock
        self._transcript = transcript
        self._sock: socket.socket | None = None
        self._tls = False  # True once the socket is an ssl.SSLSocket (Python's timeouts)
        self._armed: dict[int, float] = {}  # plain TCP: option -> seconds the kernel has
        self._buffer = bytearray()
        self._secrets: list[bytes] = []

    def record_into(self, transcript: Transcript) -> None:
        """From now on, record this connection's lines in `transcript`."""
        self._transcript = transcript

    def hide(self, *secrets: str) -> None:
        """Mask these wherever the server's words show them: a server may quote the line it
        could not accept (a 535 or 501 with the AUTH data), and its words reach the replies,
        the transcript, the failure detail, logs and pages."""
        self._secrets += [secret.encode("utf-8") for secret in secrets if secret]

    def _masked(self, data: bytes) -> bytes:
        """`data` with every secret masked, and also the beginning of one at its end: wherever
        a server's words end (a line it cut, a close, our own limits) a secret may be cut
        too, and its first bytes are as secret as the rest. Masked whole, before any cut."""
        for secret in self._secrets:
            data = data.replace(secret, _MASK_BYTES)
        for secret in self._secrets:
            for length in range(min(len(secret) - 1, len(data)), MIN_MASKED_PREFIX - 1, -1):
                if data.endswith(secret[:length]):
                    data = data[:-length] + _MASK_BYTES
                    break
        return data

    def _masked_line(self, raw: bytes) -> bytes:
        """A received line (terminator included) with its secrets masked; its reply code is
        kept so that it still parses, and a secret that runs into the code hides the rest."""
        body = raw.rstrip(b"\r\n")
        masked = self._masked(body)
        code = body[:3]
        if code.isdigit() and not masked.startswith(code):
            masked = code + b" " + _MASK_BYTES
        return masked + raw[len(body):]

    def _shown(self, data: bytes) -> str:
        """Server bytes as transcript text, secrets masked (before any cut)."""
        return self._masked(bytes(data)).decode("utf-8", errors="replace")

    def _noted(self, error: SessionError) -> SessionError:
        """The error, also written into the transcript where the session stopped."""
        self._transcript.note(error.detail)
        return error

    # -- time ------------------------------------------------------------------------------
    def _time_left(self, until: float, reason: str = "timeout") -> float:
        left = until - self._clock()
        if left <= 0:
            raise self._noted(SessionError(reason, "the deadline passed"))
        return left

    def _blocking(self, option: int, until: float, call: Callable, *args):
        """call(*args) on the blocking socket, giving up at `until` (TimeoutError): the next
        read (option SO_RCVTIMEO) or write (SO_SNDTIMEO) waits at most that long."""
        while True:
            self._arm(option, until)
            try:
                return call(*args)
            except (TimeoutError, BlockingIOError):
                if self._clock() >= until:
                    raise
                # else a capped kernel timeout ended (KERNEL_TIMEOUT_CAP_SECONDS): wait on

    def _arm(self, option: int, until: float) -> None:
        """Set the timeout of the next blocking call: what is left until `until`, and for the
        kernel at most KERNEL_TIMEOUT_CAP_SECONDS (see _blocking). TLS sockets wait in poll(),
        whose timeout is exact.

        The kernel counts its timeout from the start of each call, so the one set for an
        earlier call still fits when it ends at most REARM_SLACK_SECONDS past `until`, or
        before `until` when it is the cap: a session of a few milliseconds sets each option
        once instead of before every call.
        """
        left = until - self._clock()
        if left <= 0:
            raise TimeoutError  # each caller says what did not happen in time
        if self._tls:
            self._sock.settimeout(left)
            return
        now = until - left
        armed = self._armed.get(option)
        if armed is not None and now + armed <= until + REARM_SLACK_SECONDS and (
            now + armed >= until or armed == KERNEL_TIMEOUT_CAP_SECONDS
        ):
            return
        left = min(left, KERNEL_TIMEOUT_CAP_SECONDS)
        set_kernel_timeout(self._sock, option, left)
        self._armed[option] = left

    # -- connection ------------------------------------------------------------------------
    def connect(self, family: int, sockaddr: tuple, until: float | None = None) -> None:
        """A TCP connection to sockaddr, given up at `until` (the deadline at the latest)."""
        until = self._deadline if until is None else min(until, self._deadline)
        left = self._time_left(until, "connect_timeout")
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Small commands must not wait for delayed ACKs (Nagle), e.g. before STARTTLS.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connect_nonblocking(sock, sockaddr, until)
            if self._hub is None:
                sock.setblocking(True)  # reads and writes wait under kernel timeouts (_arm)
                self._armed = {}
        except (TimeoutError, BlockingIOError):
            self._discard(sock)
            raise self._noted(SessionError("connect_timeout", f"no TCP connection within {left:.2f}s")) from None
        except OSError as error:
            self._discard(sock)
            failed = SessionError("connect_refused", f"connection failed: {error.strerror or error}")
            raise self._noted(failed) from None
        self._sock = sock

    def _connect_nonblocking(self, sock: socket.socket, sockaddr: tuple, until: float) -> None:
        """connect() on a non-blocking socket, waiting for the handshake parked on the hub,
        or without one in poll() (exact, unlike a kernel socket timeout of seconds); raises
        as a blocking connect() would."""
        sock.setblocking(False)
        error = sock.connect_ex(sockaddr)
        if error == errno.EINPROGRESS:
            if self._hub is not None:
                connected = self._hub.wait_socket(sock, WRITE, until)
            else:
                connected = self._poll_writable(sock, until)
            if not connected:
                raise TimeoutError
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))  # ETIMEDOUT becomes a TimeoutError

    def _poll_writable(self, sock: socket.socket, until: float) -> bool:
        """Wait in poll() until sock is writable (True) or `until` passes (False)."""
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while True:
            left = until - self._clock()
            if left <= 0:
                return False
            if poller.poll(min(math.ceil(left * 1000), _MAX_POLL_MILLISECONDS)):
                return True

    def _discard(self, sock: socket.socket) -> None:
        if self._hub is not None:
            self._hub.forget(sock)
        sock.close()

    @property
    def local_address(self) -> str | None:
        return self._sock.getsockname()[0] if self._sock else None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._discard(self._sock)
            except OSError:
                pass
            self._sock = None

    # -- TLS -------------------------------------------------------------------------------
    def start_tls(self, context: ssl.SSLContext, server_name: str, *, want_chain: bool = False) -> TlsInfo:
        """Handshake on the open connection (after a 220 to STARTTLS, or at once for implicit
        TLS); `want_chain`: the result holds the presented chain (DANE)."""
        assert self._sock is not None
        if self._buffer:
            # Bytes sent before the handshake would be read as if they came over TLS: the
            # STARTTLS command-injection attack (CVE-2011-0411 and friends).
            self._transcript.add("S", self._shown(self._buffer) + " (unsolicited)")
            raise self._noted(SessionError(
                "protocol_error",
                f"the server sent {len(self._buffer)} bytes after its reply to STARTTLS, "
                "before the TLS handshake",
            ))
        try:
            if self._hub is None:
                self._sock.settimeout(self._time_left(self._deadline))
                tls_sock = context.wrap_socket(self._sock, server_hostname=server_name)
            else:
                tls_sock = context.wrap_socket(self._sock, server_hostname=server_name,
                                               do_handshake_on_connect=False)
                self._sock = tls_sock  # the fd moved: closed with the connection whatever happens
                self._parked(tls_sock.do_handshake)
        except ssl.SSLCertVerificationError as error:
            reason = VERIFY_REASONS.get(error.verify_code, "certificate_untrusted")
            words = error.verify_message or str(error)
            raise self._noted(CertificateError(reason, f"certificate verification failed: {words}", words)) from None
        except TimeoutError:
            raise self._noted(SessionError("timeout", "the TLS handshake did not finish before the deadline")) from None
        except (ssl.SSLError, OSError) as error:
            raise self._noted(SessionError("tls_handshake_failed", f"TLS handshake failed: {error}")) from None
        self._sock = tls_sock
        self._tls = True
        info = tls_info(tls_sock, verified=context.verify_mode != ssl.CERT_NONE)
        return dataclasses.replace(info, chain=presented_chain(tls_sock)) if want_chain else info

    # -- sending ---------------------------------------------------------------------------
    def send_line(self, text: str, shown: str | None = None) -> None:
        """Send one command line; `shown` replaces it in the transcript (masked secrets)."""
        self._refuse_unsolicited()
        self._transcript.add("C", text if shown is None else shown)
        self._send((text + "\r\n").encode("utf-8"))

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            # Not sendall: with a kernel timeout, each of its sends may wait that long again.
            view = memoryview(data)
            while view:
                if self._hub is None:
                    sent = self._blocking(socket.SO_SNDTIMEO, self._deadline, self._sock.send, view)
                else:
                    sent = self._parked(self._sock.send, view, blocked=WRITE)
                view = view[sent:]
            # A reply comes next. Having just sent, the kernel would delay its ACK of what
            # arrives now (up to 40 ms), and a server with Nagle on holds its reply until that
            # ACK when it wrote something just before: after STARTTLS, Postfix's TLS session
            # tickets cross our EHLO, and ehlo_tls would wait for the delayed ACK.
            if _TCP_QUICKACK is not None:
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except (TimeoutError, BlockingIOError):
            raise self._noted(SessionError("timeout", "the server stopped reading before the deadline")) from None
        except OSError as error:
            raise self._noted(SessionError("connection_closed", f"sending failed: {error}")) from None

    def send_message(self, lines: Iterable[str], padding: bytes = b"") -> None:
        """Send a message after 354: dot-stuffed, CRLF, ended by a lone dot. `padding` (whole
        CRLF lines, none starting with a dot) goes after `lines`; it is summed up in the
        transcript, not shown line by line."""
        self._refuse_unsolicited()
        stuffed = ["." + line if line.startswith(".") else line for line in lines]
        for line in stuffed:
            self._transcript.add("C", line)
        if padding:
            lines_more = padding.count(b"\n")
            self._transcript.note(f"({lines_more} more lines, {len(padding)} bytes, not shown)")
        self._transcript.add("C", ".")
        self._send(("\r\n".join(stuffed) + "\r\n").encode("utf-8") + padding + b".\r\n")

    def _refuse_unsolicited(self) -> None:
        """Bytes left over after the last reply came unasked: the server did not wait for our
        command (a pipelining violation, or a reply meant for a command not sent yet). Read as
        the answer to the next command, they would put every later reply one step out of line.
        Only bytes already received are seen; later ones are caught at the next command."""
        if self._buffer:
            self._transcript.add("S", self._shown(self._buffer) + " (unsolicited)")
            raise self._noted(SessionError(
                "protocol_error",
                f"the server sent {len(self._buffer)} bytes before it was asked anything more: "
                "it does not wait for commands (pipelining violation)",
            ))

    def command(self, text: str, shown: str | None = None) -> Reply:
        self.send_line(text, shown)
        return self.read_reply()

    # -- receiving -------------------------------------------------------------------------
    def read_reply(self, within: float | None = None) -> Reply:
        """The next reply; `within` seconds at most (never past the deadline).

        Garbage, disagreeing codes, an over-long line, too many lines or bytes give a Reply with
        code None (a protocol error). A timeout or a closed connection raises SessionError.
        """
        until = self._deadline if within is None else min(self._deadline, self._clock() + within)
        # A shorter wait than the session's (QUIT's courtesy) must not be told as its deadline.
        late = "before the deadline" if until >= self._deadline else f"within {within:g} s"
        if not self._buffer and not self._secrets:
            self._receive(until, late)
            cached = REPLIES.get(bytes(self._buffer))
            if cached is not None:
                self._buffer.clear()
                reply, texts = cached
                self._transcript.add_received(texts)
                return reply
        return self._parse_reply(until, late)

    def _parse_reply(self, until: float, late: str) -> Reply:
        """read_reply line by line; a clean reply goes into the cache for the next probe."""
        lines = []
        raws = []
        size = 0
        first_line = len(self._transcript.lines)
        while True:
            raw = self._read_line(until, late)
            if raw is None:
                texts = tuple(line.text for line in lines) + ("(line too long)",)
                return Reply(code=None, lines=texts, error=f"reply line longer than {MAX_LINE_BYTES} bytes")
            line = parse_line(raw)
            lines.append(line)
            raws.append(raw)
            size += len(raw)
            if line.final:
                reply = make_reply(lines)
                if reply.code is not None and not self._buffer and not self._secrets:
                    texts = tuple(entry.text for entry in self._transcript.lines[first_line:])
                    REPLIES.put(b"".join(raws), reply, texts)
                return reply
            if len(lines) >= MAX_REPLY_LINES:
                texts = tuple(line.text for line in lines)
                return Reply(code=None, lines=texts, error=f"reply longer than {MAX_REPLY_LINES} lines")
            if size > MAX_REPLY_BYTES:
                texts = tuple(line.text for line in lines)
                return Reply(code=None, lines=texts, error=f"reply longer than {MAX_REPLY_BYTES} bytes")

    def _read_line(self, until: float, late: str) -> bytes | None:
        """One line with its terminator, recorded in the transcript; None when over-long."""
        while True:
            if self._buffer and 20 <= self._buffer[0] <= 23 and self._buffer[1:2] == b"\x03" and not self._tls:
                self._refuse_tls_record()
            end = self._buffer.find(b"\n")
            if end >= 0 and end < MAX_LINE_BYTES:
                raw = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                if self._secrets:
                    raw = self._masked_line(raw)
                self._transcript.add("S", raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))
                return raw
            if len(self._buffer) >= MAX_LINE_BYTES:
                head = self._shown(self._buffer)[:SHOWN_HEAD_CHARACTERS]  # masked, then cut
                self._transcript.add("S", f"{head}... (more than {MAX_LINE_BYTES} bytes without a line end)")
                self._buffer.clear()
                return None
            self._receive(until, late)

    def _refuse_tls_record(self) -> None:
        """A TLS record (content type 20-23, major version 3: no SMTP reply starts so) where an
        SMTP reply belongs: the server speaks TLS from the first byte.
        Said at once: its bytes hold no line end, so waiting for one would take the deadline."""
        shown = " ".join(f"{byte:02x}" for byte in self._buffer[:5])
        self._transcript.add("S", f"{shown} ... ({len(self._buffer)} bytes of a TLS record)")
        self._buffer.clear()
        raise self._noted(SessionError(
            "protocol_error",
            "the server sent a TLS record, not an SMTP reply: it speaks TLS from the first byte "
            "(implicit TLS, as SMTPS on port 465 does); probe it with --tls implicit (tls: implicit)",
        ))

    def _receive(self, until: float, late: str) -> None:
        """Read what has arrived into the buffer; `late` ends the message when nothing comes."""
        assert self._sock is not None
        try:
            if self._hub is None:
                chunk = self._blocking(socket.SO_RCVTIMEO, until, self._sock.recv, _RECV_BYTES)
            else:
                # A reply comes after a command, so wait before reading rather than try a
                # read that would nearly always find nothing yet.
                if not (self._tls and self._sock.pending()):
                    self._wait(READ, until)
                chunk = self._parked(self._sock.recv, _RECV_BYTES, until=until)
        except (TimeoutError, BlockingIOError):
            self._partial_line_to_transcript()
            raise self._noted(SessionError("timeout", f"no complete reply {late}")) from None
        except OSError as error:  # includes ssl.SSLError
            self._partial_line_to_transcript()
            raise self._noted(SessionError("connection_closed", f"receiving failed: {error}")) from None
        if not chunk:
            where = "in the middle of a reply" if self._buffer else "before replying"
            self._partial_line_to_transcript()
            raise self._noted(SessionError("connection_closed", f"the server closed the connection {where}"))
        self._buffer += chunk

    def _parked(self, call: Callable, *args, until: float | None = None, blocked: int = READ):
        """call(*args) on the non-blocking socket, parking on the hub while it would block:
        `blocked` says for what when the kernel says so (TLS says for itself)."""
        until = self._deadline if until is None else until
        while True:
            try:
                return call(*args)
            except BlockingIOError:
                self._wait(blocked, until)
            except ssl.SSLWantReadError:
                self._wait(READ, until)
            except ssl.SSLWantWriteError:
                self._wait(WRITE, until)

    def _wait(self, events: int, until: float) -> None:
        if not self._hub.wait_socket(self._sock, events, until):
            raise TimeoutError

    def _partial_line_to_transcript(self) -> None:
        if self._buffer:
            self._transcript.add("S", self._shown(self._buffer) + " (incomplete)")


def tls_info(tls_sock: ssl.SSLSocket, *, verified: bool, verify_error: str | None = None) -> TlsInfo:
    cipher = tls_sock.cipher()
    return TlsInfo(
        version=tls_sock.version(),
        cipher=cipher[0] if cipher else None,
        verified=verified,
        verify_error=verify_error,
        **certificate_facts(tls_sock.getpeercert(binary_form=True)),
    )


def open_unverified_tls(
    family: int,
    sockaddr: tuple,
    *,
    implicit_tls: bool,
    ehlo_name: str,
    server_name: str,
    min_version: str | None,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    hub: Hub | None = None,
) -> tuple[SmtpConnection, TlsInfo]:
    """A new connection to a server whose certificate failed verification, up to an
    unverified TLS session: (the connection, the TLS facts). Raises SessionError.

    Python 3.11 cannot hand out the peer certificate after a failed verifying handshake, nor
    go on without verification, so in that failure path only a second connection (within the
    same deadline) repeats the session up to the handshake without verification. Its lines go
    to a transcript of their own (`record_into` sends the connection's later lines to the
    probe's): they repeat what the probe's transcript already shows.
    """
    connection = SmtpConnection(deadline, Transcript(clock(), clock), clock, hub)
    try:
        connection.connect(family, sockaddr)
        if not implicit_tls:
            for command, wanted in ((None, 2), (f"EHLO {ehlo_name}", 2), ("STARTTLS", 220)):
                reply = connection.read_reply() if command is None else connection.command(command)
                if (_code(reply) // 100 if wanted == 2 else _code(reply)) != wanted:
                    said = f"{command} answered" if command else "the banner was"
                    raise SessionError("unexpected_code", f"{said} {_code(reply)} this time")
        info = connection.start_tls(make_tls_context(verify=False, min_version=min_version), server_name)
    except SessionError:
        connection.close()
        raise
    return connection, info


def fetch_unverified_tls_info(
    family: int,
    sockaddr: tuple,
    *,
    implicit_tls: bool,
    ehlo_name: str,
    server_name: str,
    min_version: str | None,
    verify_error: str,
    verify_reason: str,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    hub: Hub | None = None,
) -> TlsInfo | None:
    """The certificate of a server whose certificate failed verification, read over a second
    connection (see open_unverified_tls) that is closed again; None when that does not work
    out: the verification error is the verdict either way."""
    try:
        connection, info = open_unverified_tls(
            family, sockaddr, implicit_tls=implicit_tls, ehlo_name=ehlo_name,
            server_name=server_name, min_version=min_version, deadline=deadline, clock=clock,
            hub=hub)
    except SessionError:
        return None
    connection.close()
    return dataclasses.replace(info, verified=False, verify_error=verify_error,
                               verify_reason=verify_reason)


def _code(reply: Reply) -> int:
    return reply.code or 0
