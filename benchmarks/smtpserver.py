"""A fast loopback SMTP server for the benchmarks: many listeners, one event loop (uvloop).

Run as its own process so that its CPU is never counted against the exporter under test:

    python benchmarks/smtpserver.py --spec spec.json --cert cert.pem --key key.pem

The spec is a JSON list with one behaviour per listener; each listener binds 127.0.0.1 port 0,
or, for a behaviour written "BEHAVIOUR@ADDRESS", that loopback address (the MX addresses of a
mail domain benchmark, all on one port: `--port`). The bound ports are printed as one JSON line
on stdout; the server runs until stdin closes or SIGTERM. Behaviours:

- "ok": banner, EHLO (with STARTTLS), STARTTLS, QUIT; other commands get 250.
- "delay:S": "ok" with the banner sent S seconds after the accept (timing accuracy). With
  `--timings FILE`, the delay each session really got (its timer fires late by up to a
  millisecond or so: libuv counts time in milliseconds) goes to FILE at exit, as JSON:
  {port: [[accept time (time.time()), seconds from the accept to the write], ...]}.
- "tarpit": accepts and never says anything.
- "reset": banner, then a TCP reset on EHLO.
- "421": banner 421 and close.
- "garbage": a banner line that is no SMTP reply.
- "slowloris": the banner trickles one byte every 0.5 s.
- "tlsjunk": STARTTLS is answered 220, then bytes that are no TLS handshake.
- "rotate:I": listener I of a misbehaving tenth that changes its misbehaviour every
  `--rotate-seconds` (the soak): one of the above, or "ok" for the other nine tenths.

A status line on stderr at exit gives the sessions served per behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import socket
import ssl
import struct
import sys
import time

try:
    import uvloop
except ImportError:  # the server is only slower without it
    uvloop = None

# Each listener names itself, as distinct servers do, so that no reply is shared between
# targets merely because the benchmark made them alike (smtpmon caches parsed replies).
BANNER = "220 mx{index}.bench.example.org ESMTP smtpmon-bench\r\n"
EHLO_REPLY = ("250-mx{index}.bench.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
              "250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n")
EHLO_TLS_REPLY = ("250-mx{index}.bench.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
                  "250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n")
MISBEHAVIOURS = ("tarpit", "reset", "421", "garbage", "slowloris", "tlsjunk")
SESSIONS: collections.Counter[str] = collections.Counter()
BANNER_DELAYS: collections.defaultdict[int, list[tuple[float, float]]] = collections.defaultdict(list)


def rotating_behaviour(index: int, rotate_seconds: float) -> str:
    """One listener in ten misbehaves; which way changes every rotate_seconds."""
    if index % 10 != 0:
        return "ok"
    epoch = int(time.monotonic() / rotate_seconds)
    return MISBEHAVIOURS[(index // 10 + epoch) % len(MISBEHAVIOURS)]


class Session(asyncio.Protocol):
    def __init__(self, server: Listener) -> None:
        self.listener = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.tls = False
        self.behaviour = "ok"
        self.timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.behaviour = self.listener.behaviour()
        SESSIONS[self.behaviour.split(":")[0]] += 1
        loop = asyncio.get_running_loop()
        # Every session ends within a minute, whatever the client does.
        self.timers.append(loop.call_later(60, transport.close))
        if self.behaviour == "tarpit":
            return
        if self.behaviour.startswith("delay:"):
            accepted = time.time(), time.monotonic()
            self.timers.append(loop.call_later(float(self.behaviour[6:]), self.delayed_banner, accepted))
        elif self.behaviour == "421":
            transport.write(b"421 4.3.2 bench.example.org busy, try later\r\n")
            transport.close()
        elif self.behaviour == "garbage":
            transport.write(b"\x00\xffHELLO THERE this is no SMTP\r\n")
        elif self.behaviour == "slowloris":
            for offset, byte in enumerate(self.listener.banner):
                self.timers.append(loop.call_later(0.5 * offset, self.write, bytes([byte])))
        else:
            transport.write(self.listener.banner)

    def delayed_banner(self, accepted: tuple[float, float]) -> None:
        BANNER_DELAYS[self.listener.port].append((accepted[0], time.monotonic() - accepted[1]))
        self.write(self.listener.banner)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc) -> None:
        for timer in self.timers:
            timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer and self.transport is not None:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.command(line.strip().upper())

    def command(self, line: bytes) -> None:
        verb = line[:8]
        if verb.startswith((b"EHLO", b"HELO")):
            if self.behaviour == "reset":
                sock = self.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.transport.abort()
                return
            self.transport.write(self.listener.ehlo_tls if self.tls else self.listener.ehlo)
        elif verb.startswith(b"STARTTLS") and not self.tls:
            self.transport.write(b"220 2.0.0 Ready to start TLS\r\n")
            if self.behaviour == "tlsjunk":
                self.transport.write(b"\x15\x03\x03 this is not a TLS record\r\n")
                return
            # Nothing more is read as plain text: the client's ClientHello is for start_tls.
            self.transport.pause_reading()
            asyncio.ensure_future(self.start_tls())
        elif verb.startswith(b"QUIT"):
            self.transport.write(b"221 2.0.0 Bye\r\n")
            self.transport.close()
        else:
            self.transport.write(b"250 2.0.0 Ok\r\n")

    async def start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        transport, self.transport = self.transport, None
        try:
            self.transport = await loop.start_tls(transport, self, self.listener.tls_context,
                                                  server_side=True)
            self.tls = True
        except (OSError, ssl.SSLError, ConnectionError):
            transport.abort()
            return
        # With TLS 1.3 the client's EHLO follows its Finished at once: the TLS protocol hands
        # it to data_received before this coroutine resumes, while self.transport is None, so
        # it waits in the buffer; answer it now, or the session would hang at EHLO.
        self.data_received(b"")


class Listener:
    def __init__(self, index: int, behaviour: str, tls_context, rotate_seconds: float) -> None:
        self.index = index
        self.fixed = behaviour
        self.port = 0  # once bound
        self.tls_context = tls_context
        self.rotate_seconds = rotate_seconds
        self.banner = BANNER.format(index=index).encode()
        self.ehlo = EHLO_REPLY.format(index=index).encode()
        self.ehlo_tls = EHLO_TLS_REPLY.format(index=index).encode()

    def behaviour(self) -> str:
        if self.fixed.startswith("rotate:"):
            return rotating_behaviour(int(self.fixed[7:]), self.rotate_seconds)
        return self.fixed


async def serve(spec: list[str], tls_context, rotate_seconds: float, timings: str | None,
                port: int = 0) -> None:
    loop = asyncio.get_running_loop()
    ports = []
    servers = []
    for index, written in enumerate(spec):
        behaviour, _, address = written.partition("@")
        listener = Listener(index, behaviour, tls_context, rotate_seconds)
        server = await loop.create_server(lambda bound=listener: Session(bound), address or "127.0.0.1",
                                          port if address else 0, backlog=256, reuse_address=True)
        servers.append(server)
        listener.port = server.sockets[0].getsockname()[1]
        ports.append(listener.port)
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
    await stop.wait()
    for server in servers:
        server.close()
    if timings:
        with open(timings, "w", encoding="utf-8") as handle:
            json.dump(BANNER_DELAYS, handle)
    print(json.dumps({"sessions": dict(SESSIONS)}), file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON file: a list of behaviours")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--rotate-seconds", type=float, default=20.0)
    parser.add_argument("--timings", help="JSON file written at exit: each delayed banner's delay")
    parser.add_argument("--port", type=int, default=0,
                        help="the port of the listeners given an address (BEHAVIOUR@ADDRESS)")
    args = parser.parse_args()
    with open(args.spec, encoding="utf-8") as handle:
        spec = json.load(handle)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    if uvloop is not None:
        uvloop.install()
    asyncio.run(serve(spec, context, args.rotate_seconds, args.timings, args.port))


if __name__ == "__main__":
    main()
