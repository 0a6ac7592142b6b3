"""SMTP servers for tests, on 127.0.0.1 port 0 (the bound port is read back) unless a test
asks for another `host=` (e.g. "::1") or a fixed `port=` (e.g. 25, for the embedded default).

- `AiosmtpdServer`: a real SMTP implementation (aiosmtpd) whose EHLO/MAIL/RCPT/DATA replies a
  test can script, with STARTTLS, implicit TLS and AUTH. aiosmtpd's Controller cannot bind
  port 0, so `SMTP` is served through `loop.create_server` on a loop in a background thread.
- `ScriptedServer`: a raw socket that plays a script of steps, for the misbehaviour a real
  implementation never shows: garbage, trickling, silence, closing mid-reply, over-long lines,
  endless replies, connection resets.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from helpers import unavailable

LOOPBACK = "127.0.0.1"
SERVER_NAME = "mx.test.example"


def host_port(host: str, port: int) -> str:
    """A probe target: host:port, or [IPv6]:port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def on_a_loopback_address_of_its_own(start, attempts: int = 8):
    """start(host) on a random 127.x.y.z, for a server that needs a fixed port (465, 25) that
    another test or program may hold on 127.0.0.1. Binding a port below 1024 needs root: a test
    without it skips locally and fails in CI (CI=true), where it runs as root."""
    import random


    for _ in range(attempts):
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            return start(host)
        except PermissionError as error:
            unavailable(f"binding a port below 1024 needs root: {error}")
        except OSError:  # in use on that address: another one
            continue
    raise AssertionError(f"no free loopback address in {attempts} attempts")


def server_tls_context(cert: trustme.LeafCert | trustme.CA) -> ssl.SSLContext:
    """A server context presenting a trustme leaf certificate, or a CA's own (self-signed) one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if isinstance(cert, trustme.CA):
        with tempfile.NamedTemporaryFile(suffix=".pem") as pem:
            pem.write(cert.private_key_pem.bytes() + cert.cert_pem.bytes())
            pem.flush()
            context.load_cert_chain(pem.name)
    else:
        cert.configure_cert(context)
    return context


# -- aiosmtpd -----------------------------------------------------------------------------------
@dataclass
class ScriptedHandler:
    """aiosmtpd hooks returning scripted replies; None means aiosmtpd's normal answer."""

    ehlo_reply: list[str] | None = None  # replaces the whole EHLO reply, e.g. ["502 5.5.2 no"]
    ehlo_extra: list[str] = field(default_factory=list)  # extra keywords, e.g. ["AUTH PLAIN"]
    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply
    data_reply: str = "250 2.0.0 Ok: queued as TEST1"
    messages: list[bytes] = field(default_factory=list)  # message contents received

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.ehlo_reply is not None:
            return list(self.ehlo_reply)
        return responses[:-1] + [f"250-{extra}" for extra in self.ehlo_extra] + responses[-1:]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.get(address, "250 2.1.5 Ok")
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.original_content or envelope.content)
        return self.data_reply


def password_authenticator(username: str, password: str):
    """An aiosmtpd authenticator accepting exactly one username and password."""

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == username and auth_data.password.decode() == password
        return AuthResult(success=ok, handled=False)

    return authenticate


class _LoopThread:
    """An asyncio loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-smtp-loop", daemon=True)
        self._thread.start()

    def call(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all():
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class AiosmtpdServer:
    def __init__(
        self,
        handler: ScriptedHandler | None = None,
        *,
        starttls_context: ssl.SSLContext | None = None,
        implicit_tls_context: ssl.SSLContext | None = None,
        authenticator=None,
        auth_require_tls: bool = True,
        host: str = LOOPBACK,
        port: int = 0,
        data_size_limit: int = 33554432,
    ):
        self.handler = handler or ScriptedHandler()
        self._smtp_options = dict(
            hostname=SERVER_NAME,  # never socket.getfqdn(): that may query DNS
            tls_context=starttls_context,
            authenticator=authenticator,
            auth_require_tls=auth_require_tls,
            data_size_limit=data_size_limit,  # beyond it: 552 after the message (aiosmtpd)
        )
        self._implicit_tls_context = implicit_tls_context
        self._loop_thread: _LoopThread | None = None
        self._server: asyncio.base_events.Server | None = None
        self.host = host
        self.port = port  # the bound port once started

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    def start(self) -> AiosmtpdServer:
        self._loop_thread = _LoopThread()
        loop = self._loop_thread.loop

        async def serve():
            return await loop.create_server(
                lambda: SMTP(self.handler, loop=loop, **self._smtp_options),
                host=self.host,
                port=self.port,
                ssl=self._implicit_tls_context,
            )

        try:
            self._server = self._loop_thread.call(serve())
        except BaseException:  # cannot bind: no loop thread left behind
            self._loop_thread.stop()
            self._loop_thread = None
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._loop_thread is None:
            return
        async def close():
            self._server.close()  # on the loop's thread: asyncio servers are not thread-safe

        self._loop_thread.call(close())
        self._loop_thread.stop()
        self._loop_thread = None


# -- raw scripted server ------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class SendFresh:
    """Send what `make()` returns, made anew for each connection (replies no two probes share)."""

    make: Callable[[], bytes]


@dataclass(frozen=True)
class Expect:
    """Read one line from the client; it must match the pattern (case-insensitive)."""

    pattern: str


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Trickle:
    """Send data one byte at a time, `interval` seconds apart (slowloris)."""

    data: bytes
    interval: float


@dataclass(frozen=True)
class StartTls:
    context: ssl.SSLContext


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Repeat:
    """Send data again and again until the client goes away (e.g. endless "250-" lines)."""

    data: bytes


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed server or a firewall does."""


@dataclass(frozen=True)
class Receive:
    """Read what the client sends next, whatever it is (a TLS ClientHello is not a line)."""


def reply(pattern: str, data: bytes) -> list:
    """The usual step: expect a command, then answer it."""
    return [Expect(pattern), Send(data)]


BANNER = Send(b"220 mx.test.example ESMTP scripted\r\n")
EHLO_OK = reply(r"EHLO ", b"250-mx.test.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
QUIT_OK = reply(r"QUIT", b"221 2.0.0 Bye\r\n")


class ScriptedServer:
    """Plays `script` to every client; when the script ends it reads until the client closes.

    `received` holds every line clients sent; `mismatches` the Expect steps that failed.
    `later` is played instead to every connection after the first (a server that answers a
    second connection differently).
    """

    def __init__(self, script: list, *, implicit_tls_context: ssl.SSLContext | None = None,
                 host: str = LOOPBACK, port: int = 0, later: list | None = None):
        self.script = self._flat(script)
        self.later = self.script if later is None else self._flat(later)
        self.implicit_tls_context = implicit_tls_context
        self.received: list[str] = []
        self.mismatches: list[str] = []
        self.connections = 0
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=16)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []

    @staticmethod
    def _flat(script: list) -> list:
        return [step for item in script for step in (item if isinstance(item, list) else [item])]

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    def start(self) -> ScriptedServer:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="test-scripted-smtp")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._sockets.append(sock)
            self._spawn(self._play, sock, self.script if self.connections == 1 else self.later)

    def _play(self, sock: socket.socket, script: list) -> None:
        reader = _LineReader(sock, self._stop)
        try:
            if self.implicit_tls_context is not None:
                sock = reader.sock = self._wrap(sock, self.implicit_tls_context)
            for step in script:
                if isinstance(step, Send):
                    sock.sendall(step.data)
                elif isinstance(step, SendFresh):
                    sock.sendall(step.make())
                elif isinstance(step, Trickle):
                    for byte in step.data:
                        if self._stop.wait(step.interval):
                            return
                        sock.sendall(bytes([byte]))
                elif isinstance(step, Sleep):
                    if self._stop.wait(step.seconds):
                        return
                elif isinstance(step, Expect):
                    line = reader.readline()
                    if line is None:
                        return
                    self.received.append(line)
                    if not re.match(step.pattern, line, re.IGNORECASE):
                        self.mismatches.append(f"expected {step.pattern!r}, got {line!r}")
                        return
                elif isinstance(step, StartTls):
                    sock = reader.sock = self._wrap(sock, step.context)
                elif isinstance(step, Close):
                    return
                elif isinstance(step, Repeat):
                    while not self._stop.is_set():
                        sock.sendall(step.data)
                elif isinstance(step, Reset):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                elif isinstance(step, Receive):
                    sock.settimeout(5)
                    sock.recv(65536)
            while (line := reader.readline()) is not None:
                self.received.append(line)
        except (OSError, ssl.SSLError):
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _wrap(sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        sock.settimeout(5)
        return context.wrap_socket(sock, server_side=True)


class _LineReader:
    """Lines from a socket, giving up when the server stops or the client closes."""

    def __init__(self, sock: socket.socket, stop: threading.Event):
        self.sock = sock
        self._stop = stop
        self._buffer = b""

    def readline(self) -> str | None:
        while b"\n" not in self._buffer:
            if self._stop.is_set():
                return None
            self.sock.settimeout(0.1)
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", errors="replace")


class FullBacklogListener:
    """A listening socket whose accept queue is full: connecting to it hangs (Linux drops the
    SYN), which is how a connect timeout looks without leaving loopback."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        self._fillers = []
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex((host, self.port))
            self._fillers.append(filler)

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    def close(self) -> None:
        for sock in [*self._fillers, self._listener]:
            sock.close()
