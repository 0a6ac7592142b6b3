"""The HTTP server: its two transports and its limits. What is served is in routes.py (one
table both transports dispatch), the HTTP/1.1 wire format in wire.py.

The serving thread runs a hub (smtpmon.net.hub): it accepts every connection, and serves
plain-HTTP `GET /probe?` requests itself, as hub sessions, the probe included. Prometheus keeps
one connection per target alive, so at 64 probes at once that is 64 sessions sharing each
wake-up of one thread, instead of 64 threads each woken, and each waiting for the GIL, for every
read.
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

Hooks for `--web.config.file`: the server takes `wrap_connection(sock)` (TLS), called on the
connection's own thread (so a slow TLS handshake holds only that thread), `authorize(headers,
client address) -> bool`, checked before any route, and `extra_headers`, sent with every response.
"""

from __future__ import annotations

import io
import math
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from smtpmon import __version__
from smtpmon.config.webconfig import WWW_AUTHENTICATE
from smtpmon.logs import ThrottledWarning, get_logger
from smtpmon.net.hub import READ, WRITE, Hub
from smtpmon.web.probe import ProbeSlots
from smtpmon.web.routes import Exporter, dispatch
from smtpmon.web.wire import (
    TEXT,
    Answer,
    HeadTooLarge,
    Request,
    RequestHeaders,
    RequestHeadReader,
    declares_body,
    error_answer,
    http_version,
    keeps_alive,
    read_headers,
    response_head,
)

log = get_logger("http")


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
            route_path, _, query = path.partition("?")
            try:
                answer = dispatch(server.exporter, Request("GET", route_path, query, headers,
                                                           client, self._hub, server.probe_slots))
            except Exception as error:
                answer = error_answer(error, path)
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
    if headers.get("Expect", "").lower() == "100-continue" or declares_body(headers):
        return None  # a body: the thread path answers and closes, never reading it
    return requestline, words[1], headers, keeps_alive(http_version(words[2]), headers)


class Server(socketserver.TCPServer):
    """Accepts on a hub (smtpmon.net.hub) on the serving thread. A plain-HTTP `/probe` request is
    served there, as a hub session, probe and all; any other request, and every connection
    when TLS or basic auth is configured, gets a thread of its own (`Handler`).

    It binds `address`, unless given `listeners`: sockets listening already (listeners.py:
    several --web.listen-address, or systemd's), each with its own accept loop on the hub,
    all under the same limits."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int] | None,
        exporter: Exporter,
        *,
        listeners: Sequence[socket.socket] = (),
        authorize: Callable[[Mapping[str, str], str], bool] | None = None,
        wrap_connection: Callable[[socket.socket], socket.socket] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        connection_timeout: float = CONNECTION_TIMEOUT_SECONDS,
        head_timeout: float = HEAD_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        max_concurrent_probes: int = MAX_CONCURRENT_PROBES,
    ):
        self.exporter = exporter
        self.authorize = authorize
        self.wrap_connection = wrap_connection
        # As given, not copied: the web config's headers follow the file in force.
        self.extra_headers = extra_headers if extra_headers is not None else {}
        self.connection_timeout = connection_timeout
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.probe_slots = ProbeSlots(max_concurrent_probes)
        # A flood of refused clients must not become a flood of log lines.
        self.connections_refused = ThrottledWarning(
            log, "connection limit reached; new connections get 503 until one closes")
        self.accept_failed = ThrottledWarning(log, "accepting a connection failed")
        self._too_many_connections = self._canned_503(
            f"too many connections (limit {max_connections}); try again later\n")
        # Checking the password (bcrypt) or a TLS handshake would stall every session.
        self.serves_probes_on_hub = wrap_connection is None and authorize is None
        self.hub = Hub()
        self._hub_connections: set[socket.socket] = set()
        self._stopping = False
        self._stopped = threading.Event()
        if listeners:
            # Bound and listening already (listeners.py): several addresses, or systemd's.
            self.listeners = list(listeners)
            socketserver.BaseServer.__init__(self, self.listeners[0].getsockname(), Handler)
            self.socket = self.listeners[0]
            self.address_family = self.socket.family
        else:
            self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            super().__init__(address, Handler)
            self.listeners = [self.socket]

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
        """Run the hub until shutdown(): the accept loops and every hub connection."""
        try:
            for listener in self.listeners:
                listener.setblocking(False)
                self.hub.spawn(self._accept_connections, listener)
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
        for listener in self.listeners[1:]:
            listener.close()
        self.hub.close()

    def _accept_connections(self, listener: socket.socket) -> None:
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
        number = (0, 9)  # no version: HTTP/0.9 (a GET alone)
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) >= 3:  # enough to know the protocol version
            version = words[-1]
            number = http_version(version)
            if number is None:
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
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
        self.close_connection = not keeps_alive(number, self.headers)
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

    def _dispatch(self, method: str) -> None:
        try:
            try:
                answer = self._answer(method)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                raise
            except Exception as error:
                answer = error_answer(error, self.path)
            self._send(answer)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left; nobody to answer

    def _answer(self, method: str) -> Answer:
        if self.server.authorize is not None and not self.server.authorize(self.headers, self.client_address[0]):
            return Answer(HTTPStatus.UNAUTHORIZED, "unauthorized\n",
                          headers={"WWW-Authenticate": WWW_AUTHENTICATE})
        path, _, query = self.path.partition("?")
        request = Request(method, path, query, self.headers, self.client_address[0], None,
                          self.server.probe_slots)
        return dispatch(self.server.exporter, request)

    def _send(self, answer: Answer) -> None:
        """Send the answer; a body in chunks is written without joining them."""
        chunks = answer.chunks()
        # A request body we did not read must not be taken for the next request.
        close = self.command not in ("GET", "HEAD") or declares_body(self.headers)
        if close:
            self.close_connection = True
        self.log_request(answer.status)
        head = response_head(answer.status, answer.content_type, sum(map(len, chunks)),
                             answer.headers or {}, self.server.extra_headers, close)
        self._write([head] if self.command == "HEAD" else [head, *chunks])
