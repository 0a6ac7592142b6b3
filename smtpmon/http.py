"""The HTTP side: `/metrics`, `/probe`, the landing page, health, readiness and reload.

Every request runs on its own thread (`ThreadingHTTPServer`), so a slow `/probe` never holds up
`/metrics`, and every connection has a socket timeout, so a client that stops talking cannot keep
a thread forever. Bad input gets a 4xx with a reason in plain text; an internal failure is logged
and answered with a plain 503: no traceback ever reaches a client, and no request gets a 500.

Hooks for `--web.config.file` (TLS and basic auth): the server takes `wrap_connection(sock)`,
called on the request's own thread (so a slow TLS handshake holds only that thread), and
`authorize(headers) -> bool`, checked before any route.
"""

from __future__ import annotations

import math
import socket
import socketserver
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping, Protocol

from smtpmon import __version__, landing, transcript
from smtpmon.collector import CONTENT_TYPE, ExporterState, render_metrics, render_probe
from smtpmon.config import Config, parse_address
from smtpmon.logs import get_logger
from smtpmon.module import Module
from smtpmon.results import ProbeResult
from smtpmon.store import ResultStore

log = get_logger("http")

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"

# Prometheus sends its scrape timeout; the probe must end a little before it so the answer still
# arrives in time (blackbox_exporter's default offset).
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
SCRAPE_TIMEOUT_OFFSET_SECONDS = 0.5
MIN_PROBE_SECONDS = 0.1

MAX_PARAMETERS = 16
MAX_TARGET_LENGTH = 300  # a 253-character host name, brackets and a port
CONNECTION_TIMEOUT_SECONDS = 30.0


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

    def probe(self, target: str, module_name: str, module: Module, deadline: float) -> ProbeResult:
        """Run one probe now (absolute time.monotonic() deadline)."""


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
    except ValueError:
        raise BadRequest(f"too many or malformed query parameters (at most {MAX_PARAMETERS})") from None
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


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        exporter: Exporter,
        *,
        authorize: Callable[[Mapping[str, str]], bool] | None = None,
        wrap_connection: Callable[[socket.socket], socket.socket] | None = None,
        connection_timeout: float = CONNECTION_TIMEOUT_SECONDS,
    ):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.exporter = exporter
        self.authorize = authorize
        self.wrap_connection = wrap_connection
        self.connection_timeout = connection_timeout
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query that can stall start-up.
        if self.address_family == socket.AF_INET6:
            # "::" serves IPv4 too, as Go's ":port" does for Prometheus exporters.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        """On the request's thread: time-limit the connection, then wrap it (TLS) if asked."""
        request.settimeout(self.connection_timeout)
        if self.wrap_connection is not None:
            try:
                request = self.wrap_connection(request)
            except (OSError, ValueError) as error:
                log.debug("connection setup failed", client=client_address[0], error=error)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        # A client that vanished mid-answer is not worth a traceback on stderr.
        log.debug("connection error", client=client_address[0])


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


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    # Until the request line yields a version, http.server assumes HTTP/0.9 and so answers a
    # garbage line (or HTTP/2 spoken to this port) with a bare HTML page and no status line.
    default_request_version = "HTTP/1.0"

    def version_string(self) -> str:
        return f"smtpmon/{__version__}"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
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
        "/-/healthy": ("_healthy", ("GET", "HEAD")),
        "/-/ready": ("_ready", ("GET", "HEAD")),
        "/-/reload": ("_reload", ("POST",)),
    }

    def _dispatch(self, method: str) -> None:
        try:
            if self.server.authorize is not None and not self.server.authorize(self.headers):
                self._send(HTTPStatus.UNAUTHORIZED, "unauthorized\n",
                           headers={"WWW-Authenticate": 'Basic realm="smtpmon"'})
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
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "internal error; see the exporter's log\n")

    def _send(self, status: HTTPStatus, body: str | bytes, content_type: str = TEXT,
              headers: Mapping[str, str] | None = None) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if self.command not in ("GET", "HEAD"):
            # A request body we did not read must not be taken for the next request.
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- routes --------------------------------------------------------------------------

    def _metrics(self, query: str) -> None:
        exporter = self.server.exporter
        self._send(HTTPStatus.OK, render_metrics(exporter.store, exporter.state), CONTENT_TYPE)

    def _probe(self, query: str) -> None:
        exporter = self.server.exporter
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
            raise BadRequest(f"unknown module {shown!r}; known: {', '.join(config.modules)}")
        debug = parse_debug(params.get("debug"))
        if not config.probe_allowed(host, port):
            raise BadRequest(
                f"target {target} is neither a configured target nor allowed by probe_allow: "
                "an exporter must not become a port scanner",
                HTTPStatus.FORBIDDEN,
            )
        deadline = probe_deadline(self.headers.get(SCRAPE_TIMEOUT_HEADER), module, time.monotonic())
        exporter.state.probe_started()
        try:
            result = exporter.probe(target, module_name, module, deadline)
        finally:
            exporter.state.probe_finished()
        log.info("probe via /probe", target=target, module=module_name,
                 success=int(result.success), reason=result.reason, client=self.client_address[0])
        metrics = render_probe(result, exporter.probe_store)
        if debug:
            text = transcript.render(result).rstrip("\n")
            body = f"{text}\n\nMetrics that would have been returned:\n".encode() + metrics
            self._send(HTTPStatus.OK, body, TEXT)
        else:
            self._send(HTTPStatus.OK, metrics, CONTENT_TYPE)

    def _transcript(self, query: str) -> None:
        params = single_parameters(query)
        target, module_name = params.get("target"), params.get("module")
        if not target or not module_name:
            raise BadRequest("parameters 'target' and 'module' are required")
        result = self.server.exporter.store.latest(target, module_name)
        if result is None:
            self._send(HTTPStatus.NOT_FOUND, "no probe result for this target and module yet\n")
            return
        self._send(HTTPStatus.OK, transcript.render(result), TEXT)

    def _landing(self, query: str) -> None:
        exporter = self.server.exporter
        page = landing.render(exporter.config, exporter.store.snapshot(), ready=exporter.ready)
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
