"""HTTP/1.1 on the wire, for both transports (smtpmon.web.server): reading a request head
under a deadline, its header fields, whether the connection stays open, and an answer's
status line and headers; `Answer`, what every route returns, and the one mapping of a
route's error to an answer.

Bad input gets a 4xx with a reason in plain text; an internal failure is logged and answered
with a plain 503: no traceback ever reaches a client, and no request gets a 500.
"""

from __future__ import annotations

import email.utils
import io
import socket
import time
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from typing import NamedTuple, Protocol

from smtpmon import __version__
from smtpmon.logs import get_logger
from smtpmon.net.hub import Hub

log = get_logger("http")

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"

MAX_PARAMETERS = 16
# http.client's limits on a request head (the blank line counts as one of the lines): a longer
# line or more lines get a 431.
MAX_HEADER_LINE_BYTES = 65536
MAX_HEADER_LINES = 100
# And the header fields together, as common servers bound them (nginx: 4 x 8 KB): 100 lines
# near the line limit would hold 6.5 MB per connection until the head's deadline.
MAX_HEADER_BYTES = 32768
# Fields whose repetitions are joined rather than dropped: a second Content-Length that
# disagrees with the first must be seen (a request smuggled past a proxy that reads the other).
_JOINED_FIELDS = ("content-length", "transfer-encoding")


class Slots(Protocol):
    """A server's limit on requests of one kind running at once (smtpmon.web.probe.ProbeSlots)."""

    limit: int

    def acquire(self, client: str) -> bool:
        """Take a slot at once if one is free; False (and a throttled warning) if none is."""

    def release(self) -> None: ...


class Request(NamedTuple):
    """A parsed request, as a route sees it on either transport."""

    method: str
    path: str  # without the query
    query: str
    headers: Mapping[str, str]
    client: str  # the client's address
    hub: Hub | None  # the hub session serving it, or None on a thread of its own
    probe_slots: Slots  # the server's limit on /probe requests at once


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
    left = MAX_HEADER_BYTES
    for _ in range(MAX_HEADER_LINES):
        line = rfile.readline(min(MAX_HEADER_LINE_BYTES, left) + 1)
        if len(line) > MAX_HEADER_LINE_BYTES:
            raise HeadTooLarge("Line too long", "header line")
        left -= len(line)
        if left < 0:
            raise HeadTooLarge("Request Header Fields Too Large",
                               f"the header fields are longer than {MAX_HEADER_BYTES} bytes")
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
            if last in _JOINED_FIELDS:
                headers[last] = f"{headers[last]}, {value.strip()}"
            last = None  # the first one counts; its continuation lines would not
            continue
        headers[last] = value.strip()
    raise HeadTooLarge("Too many headers", f"got more than {MAX_HEADER_LINES} headers")


def declares_body(headers: Mapping[str, str]) -> bool:
    """Whether a request says a body follows its head. No route reads one: the connection is
    closed after the answer, so that a body is never read as the next request (a request
    smuggled past a proxy that filters by method or path)."""
    return "Transfer-Encoding" in headers or headers.get("Content-Length", "0") not in ("0", "")



def http_version(text: str) -> tuple[int, int] | None:
    """"HTTP/1.1" -> (1, 1); None unless HTTP/major.minor with digits (RFC 2145 3.1)."""
    if not text.startswith("HTTP/"):
        return None
    parts = text[5:].split(".")
    if len(parts) != 2 or not all(part.isdigit() and len(part) <= 10 for part in parts):
        return None
    return int(parts[0]), int(parts[1])



def keeps_alive(version: tuple[int, int], headers: Mapping[str, str]) -> bool:
    """Whether the connection stays open after this request: as the client's Connection
    header says, else from HTTP/1.1 on."""
    connection = headers.get("Connection", "").lower()
    if connection == "close":
        return False
    if connection == "keep-alive":
        return True
    return version >= (1, 1)


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


def error_answer(error: Exception, path: str) -> Answer:
    """The answer to a route that raised `error` (call it in the `except` block, so that an
    internal failure is logged with its traceback): a BadRequest with its status and reason,
    anything else a plain 503."""
    if isinstance(error, BadRequest):
        return Answer(error.status, f"{error}\n")
    log.exception("request failed", path=path[:200])
    return INTERNAL_ERROR
