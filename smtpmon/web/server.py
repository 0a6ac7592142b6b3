"""The HTTP side: `/metrics`, `/probe`, the landing page, health, readiness and reload.

The serving thread runs a hub (smtpmon.net.hub): it accepts every connection, and serves plain-HTTP
`GET /probe?` requests itself, as hub sessions, the probe included. Prometheus keeps one
connection per target alive, so at 64 probes at once that is 64 sessions sharing each wake-up of
one thread, instead of 64 threads each woken, and each waiting for the GIL, for every read.
Any other request, and every connection when TLS or basic auth is configured (a handshake or a
bcrypt check would stall every session), goes on on a thread of its own (`Handler`), so a slow
`/probe` never holds up `/metrics`, nor `/metrics` a probe. No client can hold either for long
or take them all:

- the TLS handshake, request line and headers must all arrive within `head_timeout` (10 s) of
  the accept, however slowly the bytes trickle (on a kept-alive connection: of the next
  request's first byte); an idle kept-alive connection is closed after `connection_timeout`;
- at most `max_connections` connections are served at once; beyond that a new connection gets
  an immediate 503 (plain HTTP) or is closed (TLS), with nothing read;
- at most `max_concurrent_probes` `/probe` requests run at once; beyond that, an immediate 503.

Bad input gets a 4xx with a reason in plain text; an internal failure is logged and answered
with a plain 503: no traceback ever reaches a client, and no request gets a 500.

Hooks for `--web.config.file`: the server takes `wrap_connection(sock)` (TLS), called on the
connection's own thread (so a slow TLS handshake holds only that thread), `authorize(headers)
-> bool`, checked before any route, and `extra_headers`, sent with every response.
"""

from __future__ import annotations

import email.utils
import io
import math
import socket
import socketserver
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Callable, Mapping, NamedTuple, Protocol, Sequence

from smtpmon import __version__
from smtpmon.web import docs, landing, triage
from smtpmon.smtp import transcript
from smtpmon.exposition.metrics import CONTENT_TYPE, ExporterState, metrics_chunks, render_probe
from smtpmon.config.load import Config, parse_address
from smtpmon.net.hub import READ, WRITE, Hub
from smtpmon.logs import ThrottledWarning, get_logger
from smtpmon.smtp.module import Module
from smtpmon.smtp.results import ProbeResult
from smtpmon.exposition.store import ResultStore
from smtpmon.config.webconfig import WWW_AUTHENTICATE

log = get_logger("http")

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"

# Prometheus sends its scrape timeout; the probe must end a little before it so the answer still
# arrives in time (blackbox_exporter's default offset).
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
SCRAPE_TIMEOUT_OFFSET_SECONDS = 0.5
MIN_PROBE_SECONDS = 0.1

MAX_PARAMETERS = 16
# http.client's limits on a request head (the blank line counts as one of the lines): a longer
# line or more lines get a 431.
MAX_HEADER_LINE_BYTES = 65536
MAX_HEADER_LINES = 100
MAX_TARGET_LENGTH = 300  # a 253-character host name, brackets and a port

# Go's net/http habits: a read-header timeout, an idle timeout for kept-alive connections.
HEAD_TIMEOUT_SECONDS = 10.0
CONNECTION_TIMEOUT_SECONDS = 30.0
MAX_CONNECTIONS = 256
MAX_CONCURRENT_PROBES = 64
# An answer goes out in writes of about this size: a small one with its head in one write (one
# send, one segment), a large /metrics (30 MB at 10,000 targets) in pieces joined from its
# chunks as they go, never as one copy of the whole page.
WRITE_BATCH_BYTES = 256 * 1024
# The requests a hub session answers itself (see HubConnection), and how much of a head it
# reads before it leaves a long one to the thread path's limits.
PROBE_REQUEST = b"GET /probe?"
HUB_HEAD_BYTES = 16384
# Connections accepted before the hub's other sessions get their turn.
ACCEPTS_PER_TURN = 64


class Exporter(Protocol):
    """What the HTTP side needs from the daemon."""

    store: ResultStore
    probe_store: ResultStore  # bounded; counts /probe results per (target, module)
    state: ExporterState

    @property
    def config(self) -> Config: ...

    @property
    def ready(self) -> bool: ...

    def reload(self) -> list[str]:
        """Load the configuration file again; the errors, empty on success."""

    def probe(self, target: str, module_name: str, module: Module, deadline: float,
              hub: Hub | None) -> ProbeResult:
        """Run one probe now (absolute time.monotonic() deadline), on the calling hub session
        when `hub` is given, else blocking the calling thread."""


class BadRequest(Exception):
    """Input the client must fix: answered with `status` and the message."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def single_parameters(query: str) -> dict[str, str]:
    """Query parameters, each given at most once (a repeated one is ambiguous: rejected)."""
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_PARAMETERS,
            errors="strict",
        )
    except UnicodeDecodeError:  # a ValueError too: checked first
        raise BadRequest("query parameters must be percent-encoded UTF-8") from None
    except ValueError:
        raise BadRequest(f"too many query parameters (at most {MAX_PARAMETERS})") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise BadRequest(f"parameter {name!r} given more than once")
        params[name] = value
    return params


def parse_probe_target(value: str | None) -> tuple[str, int]:
    """The `target` parameter as (host, port); BadRequest says what is wrong with it."""
    if value is None or value == "":
        raise BadRequest("missing parameter 'target' (host:port, e.g. target=mx.example.org:25)")
    if len(value) > MAX_TARGET_LENGTH:
        raise BadRequest(f"parameter 'target' is longer than {MAX_TARGET_LENGTH} characters")
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise BadRequest("parameter 'target' contains whitespace or control characters")
    try:
        return parse_address(value)
    except ValueError as error:
        raise BadRequest(f"invalid target: {error}") from None


def parse_debug(value: str | None) -> bool:
    if value is None or value in ("", "false"):
        return False
    if value == "true":
        return True
    raise BadRequest(f"parameter 'debug' must be true or false, got {value!r}")


def probe_deadline(header: str | None, module: Module, now: float) -> float:
    """The probe's absolute deadline: the scrape timeout less the offset, capped by the module."""
    seconds = module.timeout_seconds
    if header is not None:
        try:
            scrape_timeout = float(header)
        except ValueError:
            scrape_timeout = math.nan
        if not math.isfinite(scrape_timeout) or scrape_timeout <= 0:
            raise BadRequest(f"header {SCRAPE_TIMEOUT_HEADER} must be a positive number of seconds")
        seconds = min(seconds, max(scrape_timeout - SCRAPE_TIMEOUT_OFFSET_SECONDS, MIN_PROBE_SECONDS))
    return now + seconds


class RequestHeadReader(io.RawIOBase):
    """A connection's reads, under a total deadline while a request head is being received.

    http.server reads the request line and each header with blocking reads, each under the
    socket timeout alone: a client sending one byte just before every timeout would hold its
    thread forever. Here each read gets at most the time left before the head's deadline.
    """

    def __init__(self, sock: socket.socket, received: bytes = b"", *, idle_timeout: float,
                 head_timeout: float):
        self._sock = sock
        self._received = received  # already read off the socket: served first
        self._idle_timeout = idle_timeout
        self._head_timeout = head_timeout
        self._deadline: float | None = None
        self._deadline_at_first_byte = False

    def readable(self) -> bool:
        return True

    def expect_head(self, deadline: float | None) -> None:
        """A request head comes next: complete by `deadline` (time.monotonic()), or when None
        (a kept-alive connection may idle first) within head_timeout of its first byte."""
        self._deadline = deadline
        self._deadline_at_first_byte = deadline is None

    def head_received(self) -> None:
        self._deadline = None
        self._deadline_at_first_byte = False
        self._sock.settimeout(self._idle_timeout)  # the answer's writes get the usual timeout

    def readinto(self, buffer) -> int:
        if self._received:
            count = min(len(buffer), len(self._received))
            buffer[:count], self._received = self._received[:count], self._received[count:]
            self._head_started()
            return count
        timeout = self._idle_timeout
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"request head not received within {self._head_timeout:g} s")
            timeout = min(timeout, left)
        self._sock.settimeout(timeout)
        count = self._sock.recv_into(buffer)
        if count:
            self._head_started()
        return count

    def _head_started(self) -> None:
        if self._deadline_at_first_byte:
            self._deadline = time.monotonic() + self._head_timeout
            self._deadline_at_first_byte = False


class RequestHeaders(dict):
    """A request's header fields by lower-case name, the first of a repeated one winning, as
    email.message.Message.get() (what http.server would give) answers them."""

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class HeadTooLarge(Exception):
    """A header line over MAX_HEADER_LINE_BYTES, or more than MAX_HEADER_LINES lines: the
    431's reason phrase and explanation, as http.server words them."""

    def __init__(self, message: str, explain: str):
        super().__init__(message)
        self.message, self.explain = message, explain


def read_headers(rfile) -> RequestHeaders:
    """The header fields up to the blank line that ends a request head.

    http.server hands the head to the email package, which costs more than a whole probe's
    reply parsing; a request head needs only name: value. A folded line (obsolete line
    folding) continues the field before it, joined by a space (RFC 9112 5.2); a line without
    a colon is ignored."""
    headers = RequestHeaders()
    last = None
    for _ in range(MAX_HEADER_LINES):
        line = rfile.readline(MAX_HEADER_LINE_BYTES + 1)
        if len(line) > MAX_HEADER_LINE_BYTES:
            raise HeadTooLarge("Line too long", "header line")
        if line in (b"\r\n", b"\n", b""):
            return headers
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):
            if last is not None:
                headers[last] = f"{headers[last]} {text.strip()}".strip()
            continue
        name, colon, value = text.partition(":")
        if not colon:
            continue
        last = name.strip().lower()
        if last in headers:
            last = None  # the first one counts; its continuation lines would not
            continue
        headers[last] = value.strip()
    raise HeadTooLarge("Too many headers", f"got more than {MAX_HEADER_LINES} headers")


class Answer(NamedTuple):
    """What a route answers: a status, and a body as text, bytes or chunks of bytes (a large
    /metrics page is never joined into one copy)."""

    status: HTTPStatus
    body: str | bytes | list[bytes]
    content_type: str = TEXT
    headers: Mapping[str, str] | None = None

    def chunks(self) -> list[bytes]:
        if isinstance(self.body, list):
            return self.body
        return [self.body.encode("utf-8") if isinstance(self.body, str) else self.body]

    def encode(self, extra_headers: Mapping[str, str]) -> bytes:
        """Head and body in one piece, for a small answer."""
        chunks = self.chunks()
        head = response_head(self.status, self.content_type, sum(map(len, chunks)),
                             self.headers or {}, extra_headers)
        return head + b"".join(chunks)


INTERNAL_ERROR = Answer(HTTPStatus.SERVICE_UNAVAILABLE, "internal error; see the exporter's log\n")


def response_head(status: HTTPStatus, content_type: str, length: int, headers: Mapping[str, str],
                  extra_headers: Mapping[str, str], close: bool = False) -> bytes:
    """The status line and header fields of an answer, on either path, as http.server
    writes them (HTTP/1.1, Server, Date), then the route's headers and the configured ones."""
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}\r\n",
        f"Server: smtpmon/{__version__}\r\n",
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n",
        f"Content-Type: {content_type}\r\n",
        f"Content-Length: {length}\r\n",
        "Cache-Control: no-store\r\n",
    ]
    if close:
        lines.append("Connection: close\r\n")
    lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    lines.extend(f"{name}: {value}\r\n" for name, value in extra_headers.items())
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def answer_probe_or_error(server: Server, path: str, headers: Mapping[str, str], client: str,
                          hub: Hub) -> Answer:
    """answer_probe on the hub, its errors answered as Handler._dispatch answers them: a
    BadRequest with its status and reason, anything else with a plain 503 (logged)."""
    try:
        return answer_probe(server, path.partition("?")[2], headers, client, hub)
    except BadRequest as error:
        return Answer(error.status, f"{error}\n")
    except Exception:
        log.exception("request failed", path=path[:200])
        return INTERNAL_ERROR


def answer_probe(server: Server, query: str, headers: Mapping[str, str], client: str,
                 hub: Hub | None) -> Answer:
    """/probe: one probe now, on `hub` when given (else blocking this thread)."""
    exporter = server.exporter
    params = single_parameters(query)
    host, port = parse_probe_target(params.get("target"))
    target = params["target"]
    config = exporter.config
    module_name = params.get("module")
    if not module_name:
        raise BadRequest(f"missing parameter 'module'; known: {', '.join(config.modules)}")
    module = config.modules.get(module_name)
    if module is None:
        shown = module_name[:64].encode("unicode_escape").decode("ascii")
        raise BadRequest(f"unknown module '{shown}'; known: {', '.join(config.modules)}")
    debug = parse_debug(params.get("debug"))
    if not config.probe_allowed(host, port):
        raise BadRequest(
            f"target {target} is neither a configured target nor allowed by probe_allow: "
            "an exporter must not become a port scanner",
            HTTPStatus.FORBIDDEN,
        )
    deadline = probe_deadline(headers.get(SCRAPE_TIMEOUT_HEADER), module, time.monotonic())
    if not server.probe_slots.acquire(blocking=False):
        # At once, not queued: Prometheus is waiting, and each waiting /probe holds a
        # connection (and, behind TLS or basic auth, its thread).
        server.probes_refused.log(limit=server.max_concurrent_probes, client=client)
        return Answer(HTTPStatus.SERVICE_UNAVAILABLE,
                      f"too many concurrent probes (limit {server.max_concurrent_probes}); "
                      "try again later\n")
    exporter.state.probe_started()
    try:
        result = exporter.probe(target, module_name, module, deadline, hub)
    finally:
        exporter.state.probe_finished()
        server.probe_slots.release()
    # A failure at info, a success at debug: Prometheus asks for every target every
    # scrape, and a line per answer would cost more than the probe's own work.
    (log.debug if result.success else log.info)(
        "probe via /probe", target=target, module=module_name, success=int(result.success),
        reason=result.reason, client=client)
    metrics = render_probe(result, exporter.probe_store)
    if debug:
        text = transcript.render(result).rstrip("\n")
        body = f"{text}\n\nMetrics that would have been returned:\n".encode() + metrics
        return Answer(HTTPStatus.OK, body, TEXT)
    return Answer(HTTPStatus.OK, metrics, CONTENT_TYPE)


class HubConnection:
    """A plain-HTTP connection served as a hub session: `GET /probe?...` requests, answered
    without leaving the hub, for as long as the client keeps the connection alive.

    Anything else (another route, a method, an Expect header, bare-LF line ends, a long head)
    is handed to a thread with the bytes already received, where `Handler` parses and
    answers it as it answers every request: the hub's path only ever takes the common case,
    and every error keeps http.server's wording.
    """

    def __init__(self, sock: socket.socket, hub: Hub, *, idle_timeout: float, head_timeout: float):
        self._sock = sock
        self._hub = hub
        self._idle_timeout = idle_timeout
        self._head_timeout = head_timeout
        self.received = bytearray()
        # The first head must be in within head_timeout of the accept; a later one within
        # head_timeout of its first byte (None until that byte comes).
        self.head_deadline: float | None = time.monotonic() + head_timeout

    def serve(self, server: Server, client: str) -> bool:
        """Answer requests until the connection ends (False) or is to be handed off (True)."""
        self._sock.setblocking(False)
        set_no_delay(self._sock)
        while True:
            end = self._receive_head()
            if end is None:
                return True
            request = parse_probe_head(bytes(self.received[:end]))
            if request is None:
                return True
            requestline, path, headers, keep_alive = request
            del self.received[:end]
            answer = answer_probe_or_error(server, path, headers, client, self._hub)
            if log.enabled("debug"):
                log.debug(f'http "{requestline}" {answer.status.value} -', client=client)
            self._send(answer.encode(server.extra_headers))
            if not keep_alive:
                return False
            # The next head's deadline starts with its first byte, maybe sent already.
            self.head_deadline = time.monotonic() + self._head_timeout if self.received else None

    def _receive_head(self) -> int | None:
        """Read until a whole `GET /probe?` head is in: where it ends, or None for a request
        that is not one. Raises TimeoutError or EOFError when the connection is to close."""
        received = self.received
        while True:
            if received[:len(PROBE_REQUEST)] != PROBE_REQUEST[:len(received)]:
                return None
            if received.count(b"\n") != received.count(b"\r\n"):
                return None  # a line ending in a bare LF: http.server's parser takes those
            end = received.find(b"\r\n\r\n")
            if end >= 0:
                return end + 4
            if len(received) > HUB_HEAD_BYTES:
                return None  # the thread path enforces the real limits, with a 431
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                # As on a thread: each read gets the idle timeout, within the head's deadline.
                until = time.monotonic() + self._idle_timeout
                if self.head_deadline is not None:
                    until = min(until, self.head_deadline)
                if not self._hub.wait_socket(self._sock, READ, until):
                    raise TimeoutError("request head not received in time") from None
                continue
            if not data:
                raise EOFError("the client closed the connection")
            if self.head_deadline is None:
                self.head_deadline = time.monotonic() + self._head_timeout
            received += data

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view):]
            except BlockingIOError:
                until = time.monotonic() + self._idle_timeout
                if not self._hub.wait_socket(self._sock, WRITE, until):
                    raise TimeoutError("the client stopped reading the answer") from None


def parse_probe_head(head: bytes) -> tuple[str, str, RequestHeaders, bool] | None:
    """A `GET /probe?` request head as (request line, path, headers, keep-alive), or None
    unless it is an ordinary HTTP/1.x one (the thread path answers those)."""
    line, _, fields = head.partition(b"\r\n")
    requestline = line.decode("iso-8859-1")
    words = requestline.split()  # as http.server splits it
    if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    try:
        headers = read_headers(io.BytesIO(fields))
    except HeadTooLarge:
        return None
    if headers.get("Expect", "").lower() == "100-continue":
        return None
    connection = headers.get("Connection", "").lower()
    keep_alive = words[2] == "HTTP/1.1"
    if connection == "close":
        keep_alive = False
    elif connection == "keep-alive":
        keep_alive = True
    return requestline, words[1], headers, keep_alive


class Server(socketserver.TCPServer):
    """Accepts on a hub (smtpmon.net.hub) on the serving thread. A plain-HTTP `/probe` request is
    served there, as a hub session, probe and all; any other request, and every connection
    when TLS or basic auth is configured, gets a thread of its own (`Handler`)."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        exporter: Exporter,
        *,
        authorize: Callable[[Mapping[str, str]], bool] | None = None,
        wrap_connection: Callable[[socket.socket], socket.socket] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        connection_timeout: float = CONNECTION_TIMEOUT_SECONDS,
        head_timeout: float = HEAD_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        max_concurrent_probes: int = MAX_CONCURRENT_PROBES,
    ):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.exporter = exporter
        self.authorize = authorize
        self.wrap_connection = wrap_connection
        self.extra_headers = dict(extra_headers or {})
        self.connection_timeout = connection_timeout
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.max_concurrent_probes = max_concurrent_probes
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.probe_slots = threading.BoundedSemaphore(max_concurrent_probes)
        # A flood of refused clients must not become a flood of log lines.
        self.connections_refused = ThrottledWarning(
            log, "connection limit reached; new connections get 503 until one closes")
        self.probes_refused = ThrottledWarning(
            log, "/probe limit reached; more concurrent /probe requests get 503")
        self.accept_failed = ThrottledWarning(log, "accepting a connection failed")
        self._too_many_connections = self._canned_503(
            f"too many connections (limit {max_connections}); try again later\n")
        # Checking the password (bcrypt) or a TLS handshake would stall every session.
        self.serves_probes_on_hub = wrap_connection is None and authorize is None
        self.hub = Hub()
        self._hub_connections: set[socket.socket] = set()
        self._stopping = False
        self._stopped = threading.Event()
        super().__init__(address, Handler)

    def _canned_503(self, body: str) -> bytes:
        """A complete answer written without a handler (and so without reading the request)."""
        data = body.encode("utf-8")
        headers = {"Server": f"smtpmon/{__version__}", "Content-Type": TEXT,
                   "Content-Length": str(len(data)), "Connection": "close", **self.extra_headers}
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return f"HTTP/1.1 503 Service Unavailable\r\n{head}\r\n".encode("latin-1") + data

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query that can stall start-up.
        if self.address_family == socket.AF_INET6:
            # "::" serves IPv4 too, as Go's ":port" does for Prometheus exporters.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    # -- the serving thread ----------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the hub until shutdown(): the accept loop and every hub connection."""
        self.socket.setblocking(False)
        try:
            self.hub.spawn(self._accept_connections)
            while not self._stopping:
                self.hub.run_once(poll_interval)
        finally:
            for connection in self._hub_connections:
                connection.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever(), running on another thread, and wait until it has."""
        self._stopping = True
        self.hub.wake()
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        self.hub.close()

    def _accept_connections(self) -> None:
        listener = self.socket
        accepted = 0
        while True:
            if accepted == ACCEPTS_PER_TURN:  # a flood of connections must not starve the probes
                accepted = 0
                self.hub.sleep(0)
            try:
                connection, client_address = listener.accept()
            except BlockingIOError:
                accepted = 0
                self.hub.wait_socket(listener, READ, math.inf)
                continue
            except OSError as error:  # out of file descriptors, say: wait rather than spin
                self.accept_failed.log(error=error)
                self.hub.sleep(0.1)
                continue
            accepted += 1
            try:
                self.process_request(connection, client_address)
            except Exception:  # no thread could be started, say: the next one may be
                log.exception("serving a connection failed", client=client_address[0])

    def process_request(self, request, client_address):
        """A slot for the connection if one is free, else a 503; then its session or thread."""
        if not self.connection_slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        if self.serves_probes_on_hub:
            self.hub.spawn(self._serve_on_hub, request, client_address)
        else:
            head_deadline = time.monotonic() + self.head_timeout
            self._serve_on_thread(request, client_address, b"", head_deadline)

    def _serve_on_hub(self, request: socket.socket, client_address) -> None:
        self._hub_connections.add(request)
        connection = HubConnection(request, self.hub, idle_timeout=self.connection_timeout,
                                   head_timeout=self.head_timeout)
        handed_off = False
        try:
            handed_off = connection.serve(self, client_address[0])
            if handed_off:
                self._hub_connections.discard(request)
                # Before the thread owns it: once the thread closes it, the hub could take a
                # late event of this fd number for a new socket of its own.
                self.hub.forget(request)
                self._serve_on_thread(request, client_address, bytes(connection.received),
                                      connection.head_deadline)
        except (OSError, EOFError) as error:  # the client left, or timed out: nobody to answer
            log.debug("connection closed", client=client_address[0], error=error)
        finally:
            if not handed_off:
                self._hub_connections.discard(request)
                self.hub.forget(request)
                self.shutdown_request(request)
                self.connection_slots.release()

    def _serve_on_thread(self, request: socket.socket, client_address, received: bytes,
                         head_deadline: float) -> None:
        """Go on with the connection on a new thread, from the bytes already `received`."""
        try:
            threading.Thread(target=self._connection_thread, name="http-connection", daemon=True,
                             args=(request, client_address, received, head_deadline)).start()
        except BaseException:
            self.shutdown_request(request)
            self.connection_slots.release()  # no thread started: nothing else will free it
            raise

    def _connection_thread(self, request, client_address, received: bytes,
                           head_deadline: float) -> None:
        try:
            self.finish_request(request, client_address, received, head_deadline)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.connection_slots.release()

    def _refuse(self, request: socket.socket, client_address) -> None:
        """Beyond max_connections: answer at once on the accepting thread, never blocking it.

        On plain HTTP a fresh connection's send buffer always has room for the canned 503; what
        the client already sent is read and dropped, because closing a socket with unread data
        resets the connection and the client could lose the answer. A TLS port cannot answer
        without a handshake, so it closes.
        """
        self.connections_refused.log(limit=self.max_connections, client=client_address[0])
        if self.wrap_connection is None:
            request.setblocking(False)
            try:
                request.send(self._too_many_connections)
                for _ in range(4):  # bounded: a client streaming bytes cannot keep us here
                    if not request.recv(65536):
                        break
            except OSError:  # nothing (more) to read, or the client is gone
                pass
        self.shutdown_request(request)

    def finish_request(self, request, client_address, received: bytes = b"",
                       head_deadline: float | None = None):
        """On the connection's thread: TLS if asked, then the requests, under the head deadline."""
        if head_deadline is None:
            head_deadline = time.monotonic() + self.head_timeout
        set_no_delay(request)
        # The handshake is bounded as a whole by the socket timeout (CPython's ssl module).
        request.settimeout(min(self.connection_timeout, self.head_timeout))
        if self.wrap_connection is not None:
            try:
                request = self.wrap_connection(request)
            except (OSError, ValueError) as error:
                log.debug("connection setup failed", client=client_address[0], error=error)
                return
        Handler(request, client_address, self, head_deadline, received)

    def handle_error(self, request, client_address):
        # A client that vanished mid-answer is not worth a traceback on stderr.
        log.debug("connection error", client=client_address[0])


def set_no_delay(connection: socket.socket) -> None:
    """A keep-alive client that delays its ACKs would otherwise stall each answer written in
    more than one send (Nagle) by ~40 ms."""
    try:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not TCP, or already gone: nothing to tune
        pass


def parse_listen_address(text: str) -> tuple[str, int]:
    """`--web.listen-address`: ":9725" (every interface), "127.0.0.1:9725", "[::1]:9725"."""
    if text.startswith(":"):
        host, port_text = ("::" if socket.has_ipv6 else ""), text[1:]
    elif text.startswith("["):
        host, _, port_text = text[1:].partition("]:")
    else:
        host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid listen address {text!r}: want host:port, e.g. :9725")
    return host, int(port_text)


def _http_version(text: str) -> tuple[int, int] | None:
    """"HTTP/1.1" -> (1, 1); None unless HTTP/major.minor with digits (RFC 2145 3.1)."""
    if not text.startswith("HTTP/"):
        return None
    parts = text[5:].split(".")
    if len(parts) != 2 or not all(part.isdigit() and len(part) <= 10 for part in parts):
        return None
    return int(parts[0]), int(parts[1])


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    # Until the request line yields a version, http.server assumes HTTP/0.9 and so answers a
    # garbage line (or HTTP/2 spoken to this port) with a bare HTML page and no status line.
    default_request_version = "HTTP/1.0"

    def __init__(self, request, client_address, server: Server, head_deadline: float,
                 received: bytes = b""):
        self._first_head_deadline = head_deadline
        self._received = received  # read by the hub before it handed the connection over
        super().__init__(request, client_address, server)  # serves the connection

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file: replaced by one that keeps the head deadline
        self._reader = RequestHeadReader(self.connection, self._received,
                                         idle_timeout=self.server.connection_timeout,
                                         head_timeout=self.server.head_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle(self) -> None:
        self.close_connection = True
        self._reader.expect_head(self._first_head_deadline)
        self.handle_one_request()
        while not self.close_connection:
            self._reader.expect_head(None)
            self.handle_one_request()

    def parse_request(self) -> bool:
        """http.server's parse_request, with the header fields read by read_headers()."""
        try:
            return self._parse_request()
        finally:
            self._reader.head_received()

    def _parse_request(self) -> bool:
        self.command = None  # set in case of error on the first line
        self.request_version = version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) >= 3:  # enough to know the protocol version
            version = words[-1]
            number = _http_version(version)
            if number is None:
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
            if number >= (1, 1):
                self.close_connection = False
            if number >= (2, 0):
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                                f"Invalid HTTP version ({version.split('/', 1)[1]})")
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, path
        if self.path.startswith("//"):  # gh-87389: "//host" reads as a URI without scheme
            self.path = "/" + self.path.lstrip("/")
        try:
            self.headers = read_headers(self.rfile)
        except HeadTooLarge as error:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, error.message, error.explain)
            return False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if (self.headers.get("Expect", "").lower() == "100-continue"
                and self.request_version >= "HTTP/1.1"):
            return self.handle_expect_100()
        return True

    def end_headers(self) -> None:
        # Every answer, http.server's own error pages included, carries the configured headers.
        self._send_extra_headers()
        super().end_headers()

    def _send_extra_headers(self) -> None:
        for name, value in self.server.extra_headers.items():
            self.send_header(name, value)

    def _write(self, chunks: Sequence[bytes]) -> None:
        """The chunks, joined into writes of about WRITE_BATCH_BYTES."""
        batch, size = [], 0
        for chunk in chunks:
            batch.append(chunk)
            size += len(chunk)
            if size >= WRITE_BATCH_BYTES:
                self.wfile.write(b"".join(batch))
                batch, size = [], 0
        if batch:
            self.wfile.write(b"".join(batch))

    def version_string(self) -> str:
        return f"smtpmon/{__version__}"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        if log.enabled("debug"):  # called for every answer: no formatting unless shown
            log.debug("http " + (format % args), client=self.client_address[0])

    # -- dispatch ------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _not_allowed(self) -> None:
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    ROUTES = {
        "/": ("_landing", ("GET", "HEAD")),
        "/metrics": ("_metrics", ("GET", "HEAD")),
        "/probe": ("_probe", ("GET",)),
        "/transcript": ("_transcript", ("GET", "HEAD")),
        "/target": ("_target", ("GET", "HEAD")),
        "/docs": ("_docs", ("GET", "HEAD")),
        "/-/healthy": ("_healthy", ("GET", "HEAD")),
        "/-/ready": ("_ready", ("GET", "HEAD")),
        "/-/reload": ("_reload", ("POST",)),
    }

    def _dispatch(self, method: str) -> None:
        try:
            if self.server.authorize is not None and not self.server.authorize(self.headers):
                self._send(HTTPStatus.UNAUTHORIZED, "unauthorized\n",
                           headers={"WWW-Authenticate": WWW_AUTHENTICATE})
                return
            path, _, query = self.path.partition("?")
            route = self.ROUTES.get(path)
            if route is None:
                self._send(HTTPStatus.NOT_FOUND, f"not found: {path}\n")
                return
            handler_name, methods = route
            if method not in methods:
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} accepts {', '.join(methods)}\n",
                           headers={"Allow": ", ".join(methods)})
                return
            getattr(self, handler_name)(query)
        except BadRequest as error:
            self._send(error.status, f"{error}\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left; nobody to answer
        except Exception:
            log.exception("request failed", path=self.path[:200])
            self._send(*INTERNAL_ERROR)

    def _send(self, status: HTTPStatus, body: str | bytes | list[bytes],
              content_type: str = TEXT, headers: Mapping[str, str] | None = None) -> None:
        """Answer with `body`: text, bytes, or bytes in chunks (sent without joining them)."""
        chunks = Answer(status, body).chunks()
        # A request body we did not read must not be taken for the next request.
        close = self.command not in ("GET", "HEAD")
        if close:
            self.close_connection = True
        self.log_request(status)
        head = response_head(status, content_type, sum(map(len, chunks)), headers or {},
                             self.server.extra_headers, close)
        self._write([head] if self.command == "HEAD" else [head, *chunks])

    # -- routes --------------------------------------------------------------------------

    def _metrics(self, query: str) -> None:
        exporter = self.server.exporter
        self._send(HTTPStatus.OK, metrics_chunks(exporter.store, exporter.state), CONTENT_TYPE)

    def _probe(self, query: str) -> None:
        self._send(*answer_probe(self.server, query, self.headers, self.client_address[0], None))

    def _transcript(self, query: str) -> None:
        params = single_parameters(query)
        target, module_name = params.get("target"), params.get("module")
        if not target or not module_name:
            raise BadRequest("parameters 'target' and 'module' are required")
        result = self.server.exporter.store.latest(target, module_name)
        if result is None:
            self._send(HTTPStatus.NOT_FOUND, "no probe result for this target and module yet\n")
            return
        # A server's bytes, read with curl in a terminal: its escape sequences stay text.
        self._send(HTTPStatus.OK, landing.show_controls(transcript.render(result)), TEXT)

    def _landing(self, query: str) -> None:
        exporter = self.server.exporter
        try:
            page_query = triage.parse_query(single_parameters(query))
        except triage.QueryError as error:
            raise BadRequest(str(error)) from None
        page = landing.render(exporter, exporter.state.status(), page_query)
        self._send(HTTPStatus.OK, page, HTML)

    def _target(self, query: str) -> None:
        params = single_parameters(query)
        target, module_name = params.get("target"), params.get("module")
        if not target or not module_name:
            raise BadRequest("parameters 'target' and 'module' are required")
        page = landing.render_target(self.server.exporter, target, module_name)
        if page is None:
            self._send(HTTPStatus.NOT_FOUND, "no such target and module\n")
            return
        self._send(HTTPStatus.OK, page, HTML)

    def _docs(self, query: str) -> None:
        params = single_parameters(query)
        directory = docs.docs_directory()
        name = params.get("page")
        if name is None:
            self._send(HTTPStatus.OK, docs.render_index(directory, __version__), HTML)
            return
        page = docs.render_page(name, directory, __version__)
        if page is None:
            self._send(HTTPStatus.NOT_FOUND, "no such page; /docs lists them\n")
            return
        self._send(HTTPStatus.OK, page, HTML)

    def _healthy(self, query: str) -> None:
        self._send(HTTPStatus.OK, "Healthy\n")

    def _ready(self, query: str) -> None:
        if self.server.exporter.ready:
            self._send(HTTPStatus.OK, "Ready\n")
        else:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "Not ready\n")

    def _reload(self, query: str) -> None:
        errors = self.server.exporter.reload()
        if errors:
            lines = "".join(f"  {error}\n" for error in errors)
            # 400, not 500: the file is the bad input; the old configuration keeps running.
            self._send(HTTPStatus.BAD_REQUEST,
                       f"reload failed; the previous configuration keeps running:\n{lines}")
        else:
            self._send(HTTPStatus.OK, "configuration reloaded\n")
